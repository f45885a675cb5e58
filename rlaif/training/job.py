"""What every training stage (train-rm, sft, dpo, rl) shares around its TRL trainer.

- `TrainingSettings`: the options all of them take (model, LoRA, schedule, checkpoints, seed).
- `TrainingJob`: the one training run: checkpoint folder, TRL arguments, LoRA, resume,
  training and publishing; a stage supplies its data, models and trainer.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlaif.plumbing import hardware, internals
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import (
    DatasetSettings,
    disk_full_error,
    folder_digest,
    is_disk_full,
    signals_held,
    write_json,
    write_jsonl,
)
from rlaif.plumbing.manifest import build_manifest
from rlaif.plumbing.models import EMBEDDED_ALIAS, ResolvedModel
from rlaif.plumbing.options import group, option, seed_option
from rlaif.plumbing.outputs import OutputGuard, folder_files, guard_output, resume_or_refuse
from rlaif.training.fused_lm_head import fitted_to_cpu

SETTINGS_FILE = "rlaif-settings.json"


@dataclass(kw_only=True)
class TrainingSettings:
    """The options every training stage shares: model, LoRA, schedule, checkpoints, seed."""

    output_dir: str = option(help="Folder for the trained model.", flags=("-o", "--output-dir"))
    model: str = option(
        EMBEDDED_ALIAS,
        help="Starting model: HF folder, hub id, .gguf or alias.",
        flags=("-m", "--model"),
    )
    lora: bool = option(False, help="Train LoRA adapters (merged at the end).", flags=("--lora",))
    lora_r: int = option(16, help="LoRA rank.")
    lora_alpha: int = option(32, help="LoRA alpha.")
    epochs: float = option(1.0, help="Passes over the training data.")
    max_steps: int = option(-1, help="Stop after this many steps (-1: epochs).")
    learning_rate: float = option(
        1e-5, help="Peak learning rate.", flags=("--lr", "--learning-rate")
    )
    batch_size: int = option(8, help="Examples per device per step.")
    gradient_accumulation_steps: int = option(1, help="Steps per optimiser update.")
    max_length: int = option(1024, help="Longest example in tokens.")
    save_steps: int = option(50, help="Checkpoint every this many steps.")
    # On (TRL's own default): activations of only one layer at a time are held, so memory
    # grows with batch x length by ~70 KiB per token instead of ~1.3 MiB for the 135M model
    # (benchmarks/training_step_times.py); costs one extra forward pass per step.
    gradient_checkpointing: bool = option(
        True, help="Recompute activations in the backward pass: far less memory, slower steps."
    )
    # auto: with the defaults, 1.6-3.1x the float32 step rate on an AVX-512 BF16 CPU, losses
    # within ~1% (benchmarks/training_step_times.py)
    dtype: str = option(
        "auto",
        help="Training precision: auto (bfloat16 where the CPU or GPU has bf16 arithmetic, else"
        " float32), float32, or bfloat16 (autocast over float32 master weights).",
    )
    num_processes: int = option(
        1, help="Data-parallel processes (runs itself under torch.distributed)."
    )
    seed: int = seed_option("Seed for data order, initialisation and sampling.")
    dataset: DatasetSettings = group(DatasetSettings)
    force: bool = option(
        False, help="Discard an interrupted run with other settings.", flags=("--force",)
    )
    trust_remote_code: bool = option(
        False, help="Run model code from the hub (off: safer).", flags=("--trust-remote-code",)
    )

    def __post_init__(self):
        too_short = self.max_length is not None and self.max_length < 8
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or too_short:
            raise UserError(
                "--batch-size and --gradient-accumulation-steps >= 1, --max-length >= 8"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(
                f"--max-steps {self.max_steps}: at least 1 (or -1: train for --epochs); 0 would"
                " publish the starting model as trained"
            )
        if self.max_steps == -1 and self.epochs <= 0:
            raise UserError(f"--epochs {self.epochs}: must be > 0")
        if self.output_dir == "-":
            raise UserError("-o/--output-dir -: a model is a folder; give a folder path")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate {self.learning_rate}: must be > 0")
        if self.num_processes < 1:
            raise UserError(f"--num-processes {self.num_processes}: must be at least 1")
        if self.dtype not in TRAINING_DTYPES:
            raise UserError(f"--dtype {self.dtype}: choose one of {', '.join(TRAINING_DTYPES)}")

    @property
    def precision(self) -> str:
        """--dtype resolved on this machine: float32 or bfloat16."""
        return training_precision(self.dtype)

    def guard_output(self, *inputs: str | None) -> OutputGuard:
        """Before anything slow: the output folder is none of the inputs (nor holds one) and
        holds nothing rlaif did not write. The job checks it against its fingerprint later."""
        return guard_output(
            self.output_dir,
            inputs=[*inputs, self.model],
            force=self.force,
            option="-o/--output-dir",
            kind="folder",
        )


TRAINING_DTYPES = ("auto", "float32", "bfloat16")


def training_precision(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if hardware.cpu_has_bf16() else "float32"


def trainer_args(config_cls, cfg: TrainingSettings, work: Path, **stage_args):
    """A TRL config with the shared settings; `stage_args` are the stage's own fields.

    bfloat16 is autocast over float32 weights (the optimiser keeps float32 master weights);
    TRL's own default (bf16=True) is replaced by --dtype."""
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
        bf16=cfg.precision == "bfloat16",
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
    # How many processes share the work changes nothing a checkpoint holds.
    ignored = {"output_dir", "force", "save_steps", "num_processes"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    return {**settings, "precision": cfg.precision, "inputs": inputs, "model_sha256": model_sha}


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
    recorded = _read_settings(settings_file)
    if work.exists():
        # No complete checkpoint: nothing to lose, whatever the settings were.
        nothing = last_complete_checkpoint(work) is None
        if nothing or not resume_or_refuse(work, recorded, fingerprint, force):
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, fingerprint)
    return last_complete_checkpoint(work)


def _read_settings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: settings that match nothing


def _wait_for_main_process(work: Path, fingerprint: dict, timeout_s: float = 600) -> Path | None:
    settings_file = work / SETTINGS_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The file is written atomically, so whatever is there is whole.
        if _read_settings(settings_file) == fingerprint:
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


@dataclass
class InputFile:
    path: str
    sha256: str


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(kw_only=True)
class TrainingJob:
    """One run of a training stage, as the stage describes it: train and publish a model.

    `guard`: the stage's output check (`TrainingSettings.guard_output`), made before the
    stage loaded anything; the job finishes it once the fingerprint is known. `inputs`: each
    input file (or, for other inputs such as rl's reward, a dict that says what it is), part of
    what a checkpoint must match to be resumed, with the settings and the first model.
    `build_trainer(trl_args, peft_config)` makes the TRL trainer; `counts(trainer)` the data
    counts for the manifest.
    """

    stage: str
    settings: TrainingSettings
    guard: OutputGuard
    inputs: dict[str, InputFile | dict]
    models: dict[str, ResolvedModel]
    trl_config: type
    trl_args: dict
    lora_task: str
    build_trainer: Callable[[Any, Any], Any]
    counts: Callable[[Any], dict[str, int]]
    tokenizer: Any
    curve_keys: list[str]
    title: str
    started: float
    constitution: Any = None
    evaluate: bool = False

    def fingerprint(self) -> dict:
        identities = {
            name: i.sha256 if isinstance(i, InputFile) else i for name, i in self.inputs.items()
        }
        identities |= {f"{role}_sha256": m.identity() for role, m in list(self.models.items())[1:]}
        first_model = next(iter(self.models.values()))
        return run_fingerprint(self.settings, identities, first_model.identity())

    def run(self) -> dict:
        """Train and publish; returns the manifest ({} on processes other than the main)."""
        cfg = self.settings
        fingerprint = self.fingerprint()
        # paths known only now: the model folders as resolved, the inputs a dict names
        self.guard.refuse_inputs(
            [i.path if isinstance(i, InputFile) else i.get("path") for i in self.inputs.values()]
            + [m.path for m in self.models.values() if m.kind == "folder"]
        )
        done = self.guard.up_to_date(fingerprint)
        if done is not None:
            return done
        internals.require("trl")
        run = CheckpointRun.open(cfg.output_dir, fingerprint, cfg.force)
        from transformers import set_seed

        # TRL's trainers wrap the model in LoRA adapters (random A matrices) before the Trainer
        # seeds itself: seeded here, the same command starts from the same adapters.
        set_seed(cfg.seed)
        try:
            with fitted_to_cpu():
                trl_args = trainer_args(self.trl_config, cfg, run.work, **self.trl_args)
                trainer = self.build_trainer(trl_args, lora_config(cfg, self.lora_task))
                trainer.add_callback(hardware.return_freed_memory_to_os())
                return self.train_and_publish(trainer, run, fingerprint)
        except BaseException as e:
            if _is_main_process():
                shutil.rmtree(run.staging, ignore_errors=True)  # a model folder half written
                # A run that saved no checkpoint leaves nothing behind to block a corrected rerun.
                if last_complete_checkpoint(run.work) is None:
                    shutil.rmtree(run.work, ignore_errors=True)
            if is_disk_full(e):  # after the clean-up, so the space left is what a rerun gets
                raise disk_full_error(
                    cfg.output_dir, "the model or a checkpoint; nothing was published"
                ) from None
            raise

    def train_and_publish(self, trainer, run: CheckpointRun, fingerprint: dict) -> dict:
        """Train (resuming if possible), then write the model folder with metrics.json, log.jsonl,
        curves.png and manifest.json, and move it into place. Returns the manifest ({} on ranks
        other than the main one, which only take part in training)."""
        cfg, counts = self.settings, self.counts(trainer)
        resume = str(run.resume_from) if run.resume_from else None
        result = trainer.train(resume_from_checkpoint=resume)
        eval_metrics = trainer.evaluate() if self.evaluate else {}
        if not trainer.is_world_process_zero():
            return {}

        staging = run.staging
        shutil.rmtree(staging, ignore_errors=True)
        model = trainer.model
        if hasattr(model, "merge_and_unload"):  # LoRA: a plain model folder, loadable without peft
            model = model.merge_and_unload()
        model.save_pretrained(staging)
        self.tokenizer.save_pretrained(staging)
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
        from rlaif.plumbing.plots import plot_curves

        plot_curves(trainer.state.log_history, self.curve_keys, staging / "curves.png", self.title)
        inputs = self.inputs.items()
        manifest = build_manifest(
            self.stage,
            cfg,
            inputs={name: asdict(i) if isinstance(i, InputFile) else i for name, i in inputs},
            models={role: m.describe() for role, m in self.models.items()},
            constitution=self.constitution,
            counts={
                **counts,
                "steps": trainer.state.global_step,
                "processes": trainer.args.world_size,
            },
            tokens={"train_tokens": internals.total_train_tokens(trainer)},
            started=self.started,
            extra={
                "metrics": {k: v for k, v in metrics.items() if k != "log_history"},
                "fingerprint": fingerprint,
                "precision": cfg.precision,
                # what rlaif wrote here: a later run may replace these files, never others
                "files": folder_files(staging),
                # and as it wrote them: a file changed by hand is noticed (existing_output)
                "output": {"digest": folder_digest(staging)},
            },
        )
        write_json(staging / "manifest.json", manifest)
        # A signal between the renames would leave no output (the old one moved aside), and one
        # during the clean-up a stale DIR.partial: both are held back until the folder is whole.
        with signals_held():
            replace_dir(staging, run.output_dir)
            shutil.rmtree(run.work, ignore_errors=True)
        print(f"step {metrics['steps']} | loss {result.training_loss:.4f}", file=sys.stderr)
        return manifest
