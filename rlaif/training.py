"""What every training stage (train-rm, sft, dpo, rl) shares around its TRL trainer.

- `TrainingSettings`: the options all of them take (model, LoRA, schedule, checkpoints, seed).
- Resumable runs: checkpoints live in `DIR.partial/` next to a fingerprint of the settings and
  inputs; a rerun with the same settings resumes from the newest complete checkpoint, other
  settings are refused unless `--force`.
- Atomic output: the final folder is staged inside `DIR.partial/` and renamed into place, so a
  Makefile never sees half a model.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import UserError
from rlaif.files import write_json, write_jsonl
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, ResolvedModel

SETTINGS_FILE = "rlaif-settings.json"


@dataclass(kw_only=True)
class TrainingSettings:
    output_dir: str
    model: str = EMBEDDED_ALIAS
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-5
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    save_steps: int = 50
    gradient_checkpointing: bool = False
    seed: int = 0
    force: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.max_length < 8:
            raise UserError(
                "--batch-size and --gradient-accumulation-steps >= 1, --max-length >= 8"
            )
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate {self.learning_rate}: must be > 0")


def trainer_args(config_cls, cfg: TrainingSettings, work: Path, **stage_args):
    """A TRL config with the shared settings; `stage_args` are the stage's own fields."""
    import torch

    on_gpu = torch.cuda.is_available()
    return config_cls(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # TRL's default bf16=True fails on CPU
        use_cpu=not on_gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=False,
        **stage_args,
    )


def lora_config(cfg: TrainingSettings, task_type: str):
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear"
    )


def load_causal_lm(path: str, trust_remote_code: bool = False):
    """A causal LM in float32 (CPU-safe; the Trainer casts on GPU) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def run_fingerprint(cfg: TrainingSettings, inputs: dict[str, str], model_sha: str | None) -> dict:
    """What must match for a checkpoint to be resumed: settings that shape training, inputs."""
    ignored = {"output_dir", "force", "save_steps"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    return {**settings, "inputs": inputs, "model_sha256": model_sha}


@dataclass
class CheckpointRun:
    """`DIR.partial/`: checkpoints, the settings fingerprint, and the staged final folder."""

    output_dir: Path
    work: Path
    resume_from: Path | None

    @classmethod
    def open(cls, output_dir: str, fingerprint: dict, force: bool) -> CheckpointRun:
        out = Path(output_dir)
        work = out.with_name(out.name + ".partial")
        resume = prepare_checkpoint_dir(work, fingerprint, force)
        if resume:
            print(f"resuming from the last checkpoint, {resume}", file=sys.stderr)
        return cls(out, work, resume)

    @property
    def staging(self) -> Path:
        return self.work / "final"


def prepare_checkpoint_dir(work: Path, fingerprint: dict, force: bool) -> Path | None:
    """The checkpoint to resume from, if any; refuses other settings unless forced.

    Under `--num-processes`/`accelerate launch` only the main process (RANK 0) checks, clears
    and writes the folder; the others wait for its settings file. Checking in every process
    raced: a process that saw the folder before the main one wrote the file refused to run.
    """
    settings_file = work / SETTINGS_FILE
    if int(os.environ.get("RANK", "0")) != 0:
        return _wait_for_main_process(work, fingerprint)
    if work.exists():
        same = settings_file.exists() and json.loads(settings_file.read_text()) == fingerprint
        if not same:
            if not force:
                raise UserError(
                    f"{work}: an interrupted run with other settings exists; rerun with the same"
                    " settings to resume, or add --force to start over"
                )
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, fingerprint)
    return last_complete_checkpoint(work)


def _wait_for_main_process(work: Path, fingerprint: dict, timeout_s: float = 600) -> Path | None:
    settings_file = work / SETTINGS_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The file is written atomically, so whatever is there is whole.
        if settings_file.exists() and json.loads(settings_file.read_text()) == fingerprint:
            return _newest_complete(work)
        time.sleep(0.2)
    raise UserError(f"{work}: the main process did not prepare it in {timeout_s:.0f} s")


def _newest_complete(work: Path) -> Path | None:
    complete = [c for c in work.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def last_complete_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing; a crash mid-save leaves one without
    `trainer_state.json` (written last), which is removed so the run resumes from the one before."""
    for checkpoint in work.glob("checkpoint-*"):
        if not (checkpoint / "trainer_state.json").is_file():
            shutil.rmtree(checkpoint)
    return _newest_complete(work)


def replace_dir(staging: Path, target: Path) -> None:
    """Put `staging` at `target` by rename; an older `target` is moved aside first."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def train_and_publish(
    trainer,
    run: CheckpointRun,
    *,
    stage: str,
    cfg: Any,
    tokenizer,
    inputs: dict[str, dict],
    models: dict[str, ResolvedModel],
    counts: dict[str, int],
    curve_keys: list[str],
    title: str,
    started: float,
    constitution=None,
    evaluate: bool = False,
) -> dict:
    """Train (resuming if possible), then write the model folder with metrics.json, log.jsonl,
    curves.png and manifest.json, and move it into place. Returns the manifest ({} on ranks
    other than the main one, which only take part in training)."""
    result = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    eval_metrics = trainer.evaluate() if evaluate else {}
    if not trainer.is_world_process_zero():
        return {}

    staging = run.staging
    shutil.rmtree(staging, ignore_errors=True)
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: a plain model folder, loadable without peft
        model = model.merge_and_unload()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    metrics = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_runtime_s": result.metrics.get("train_runtime"),
        # of this (main) process; ru_maxrss is in KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": eval_metrics,
        "log_history": trainer.state.log_history,
    }
    write_json(staging / "metrics.json", metrics)
    # One JSON line per logged step (loss, reward, KL, ... as the trainer reports them).
    write_jsonl(str(staging / "log.jsonl"), trainer.state.log_history)
    from rlaif.plots import plot_curves

    plot_curves(trainer.state.log_history, curve_keys, staging / "curves.png", title)
    manifest = build_manifest(
        stage,
        cfg,
        inputs=inputs,
        models={role: m.describe() for role, m in models.items()},
        constitution=constitution,
        counts={
            **counts,
            "steps": trainer.state.global_step,
            "processes": trainer.args.world_size,
        },
        tokens={"train_tokens": int(getattr(trainer, "_total_train_tokens", 0))},
        started=started,
        extra={"metrics": {k: v for k, v in metrics.items() if k != "log_history"}},
    )
    write_json(staging / "manifest.json", manifest)
    replace_dir(staging, run.output_dir)
    shutil.rmtree(run.work, ignore_errors=True)
    print(f"step {metrics['steps']} | loss {result.training_loss:.4f}", file=sys.stderr)
    return manifest
