"""A saved reward model that scores chats: used by `score`, `eval rm`, `rl` and `eval winrate`,
scored one way everywhere (same padding and pooling), so RL optimises what `eval rm` measured."""

from __future__ import annotations

from pathlib import Path

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import check_model_weights


class RewardModel:
    """A saved reward model (any `AutoModelForSequenceClassification` folder) that scores chats."""

    def __init__(self, path: str, batch_size: int = 8):
        check_reward_model_folder(path)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = path
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise UserError(
                f"{path}: a reward model has one output; this one has"
                f" {self.model.config.num_labels}"
            )

    def score(self, chats: list[list[dict]]) -> list[float]:
        import torch

        ids = [self._ids(c) for c in chats]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        rewards = [0.0] * len(ids)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            # Right padding: the model pools the rightmost non-pad token, as in training.
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
            for row, i in enumerate(batch):
                rewards[i] = logits[row].item()
        return rewards

    def _ids(self, chat: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(chat, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def check_reward_model_folder(path: str) -> None:
    """Fail with one line, before any work, when `--rm` is not a saved reward-model folder."""
    import json

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"--rm {path}: not a reward-model folder (no config.json);"
            " pass the -o folder of `rlaif train-rm`"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"--rm {config_file}: unreadable ({e})") from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures:
        if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise UserError(
                f"--rm {path}: a {architectures[0]} model, not a reward model (one score per"
                " sequence); pass the -o folder of `rlaif train-rm`"
            )
    check_model_weights(path, "--rm")
