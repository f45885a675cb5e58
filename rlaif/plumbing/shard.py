"""`--shard I/N`: split a stage's records across machines by record id.

A record belongs to shard I of N when `int(sha256(id)[:16], 16) % N == I - 1`. Assigning by id
(not by position) keeps the split stable whatever the file order, and lets every machine decide
on its own, from the id alone, which records are its own. Each record's result is already seeded
from its id, so a shard's rows are the rows an unsharded run gives those ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from rlaif.plumbing.errors import UserError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as SLURM_ARRAY_TASK_ID usually is
    count: int

    def __post_init__(self):
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UserError(
                f"--shard {self.index}/{self.count}: need 1 <= I <= N (e.g. --shard 2/4)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, record_id: str) -> bool:
        return shard_of(record_id, self.count) == self.index

    def describe(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str | None) -> Shard | None:
    """`"I/N"` → Shard; None or "" → no sharding. Anything else is a one-line UserError."""
    if text is None or not str(text).strip():
        return None
    match = _SPEC.fullmatch(str(text))
    if not match:
        raise UserError(f"--shard {text}: expected I/N, e.g. --shard 2/4 (the 2nd of 4 shards)")
    return Shard(int(match[1]), int(match[2]))


def shard_of(record_id: str, count: int) -> int:
    """The 1-based shard that `record_id` belongs to out of `count`."""
    digest = hashlib.sha256(str(record_id).encode()).hexdigest()
    return int(digest[:16], 16) % count + 1


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_HasId)


def select(records: Sequence[R], shard: Shard | None) -> list[R]:
    """The records this shard owns, in input order (all of them without sharding)."""
    if shard is None:
        return list(records)
    return [r for r in records if shard.owns(r.id)]


def manifest_fields(shard: Shard | None, input_lines: Sequence[int]) -> dict:
    """What a shard adds to its manifest, for `rlaif merge`: which shard it is, and each output
    row's input line, so the merged rows can be put back in input order without the input."""
    if shard is None:
        return {}
    return {"shard": shard.describe(), "input_lines": list(input_lines)}
