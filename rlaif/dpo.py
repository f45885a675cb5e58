"""`rlaif dpo`: offline preference optimisation from AI labels, on TRL's DPOTrainer.

Label modes (as in `train-rm`):
- `hard`: the judge's choice as truth, with any loss TRL offers (`--loss-type`, default sigmoid).
- `filter`: drop pairs with |p − 0.5| < min_confidence, then as `hard`.
- `soft`: fit the judge's probability p itself. TRL 1.16's sigmoid loss has no label smoothing
  any more; its `exo_pair` loss (EXO, Ji et al. 2024) minimises KL(q_θ ‖ [1 − ε, ε]) where
  q_θ = σ(β·Δ) is the policy's implied preference. Setting ε = 1 − p per pair (clamped to
  [1e-3, 1 − 1e-3], the paper's ε for hard labels) makes the target the judge's distribution:
  the loss is minimised exactly where σ(β·Δ) = p, as the soft cross-entropy would be.

The reference model is the starting model unless `--ref-model` says otherwise; with `--lora` it
is the base model with adapters switched off (no second copy in memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlaif.errors import UserError
from rlaif.files import read_jsonl
from rlaif.models import resolve_model
from rlaif.preferences import confident_rows, oriented, preference_rows
from rlaif.training import (
    CheckpointRun,
    TrainingSettings,
    load_causal_lm,
    lora_config,
    run_fingerprint,
    train_and_publish,
    trainer_args,
)

LABEL_MODES = ("hard", "soft", "filter")
# DPOConfig.loss_type's documented values in TRL 1.16.
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
SOFT_LOSS = "exo_pair"
SOFT_EPSILON = 1e-3


@dataclass(kw_only=True)
class DPOConfig(TrainingSettings):
    prefs: str
    learning_rate: float = 5e-6
    beta: float = 0.1
    loss_type: str | None = None  # None: sigmoid for hard/filter labels, exo_pair for soft
    label_smoothing: float = 0.0  # TRL's, for the `robust` and `exo_pair` losses on hard labels
    ref_model: str | None = None  # None: the starting model
    label_mode: str = "hard"
    min_confidence: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.label_mode not in LABEL_MODES:
            raise UserError(
                f"--label-mode {self.label_mode}: choose one of {', '.join(LABEL_MODES)}"
            )
        if self.loss_type is None:
            self.loss_type = SOFT_LOSS if self.label_mode == "soft" else "sigmoid"
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"--loss-type {self.loss_type}: choose one of {', '.join(LOSS_TYPES)}")
        if self.label_mode == "soft" and self.loss_type != SOFT_LOSS:
            raise UserError(
                f"--label-mode soft fits the judge's probabilities with --loss-type {SOFT_LOSS};"
                f" {self.loss_type} takes hard labels (use --label-mode hard or filter)"
            )
        if not 0 <= self.min_confidence <= 0.5:
            raise UserError(f"--min-confidence {self.min_confidence}: must be in [0, 0.5]")
        if self.beta <= 0:
            raise UserError(f"--beta {self.beta}: must be > 0")


def _trainer_class():
    """DPOTrainer that, when a batch carries `label_p`, gives exo_pair one ε per pair."""
    import warnings
    from dataclasses import dataclass as dc

    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    @dc
    class LabelledCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            if "label_p" in examples[0]:
                batch["label_p"] = torch.tensor([e["label_p"] for e in examples], dtype=torch.float)
            return batch

    class RLAIFDPOTrainer(DPOTrainer):
        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "label_p" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "label_p"]

        def _compute_loss(self, model, inputs, return_outputs):
            p = inputs.pop("label_p", None)
            if p is None:
                return super()._compute_loss(model, inputs, return_outputs)
            shared = self.label_smoothing
            # exo_pair reads ε through torch.tensor(self.label_smoothing): a per-pair tensor
            # broadcasts over the batch (torch warns about copying a tensor; harmless here).
            self.label_smoothing = (1.0 - p).clamp(SOFT_EPSILON, 1.0 - SOFT_EPSILON)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self.label_smoothing = shared

    return RLAIFDPOTrainer, LabelledCollator


def training_rows(rows: list[dict], cfg: DPOConfig) -> tuple[list[dict], int]:
    """Rows the label mode trains on (hard modes: chosen = preferred side), and how many
    `filter` dropped."""
    dropped = 0
    if cfg.label_mode == "filter":
        rows, dropped = confident_rows(rows, cfg.min_confidence)
    if cfg.label_mode != "soft":
        rows = [oriented(r) for r in rows]
    return rows, dropped


def run(cfg: DPOConfig) -> dict:
    started = time.time()
    raw, input_sha = read_jsonl(cfg.prefs)
    rows, dropped_low_confidence = training_rows(preference_rows(cfg.prefs, raw), cfg)
    if not rows:
        raise UserError(f"{cfg.prefs}: no usable pairs to train on")
    resolved = resolve_model(cfg.model)
    reference = resolve_model(cfg.ref_model) if cfg.ref_model else None

    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig

    model, tokenizer = load_causal_lm(resolved.path, cfg.trust_remote_code)
    ref_model = None
    if reference is not None:
        ref_model, _ = load_causal_lm(reference.path, cfg.trust_remote_code)
    elif not cfg.lora:
        # An explicit float32 copy: TRL would reload the starting model in its saved dtype.
        ref_model, _ = load_causal_lm(resolved.path, cfg.trust_remote_code)
    run_dir = CheckpointRun.open(
        cfg.output_dir,
        run_fingerprint(
            cfg,
            {"prefs": input_sha},
            resolved.source_sha256,
        )
        | {"ref_model_sha256": reference.source_sha256 if reference else None},
        cfg.force,
    )
    soft = cfg.label_mode == "soft"
    args = trainer_args(
        TRLDPOConfig,
        cfg,
        run_dir.work,
        max_length=cfg.max_length,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        # TRL refuses exo_pair with ε = 0; soft mode replaces ε per pair anyway.
        label_smoothing=SOFT_EPSILON if soft else cfg.label_smoothing,
    )
    columns = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    if soft:
        columns["label_p"] = [r["p"] for r in rows]
    trainer_cls, collator_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
        data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id, max_length=cfg.max_length),
        peft_config=lora_config(cfg, "CAUSAL_LM"),
    )
    models = {"base": resolved, **({"reference": reference} if reference else {})}
    return train_and_publish(
        trainer,
        run_dir,
        stage="dpo",
        cfg=cfg,
        tokenizer=tokenizer,
        inputs={"prefs": {"path": cfg.prefs, "sha256": input_sha}},
        models=models,
        counts={
            "pairs": len(rows) + dropped_low_confidence,
            "train": len(trainer.train_dataset),
            "dropped_low_confidence": dropped_low_confidence,
            # TRL drops pairs whose prompt alone fills max_length, and truncates the others.
            "dropped_too_long": len(rows) - len(trainer.train_dataset),
        },
        curve_keys=["loss", "rewards/accuracies", "rewards/margins"],
        title=f"DPO ({cfg.loss_type}, {cfg.label_mode} labels, beta {cfg.beta})",
        started=started,
    )
