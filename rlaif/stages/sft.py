"""`rlaif sft`: supervised fine-tuning on revisions (SL-CAI), on TRL's SFTTrainer.

Constitutional AI fine-tunes the model on its own final revisions before any RL. Each row's
`messages` (what `rlaif generate` writes: the prompt and the final revision, or any chat JSONL)
is split into a prompt (all but the last turn) and a completion (the last, assistant turn), so
TRL's completion-only loss trains on the answer and not on the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.models import resolve_model
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.records import parse_messages
from rlaif.training.job import InputFile, TrainingJob, TrainingSettings, load_causal_lm


@dataclass(kw_only=True)
class SFTConfig(TrainingSettings):
    """Supervised fine-tuning on revisions (SL-CAI), with TRL's SFTTrainer.

    Trains on each row's last assistant turn given the turns before it. Writes a normal Hugging
    Face folder (AutoModelForCausalLM; LoRA merged) with metrics.json, curves.png and
    manifest.json; resumes from DIR.partial after a crash. Data parallel as for train-rm.

    Examples:

      rlaif sft revisions.jsonl -o sft-model --epochs 2

      rlaif sft chats.jsonl -o sft-model -m HuggingFaceTB/SmolLM2-360M-Instruct --lora
    """

    data: str = option(
        help="Chat JSONL with 'messages' ending in the answer: `rlaif generate` output"
        " (prompt + final revision) or any such file.",
        argument=True,
    )
    completion_only_loss: bool = option(True, help="Loss on the answer only, not on the prompt.")
    learning_rate: float = 2e-5
    # 4 x 2 accumulated: 8 examples per update, half the activations held at once
    # (fits 4 GiB with the defaults; docs/stages.md, "Memory of the training stages").
    batch_size: int = option(4, help="Conversations per device per step.")
    gradient_accumulation_steps: int = 2
    max_length: int = option(
        1024, help="Longest conversation in tokens; longer ones are truncated."
    )


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


@one_run
def run(cfg: SFTConfig) -> dict:
    started = time.time()
    guard = cfg.guard_output(cfg.data)
    raw, input_sha = read_jsonl(cfg.data, cfg.dataset)
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

    def build_trainer(args, peft_config):
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        if len(trainer.train_dataset) == 0:
            raise UserError(
                f"{cfg.data}: every conversation's prompt fills --max-length {cfg.max_length},"
                " leaving no answer tokens to train on; raise --max-length"
            )
        return trainer

    return TrainingJob(
        stage="sft",
        settings=cfg,
        guard=guard,
        inputs={"data": InputFile(cfg.data, input_sha)},
        models={"base": resolved},
        trl_config=TRLSFTConfig,
        trl_args={
            "max_length": cfg.max_length,
            "completion_only_loss": cfg.completion_only_loss,
            "packing": False,
        },
        lora_task="CAUSAL_LM",
        build_trainer=build_trainer,
        counts=lambda trainer: {
            "conversations": len(rows),
            "truncated": truncated,
            # TRL drops conversations whose answer is cut off entirely (prompt >= max_length).
            "dropped_too_long": len(rows) - len(trainer.train_dataset),
        },
        tokenizer=tokenizer,
        curve_keys=["loss", "mean_token_accuracy"],
        title="supervised fine-tuning on revisions",
        started=started,
    ).run()
