"""`rlaif train-rm`: a reward model from preference labels, on TRL's RewardTrainer.

Label modes:
- `hard`: TRL's Bradley–Terry loss −log σ(r_chosen − r_rejected), the judge's choice as truth.
- `soft`: the cross-entropy against the judge's probability p, as Constitutional AI and RLAIF
  train on soft labels: −p·log σ(d) − (1 − p)·log σ(−d), with d = r_chosen − r_rejected.
  TRL has no such loss; `RLAIFRewardTrainer` adds it (TRL's `margin` column shifts the
  logit instead, which is a different model of the label).
- `filter`: drop pairs with |p − 0.5| < min_confidence, then the hard loss.

The output folder is written when training is complete (staged, then renamed); checkpoints live
in `DIR.partial/` so an interrupted run resumes from the last one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.errors import UserError
from rlaif.files import read_jsonl, write_json
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, resolve_model
from rlaif.preferences import preference_rows

LABEL_MODES = ("hard", "soft", "filter")
SETTINGS_FILE = "rlaif-settings.json"


@dataclass
class TrainRMConfig:
    prefs: str
    output_dir: str
    model: str = EMBEDDED_ALIAS
    label_mode: str = "soft"
    min_confidence: float = 0.1
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-5
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    eval_fraction: float = 0.1
    save_steps: int = 50
    gradient_checkpointing: bool = False
    group_by_length: bool = True  # batches of similar length: less padding, same samples
    seed: int = 0
    force: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            raise UserError(
                f"--label-mode {self.label_mode}: choose one of {', '.join(LABEL_MODES)}"
            )
        if not 0 <= self.min_confidence <= 0.5:
            raise UserError(f"--min-confidence {self.min_confidence}: must be in [0, 0.5]")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"--eval-fraction {self.eval_fraction}: must be in [0, 1)")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.max_length < 8:
            raise UserError(
                "--batch-size and --gradient-accumulation-steps >= 1, --max-length >= 8"
            )


def soft_bradley_terry_loss(rewards_chosen, rewards_rejected, p):
    """Mean of −p·log σ(d) − (1 − p)·log σ(−d); equals TRL's loss when p = 1."""
    import torch.nn.functional as F

    d = rewards_chosen - rewards_rejected
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()


def _trainer_class():
    """RewardTrainer that keeps a precomputed `length` column for length-grouped batches and,
    when a batch carries `label_p`, trains with the soft-label loss; metrics are TRL's own."""
    from dataclasses import dataclass as dc

    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    @dc
    class LabelledCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            if "label_p" in examples[0]:
                batch["label_p"] = torch.tensor([e["label_p"] for e in examples], dtype=torch.float)
            return batch

    class RLAIFRewardTrainer(RewardTrainer):
        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "label_p", "length"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = inputs.pop("label_p", None)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if p is not None:
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                loss = soft_bradley_terry_loss(chosen, rejected, p.to(loss.dtype))
            return (loss, outputs) if return_outputs else loss

    return RLAIFRewardTrainer, LabelledCollator


def select_rows(rows: list[dict], cfg: TrainRMConfig) -> tuple[list[dict], int]:
    """Rows the label mode trains on, and how many `filter` dropped."""
    if cfg.label_mode != "filter":
        return rows, 0
    kept = [r for r in rows if abs(r["p"] - 0.5) >= cfg.min_confidence]
    return kept, len(rows) - len(kept)


def split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(rows) * fraction)
    eval_ids = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_ids]
    return train, [r for i, r in enumerate(rows) if i in eval_ids]


def load_reward_model(path: str, trust_remote_code: bool = False):
    """A causal LM with a one-output score head, and a tokenizer whose pad token is not EOS.

    Sequence classification pools the rightmost non-pad token; with pad = EOS (SmolLM2) the
    end-of-turn tokens would count as padding, so a distinct pad token is chosen.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|rlaif_pad|>"})
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def pair_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens in the longer side of each pair, as TRL will tokenize it (chat template)."""

    def length(chat):
        ids = tokenizer.apply_chat_template(chat, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return [
        max(length(r["prompt"] + r["chosen"]), length(r["prompt"] + r["rejected"])) for r in rows
    ]


def _to_dataset(rows: list[dict], lengths: list[int], soft: bool):
    from datasets import Dataset

    columns = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    columns["length"] = lengths
    if soft:
        columns["label_p"] = [r["p"] for r in rows]
    return Dataset.from_dict(columns)


def _fingerprint(cfg: TrainRMConfig, input_sha: str, model_sha: str | None) -> dict:
    ignored = ("output_dir", "force", "prefs", "save_steps")
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    return {**settings, "input_sha256": input_sha, "model_sha256": model_sha}


def _prepare_checkpoint_dir(work: Path, fingerprint: dict, force: bool) -> Path | None:
    """The checkpoint to resume from, if any; refuses other settings unless forced."""
    settings_file = work / SETTINGS_FILE
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
    return _last_complete_checkpoint(work)


def _last_complete_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing; a crash mid-save leaves one without
    `trainer_state.json` (written last), which is removed so the run resumes from the one before."""
    complete = []
    for checkpoint in work.glob("checkpoint-*"):
        if (checkpoint / "trainer_state.json").is_file():
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint)
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def run(cfg: TrainRMConfig) -> dict:
    started = time.time()
    raw, input_sha = read_jsonl(cfg.prefs)
    rows, dropped_low_confidence = select_rows(preference_rows(cfg.prefs, raw), cfg)
    if len(rows) < 2:
        raise UserError(f"{cfg.prefs}: {len(rows)} usable pairs; need at least 2 to train")
    train_rows, eval_rows = split(rows, cfg.eval_fraction, cfg.seed)
    resolved = resolve_model(cfg.model)

    import torch
    from trl import RewardConfig

    model, tokenizer = load_reward_model(resolved.path, cfg.trust_remote_code)
    train_lengths = pair_lengths(train_rows, tokenizer)
    eval_lengths = pair_lengths(eval_rows, tokenizer)
    # TRL drops pairs longer than max_length rather than truncating them; count them.
    too_long = sum(n > cfg.max_length for n in train_lengths + eval_lengths)
    out = Path(cfg.output_dir)
    work = out.with_name(out.name + ".partial")
    fingerprint = _fingerprint(cfg, input_sha, resolved.source_sha256)
    resume = _prepare_checkpoint_dir(work, fingerprint, cfg.force)
    if resume:
        print(f"resuming from the last checkpoint, {resume}", file=sys.stderr)

    on_gpu = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # TRL's default bf16=True fails on CPU
        use_cpu=not on_gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        eval_strategy="no",  # evaluated once, after training (below), not twice
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=False,
    )
    soft = cfg.label_mode == "soft"
    trainer_cls, collator_cls = _trainer_class()
    collator = collator_cls(pad_token_id=tokenizer.pad_token_id)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            task_type="SEQ_CLS",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            target_modules="all-linear",
        )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=_to_dataset(train_rows, train_lengths, soft),
        eval_dataset=_to_dataset(eval_rows, eval_lengths, soft) if eval_rows else None,
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=peft_config,
    )
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_metrics = trainer.evaluate() if eval_rows else {}
    if not trainer.is_world_process_zero():
        return {}

    staging = work / "final"
    shutil.rmtree(staging, ignore_errors=True)
    final_model = trainer.model.merge_and_unload() if cfg.lora else trainer.model
    final_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    import resource

    metrics = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        # of this (main) process; ru_maxrss is in KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": eval_metrics,
        "log_history": trainer.state.log_history,
    }
    write_json(staging / "metrics.json", metrics)
    from rlaif.plots import plot_curves

    plot_curves(
        trainer.state.log_history,
        ["loss", "accuracy"],
        staging / "curves.png",
        f"reward model ({cfg.label_mode} labels)",
    )
    manifest = build_manifest(
        "train-rm",
        cfg,
        inputs={"prefs": {"path": cfg.prefs, "sha256": input_sha}},
        models={"base": resolved.describe()},
        constitution=None,
        counts={
            "pairs": len(rows) + dropped_low_confidence,
            "train": len(train_rows),
            "eval": len(eval_rows),
            "dropped_low_confidence": dropped_low_confidence,
            "dropped_too_long": too_long,
            "steps": trainer.state.global_step,
            "processes": trainer.args.world_size,
        },
        tokens={"train_tokens": int(getattr(trainer, "_total_train_tokens", 0))},
        started=started,
        extra={"metrics": {k: v for k, v in metrics.items() if k != "log_history"}},
    )
    write_json(staging / "manifest.json", manifest)
    _replace_dir(staging, out)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"step {metrics['steps']} | loss {result.training_loss:.4f}"
        + (
            f" | eval accuracy {eval_metrics.get('eval_accuracy', float('nan')):.3f}"
            if eval_metrics
            else ""
        ),
        file=sys.stderr,
    )
    return manifest


def _replace_dir(staging: Path, target: Path) -> None:
    """Put `staging` at `target` by rename; an older `target` is moved aside first."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
