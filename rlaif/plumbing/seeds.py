"""Seeds for single decisions, so results do not depend on batching, chunking, sharding or
resumes: each record's step draws from a seed made of the run's `--seed` and what it is."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed for one decision (e.g. a record's critique in round 2)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
