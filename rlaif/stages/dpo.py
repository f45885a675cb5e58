"""`rlaif dpo`: offline preference optimisation from AI labels, on TRL's DPOTrainer.

Label modes (as in `train-rm`):
- `hard`: the judge's choice as truth, with any loss TRL offers (`--loss-type`, default sigmoid).
- `filter`: drop pairs with |p − 0.5| < min_confidence, then as `hard`.
- `soft`: fit the judge's probability p itself. TRL 1.16's sigmoid loss has no label smoothing
  any more; its `exo_pair` loss (EXO, Ji et al. 2024) minimises KL(q_θ ‖ [1 − ε, ε]) where
  q_θ = σ(β·Δ) is the policy's implied preference. Setting ε = 1 − p per pair (clamped to
  [1e-3, 1 − 1e-3], the paper's ε for hard labels) makes the target the judge's distribution:
  the loss is minimised exactly where σ(β·Δ) = p, as the soft cross-entropy would be.

The reference model is the starting model unless `--ref-model` says otherwise. Its
log-probabilities are computed once before training, without gradients, so the default
reference costs no second copy of the model and no reference pass per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlaif.plumbing import internals
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.models import resolve_model
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.training.job import InputFile, TrainingJob, TrainingSettings, load_causal_lm
from rlaif.training.preference_data import (
    LabelModeSettings,
    collator_with_label_p,
    oriented,
    preference_rows,
)

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
# The losses that read TRL's `label_smoothing` (ε) in TRL 1.16's DPOTrainer._compute_loss.
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
SOFT_LOSS = "exo_pair"
SOFT_EPSILON = 1e-3


@dataclass(kw_only=True)
class DPOConfig(TrainingSettings, LabelModeSettings):
    """Direct preference optimisation on AI (or human) labels, with TRL's DPOTrainer.

    Writes a normal Hugging Face folder (AutoModelForCausalLM; LoRA merged) with
    metrics.json, curves.png and manifest.json; resumes from DIR.partial after a crash. Data
    parallel as for train-rm.

    Examples:

      rlaif dpo prefs.jsonl -o dpo-model --beta 0.1

      rlaif dpo prefs.jsonl -o dpo-model -m sft-model --label-mode soft --lora
    """

    prefs: str = option(
        help="Preference JSONL: `rlaif label` output, TRL chosen/rejected rows or HH-RLHF.",
        argument=True,
    )
    # None: the starting model
    ref_model: str | None = option(
        None, help="Reference model for the KL leash (default: the starting model)."
    )
    beta: float = option(0.1, help="Strength of the leash to the reference model.")
    # None: sigmoid for hard/filter labels, exo_pair for soft
    loss_type: str | None = option(
        None,
        help="A TRL DPO loss: sigmoid, ipo, hinge, robust, exo_pair, ... (default: sigmoid;"
        " exo_pair for soft labels).",
    )
    label_smoothing: float = option(
        0.0,
        help="TRL's ε for the robust, exo_pair, aot and aot_unpaired losses on hard labels.",
    )
    label_mode: str = option(
        "hard",
        help="hard: the judge's choice; filter: confident pairs only; soft: fit the judge's"
        " probability (exo_pair loss, one ε = 1 - p per pair).",
    )
    learning_rate: float = 5e-6
    # 4 x 2 accumulated: 8 examples per update, half the activations held at once
    # (fits 4 GiB with the defaults; docs/stages.md, "Memory of the training stages").
    batch_size: int = option(4, help="Pairs per device per step.")
    gradient_accumulation_steps: int = 2
    max_length: int = option(
        1024, help="Longest prompt + response in tokens; longer ones are truncated."
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_label_mode()
        if self.loss_type is None:
            self.loss_type = SOFT_LOSS if self.soft else "sigmoid"
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"--loss-type {self.loss_type}: choose one of {', '.join(LOSS_TYPES)}")
        if self.soft and self.loss_type != SOFT_LOSS:
            raise UserError(
                f"--label-mode soft fits the judge's probabilities with --loss-type {SOFT_LOSS};"
                f" {self.loss_type} takes hard labels (use --label-mode hard or filter)"
            )
        if self.label_smoothing and (self.soft or self.loss_type not in SMOOTHED_LOSSES):
            raise UserError(
                f"--label-smoothing {self.label_smoothing} has no effect here: only the"
                f" {', '.join(SMOOTHED_LOSSES)} losses read it, and soft labels set one ε per"
                " pair from p"
            )
        if self.beta <= 0:
            raise UserError(f"--beta {self.beta}: must be > 0")


def _trainer_class():
    """DPOTrainer that, when a batch carries `label_p`, gives exo_pair one ε per pair: the
    judge's doubt, 1 - p, kept within [SOFT_EPSILON, 1 - SOFT_EPSILON]. exo_pair reads ε
    through torch.tensor(self.label_smoothing), so a per-pair tensor broadcasts over the batch.
    No public hook takes a per-pair ε (see `plumbing.internals`)."""
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    trainer = internals.dpo_trainer_with_per_pair_smoothing(
        DPOTrainer, lambda p: (1.0 - p).clamp(SOFT_EPSILON, 1.0 - SOFT_EPSILON)
    )
    return trainer, collator_with_label_p(DataCollatorForPreference)


def training_rows(rows: list[dict], cfg: DPOConfig) -> tuple[list[dict], int]:
    """Rows the label mode trains on (hard modes: chosen = preferred side), and how many
    `filter` dropped."""
    rows, dropped = cfg.rows_to_train(rows)
    if not cfg.soft:
        rows = [oriented(r) for r in rows]
    return rows, dropped


@one_run
def run(cfg: DPOConfig) -> dict:
    started = time.time()
    guard = cfg.guard_output(cfg.prefs, cfg.ref_model)
    raw, input_sha = read_jsonl(cfg.prefs, cfg.dataset)
    rows, dropped_low_confidence = training_rows(preference_rows(cfg.prefs, raw), cfg)
    if not rows:
        raise UserError(f"{cfg.prefs}: no usable pairs to train on")
    resolved = resolve_model(cfg.model)
    reference = resolve_model(cfg.ref_model) if cfg.ref_model else None

    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig

    model, tokenizer = load_causal_lm(resolved.path, cfg.trust_remote_code)
    # The reference's log-probabilities are computed once, without gradients, before training
    # (TRL's precompute_ref_log_probs): with the starting model as the reference, that is the
    # policy itself before its first step, so no second copy of the model is held at all.
    ref_model = None
    if reference is not None:
        ref_model, _ = load_causal_lm(reference.path, cfg.trust_remote_code)
    columns = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    if cfg.soft:
        columns["label_p"] = [r["p"] for r in rows]
    trainer_cls, collator_cls = _trainer_class()

    def build_trainer(args, peft_config):
        return trainer_cls(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_dict(columns),
            processing_class=tokenizer,
            data_collator=collator_cls(
                pad_token_id=tokenizer.pad_token_id, max_length=cfg.max_length
            ),
            peft_config=peft_config,
        )

    return TrainingJob(
        stage="dpo",
        settings=cfg,
        guard=guard,
        inputs={"prefs": InputFile(cfg.prefs, input_sha)},
        models={"base": resolved, **({"reference": reference} if reference else {})},
        trl_config=TRLDPOConfig,
        trl_args={
            "max_length": cfg.max_length,
            "beta": cfg.beta,
            "loss_type": [cfg.loss_type],
            # TRL refuses exo_pair with ε = 0; soft mode replaces ε per pair anyway.
            "label_smoothing": SOFT_EPSILON if cfg.soft else cfg.label_smoothing,
            # keeps `label_p` for the collator (TRL keeps only its own columns otherwise)
            "remove_unused_columns": False,
            "precompute_ref_log_probs": True,
        },
        lora_task="CAUSAL_LM",
        build_trainer=build_trainer,
        counts=lambda trainer: {
            "pairs": len(rows) + dropped_low_confidence,
            "train": len(trainer.train_dataset),
            "dropped_low_confidence": dropped_low_confidence,
            # TRL drops pairs whose prompt alone fills max_length, and truncates the others.
            "dropped_too_long": len(rows) - len(trainer.train_dataset),
        },
        tokenizer=tokenizer,
        curve_keys=["loss", "rewards/accuracies", "rewards/margins"],
        title=f"DPO ({cfg.loss_type}, {cfg.label_mode} labels, beta {cfg.beta})",
        started=started,
    ).run()
