"""`rlaif sft`: supervised fine-tuning on revisions (SL-CAI), on TRL's SFTTrainer.

Constitutional AI fine-tunes the model on its own final revisions before any RL. Each row's
`messages` (what `rlaif generate` writes: the prompt and the final revision, or any chat JSONL)
is split into a prompt (all but the last turn) and a completion (the last, assistant turn), so
TRL's completion-only loss trains on the answer and not on the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlaif.errors import UserError, at
from rlaif.files import read_jsonl
from rlaif.models import resolve_model
from rlaif.records import parse_messages
from rlaif.training import (
    CheckpointRun,
    TrainingSettings,
    load_causal_lm,
    lora_config,
    run_fingerprint,
    train_and_publish,
    trainer_args,
)


@dataclass(kw_only=True)
class SFTConfig(TrainingSettings):
    data: str
    learning_rate: float = 2e-5
    completion_only_loss: bool = True  # loss on the answer only, not on the prompt


def prompt_completion_rows(path: str, rows: list[tuple[int, dict]]) -> list[dict]:
    """`{"prompt": [...], "completion": [assistant turn]}` from each row's `messages`."""
    out = []
    for line, row in rows:
        if "messages" not in row:
            raise at(path, line, "needs 'messages' (chat turns ending with the assistant's answer)")
        messages = parse_messages(path, line, row["messages"])
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise at(path, line, "'messages' must end with the assistant's answer after a prompt")
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def conversation_lengths(rows: list[dict], tokenizer) -> list[int]:
    def length(chat):
        ids = tokenizer.apply_chat_template(chat, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return [length(r["prompt"] + r["completion"]) for r in rows]


def run(cfg: SFTConfig) -> dict:
    started = time.time()
    raw, input_sha = read_jsonl(cfg.data)
    rows = prompt_completion_rows(cfg.data, raw)
    if not rows:
        raise UserError(f"{cfg.data}: no conversations to train on")
    resolved = resolve_model(cfg.model)

    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    model, tokenizer = load_causal_lm(resolved.path, cfg.trust_remote_code)
    # SFTTrainer cuts the end of long conversations (the answer); count them, don't hide it.
    truncated = sum(n > cfg.max_length for n in conversation_lengths(rows, tokenizer))
    run_dir = CheckpointRun.open(
        cfg.output_dir,
        run_fingerprint(cfg, {"data": input_sha}, resolved.source_sha256),
        cfg.force,
    )
    args = trainer_args(
        TRLSFTConfig,
        cfg,
        run_dir.work,
        max_length=cfg.max_length,
        completion_only_loss=cfg.completion_only_loss,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg, "CAUSAL_LM"),
    )
    if len(trainer.train_dataset) == 0:
        raise UserError(
            f"{cfg.data}: every conversation's prompt fills --max-length {cfg.max_length},"
            " leaving no answer tokens to train on; raise --max-length"
        )
    return train_and_publish(
        trainer,
        run_dir,
        stage="sft",
        cfg=cfg,
        tokenizer=tokenizer,
        inputs={"data": {"path": cfg.data, "sha256": input_sha}},
        models={"base": resolved},
        counts={
            "conversations": len(rows),
            "truncated": truncated,
            # TRL drops conversations whose answer is cut off entirely (prompt >= max_length).
            "dropped_too_long": len(rows) - len(trainer.train_dataset),
        },
        curve_keys=["loss", "mean_token_accuracy"],
        title="supervised fine-tuning on revisions",
        started=started,
    )
