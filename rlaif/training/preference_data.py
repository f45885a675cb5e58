"""Preference rows for training: every input shape turned into TRL's conversational format.

`rlaif label` output carries the judge's soft label (`p_chosen`); every other shape that
`rlaif.plumbing.pairs` reads carries a hard preference (chosen/rejected, `preferred`,
HH-RLHF), which becomes p = 1. Rows without any preference cannot be trained on and are an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.options import option
from rlaif.plumbing.pairs import parse_pair_records

LABEL_MODES = ("hard", "soft", "filter")


@dataclass(kw_only=True)
class LabelModeSettings:
    """How a preference trainer (train-rm, dpo) uses the judge's probability p."""

    label_mode: str = option(
        "soft", help="soft: fit the judge's probability; hard: its choice; filter: confident only."
    )
    min_confidence: float = option(0.1, help="filter: keep pairs with |p - 0.5| at least this.")

    def check_label_mode(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise UserError(
                f"--label-mode {self.label_mode}: choose one of {', '.join(LABEL_MODES)}"
            )
        if not 0 <= self.min_confidence <= 0.5:
            raise UserError(f"--min-confidence {self.min_confidence}: must be in [0, 0.5]")

    @property
    def soft(self) -> bool:
        return self.label_mode == "soft"

    def rows_to_train(self, rows: list[dict]) -> tuple[list[dict], int]:
        """The rows this label mode trains on, and how many `filter` dropped."""
        if self.label_mode != "filter":
            return rows, 0
        return confident_rows(rows, self.min_confidence)


def collator_with_label_p(collator_cls):
    """`collator_cls` (one of TRL's preference collators) that also batches each pair's soft
    label `label_p`, for the soft-label losses of train-rm and dpo."""
    from dataclasses import dataclass as dc

    import torch

    @dc
    class LabelledCollator(collator_cls):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            if "label_p" in examples[0]:
                batch["label_p"] = torch.tensor([e["label_p"] for e in examples], dtype=torch.float)
            return batch

    return LabelledCollator


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def is_labelled_row(row: dict) -> bool:
    return "p_chosen" in row and "judgements" in row


def preference_rows(path: str, rows: list[tuple[int, dict]]) -> list[dict]:
    """`{"id", "prompt", "chosen", "rejected", "p"}` rows (p: probability chosen is better)."""
    labelled = [(line, row) for line, row in rows if is_labelled_row(row)]
    others = [(line, row) for line, row in rows if not is_labelled_row(row)]
    out = []
    for line, row in labelled:
        p = row["p_chosen"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise at(path, line, "'p_chosen' must be a probability in [0, 1]")
        # The same checks as any pair (prompt, chosen and rejected of the right shapes).
        shape = {k: row.get(k) for k in ("id", "prompt", "chosen", "rejected") if k in row}
        [record] = parse_pair_records(path, [(line, shape)])
        out.append(
            {
                "id": record.id,
                "prompt": record.prompt,
                "chosen": _assistant(record.responses[0]),
                "rejected": _assistant(record.responses[1]),
                "p": float(p),
            }
        )
    for record in parse_pair_records(path, others) if others else []:
        if record.reference is None:
            raise at(
                path,
                record.line,
                "no preference in this row (chosen/rejected or"
                " 'preferred'); label it first with `rlaif label`",
            )
        if record.identical:
            continue  # nothing to learn from two identical responses
        better, worse = record.responses[record.reference], record.responses[1 - record.reference]
        out.append(
            {
                "id": record.id,
                "prompt": record.prompt,
                "chosen": _assistant(better),
                "rejected": _assistant(worse),
                "p": 1.0,
            }
        )
    return out


def confident_rows(rows: list[dict], min_confidence: float) -> tuple[list[dict], int]:
    """Rows whose label is at least `min_confidence` away from a coin flip, and how many were
    dropped (`--label-mode filter`)."""
    kept = [r for r in rows if abs(r["p"] - 0.5) >= min_confidence]
    return kept, len(rows) - len(kept)


def oriented(row: dict) -> dict:
    """The row with `chosen` the side the label prefers (p ≥ 0.5), for hard-label losses."""
    if row["p"] >= 0.5:
        return row
    return {**row, "chosen": row["rejected"], "rejected": row["chosen"], "p": 1.0 - row["p"]}
