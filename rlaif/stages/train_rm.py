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

import random
import sys
import time
from dataclasses import dataclass

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.models import resolve_model
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.training.job import InputFile, TrainingJob, TrainingSettings
from rlaif.training.preference_data import LabelModeSettings, collator_with_label_p, preference_rows


@dataclass(kw_only=True)
class TrainRMConfig(TrainingSettings, LabelModeSettings):
    """Train a reward model on preference labels (TRL RewardTrainer).

    Writes a normal Hugging Face folder (AutoModelForSequenceClassification), with
    metrics.json, curves.png and manifest.json. Checkpoints go to DIR.partial; an interrupted
    run resumes from the last one. Data parallel: --num-processes N, or on GPUs
    `accelerate launch --config_file examples/accelerate/CONFIG.yaml -m rlaif train-rm ...`.

    Examples:

      rlaif train-rm prefs.jsonl -o rm --label-mode soft --epochs 1

      rlaif train-rm hh.jsonl -o rm --label-mode hard --lora --max-steps 200
    """

    prefs: str = option(
        help="Preference JSONL: `rlaif label` output, TRL chosen/rejected rows or HH-RLHF.",
        argument=True,
    )
    eval_fraction: float = option(0.1, help="Seeded share of pairs held out.")
    # batches of similar length: less padding, same samples
    group_by_length: bool = option(True, help="Batch pairs of similar length (less padding).")
    # 4 x 2 accumulated: 8 examples per update, half the activations held at once
    # (fits 4 GiB with the defaults; docs/stages.md, "Memory of the training stages").
    batch_size: int = option(4, help="Pairs per device per step.")
    gradient_accumulation_steps: int = 2
    max_length: int = option(
        1024, help="Longest prompt + response in tokens; longer pairs are dropped."
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_label_mode()
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"--eval-fraction {self.eval_fraction}: must be in [0, 1)")


def soft_bradley_terry_loss(rewards_chosen, rewards_rejected, p):
    """Mean of −p·log σ(d) − (1 − p)·log σ(−d); equals TRL's loss when p = 1."""
    import torch.nn.functional as F

    d = rewards_chosen - rewards_rejected
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()


def _trainer_class():
    """RewardTrainer that, when a batch carries `label_p`, trains with the soft-label loss
    (through the public `compute_loss` hook); metrics are TRL's own."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class RLAIFRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = inputs.pop("label_p", None)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if p is not None:
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                loss = soft_bradley_terry_loss(chosen, rejected, p.to(loss.dtype))
            return (loss, outputs) if return_outputs else loss

    return RLAIFRewardTrainer, collator_with_label_p(DataCollatorForPreference)


def split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(rows) * fraction)
    eval_ids = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_ids]
    return train, [r for i, r in enumerate(rows) if i in eval_ids]


def load_reward_model(path: str, trust_remote_code: bool = False, seed: int = 0):
    """A causal LM with a one-output score head, and a tokenizer whose pad token is not EOS.

    Sequence classification pools the rightmost non-pad token; with pad = EOS (SmolLM2) the
    end-of-turn tokens would count as padding, so a distinct pad token is chosen. The new score
    head (and a new pad token's embedding) are drawn from `seed`: unseeded, two runs of the same
    command trained from different heads.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|rlaif_pad|>"})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
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


@one_run
def run(cfg: TrainRMConfig) -> dict:
    started = time.time()
    guard = cfg.guard_output(cfg.prefs)
    raw, input_sha = read_jsonl(cfg.prefs, cfg.dataset)
    rows, dropped_low_confidence = cfg.rows_to_train(preference_rows(cfg.prefs, raw))
    if len(rows) < 2:
        raise UserError(f"{cfg.prefs}: {len(rows)} usable pairs; need at least 2 to train")
    train_rows, eval_rows = split(rows, cfg.eval_fraction, cfg.seed)
    resolved = resolve_model(cfg.model)

    from trl import RewardConfig

    model, tokenizer = load_reward_model(resolved.path, cfg.trust_remote_code, cfg.seed)
    train_lengths = pair_lengths(train_rows, tokenizer)
    eval_lengths = pair_lengths(eval_rows, tokenizer)
    # TRL drops pairs longer than max_length rather than truncating them; count them.
    too_long = sum(n > cfg.max_length for n in train_lengths + eval_lengths)
    trainer_cls, collator_cls = _trainer_class()

    def build_trainer(args, peft_config):
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=_to_dataset(train_rows, train_lengths, cfg.soft),
            eval_dataset=_to_dataset(eval_rows, eval_lengths, cfg.soft) if eval_rows else None,
            processing_class=tokenizer,
            data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id),
            peft_config=peft_config,
        )

    manifest = TrainingJob(
        stage="train-rm",
        settings=cfg,
        guard=guard,
        inputs={"prefs": InputFile(cfg.prefs, input_sha)},
        models={"base": resolved},
        trl_config=RewardConfig,
        trl_args={
            "max_length": cfg.max_length,
            "train_sampling_strategy": "group_by_length" if cfg.group_by_length else "random",
            "eval_strategy": "no",  # evaluated once, after training, not twice
            # keeps `label_p` for the collator and `length` for length-grouped batches
            "remove_unused_columns": False,
        },
        lora_task="SEQ_CLS",
        build_trainer=build_trainer,
        counts=lambda trainer: {
            "pairs": len(rows) + dropped_low_confidence,
            "train": len(train_rows),
            "eval": len(eval_rows),
            "dropped_low_confidence": dropped_low_confidence,
            "dropped_too_long": too_long,
        },
        tokenizer=tokenizer,
        curve_keys=["loss", "accuracy"],
        title=f"reward model ({cfg.label_mode} labels)",
        started=started,
        evaluate=bool(eval_rows),
    ).run()
    accuracy = manifest.get("metrics", {}).get("eval", {}).get("eval_accuracy")
    if accuracy is not None:
        from rlaif.plumbing.stats import format_share  # the figure with its n and 95% CI

        n = manifest["counts"]["eval"]
        print(f"held-out accuracy {format_share(accuracy, n)}", file=sys.stderr)
    return manifest
