"""Training is deterministic with --seed: the same command run twice, in two processes (with
different hash seeds, as two shells would have), writes the same model and the same losses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, first_lines, rlaif_cmd

HH = DATA / "hh-harmless-64.jsonl"
SMALL = ["--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1",
         "--max-length", "192", "--lr", "1e-4", "--seed", "3"]  # fmt: skip


def _run(stage: list[str], out: Path, hash_seed: str) -> tuple[list[float], str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        rlaif_cmd(*stage, "-o", str(out), *SMALL), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    return [e["loss"] for e in history if "loss" in e], weights


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "options", "pairs"),
    [
        ("train-rm", ["--eval-fraction", "0"], 64),  # a new, randomly drawn score head
        ("train-rm", ["--eval-fraction", "0", "--lora"], 64),  # new adapters
        # 8 pairs: DPO computes the reference model's log-probabilities of the whole file
        # before its first step (64 pairs: over a minute)
        ("dpo", [], 8),
    ],
    ids=["train-rm", "train-rm-lora", "dpo"],
)
def test_same_seed_same_model(tmp_path, home_with_model, stage, options, pairs):
    """Under the default precision (bf16 autocast on this CPU) and, for train-rm, length
    grouping."""
    data = first_lines(HH, pairs, tmp_path / f"hh-{pairs}.jsonl")
    stage = [stage, str(data), *options]
    first = _run(stage, tmp_path / "a", "1")
    second = _run(stage, tmp_path / "b", "2")
    assert len(first[0]) == 2
    assert first == second
