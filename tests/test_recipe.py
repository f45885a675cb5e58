"""examples/harmless/Makefile: each target reruns exactly when what it reads has changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import REPO

RECIPE = REPO / "examples" / "harmless" / "Makefile"
STAGES = (
    "generate",
    "sft",
    "sample",
    "label",
    "train-rm",
    "eval rm",
    "rl",
    "dpo",
    "eval winrate",
    "eval refusals",
)


def make(run: Path, constitution: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-f", str(RECIPE), f"RUN={run}", f"CONSTITUTION={constitution}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def would_run(run: Path, constitution: Path) -> set[str]:
    """The rlaif stages `make -n` would run, and `head` for the prompt subset."""
    out = make(run, constitution, "-n", "all").stdout
    stages = {s for s in STAGES if re.search(rf"rlaif {s} ", out)}
    return stages | ({"head"} if re.search(r"^head ", out, re.M) else set())


def later(path: Path, seconds: float = 5) -> None:
    """As if edited now: newer than every target."""
    stamp = time.time() + seconds
    os.utime(path, (stamp, stamp))


def test_targets_follow_their_real_prerequisites(tmp_path):
    assert shutil.which("make")
    constitution = tmp_path / "constitution.yaml"
    shutil.copy(REPO / "constitutions" / "harmless.yaml", constitution)
    run = tmp_path / "run"
    for folder in ("sft", "rm", "rl", "dpo"):
        (run / folder).mkdir(parents=True)
    # Mark every target as built (make -t), in dependency order.
    touched = make(run, constitution, "-t", "all")
    assert touched.returncode == 0, touched.stderr

    # Nothing edited: nothing to do.
    assert make(run, constitution, "-q", "all").returncode == 0
    assert would_run(run, constitution) == set()

    # A new judge label file: everything trained or evaluated on labels, nothing before it.
    later(run / "prefs.jsonl")
    assert would_run(run, constitution) == {
        "train-rm",
        "eval rm",
        "rl",
        "dpo",
        "eval winrate",
        "eval refusals",  # of the DPO and RL policies; the start's and SFT's stay
    }
    make(run, constitution, "-t", "all")

    # The constitution edited: both stages that read it (generate's critiques and revisions,
    # label's judgements) and everything after them; the prompt subset is untouched.
    later(constitution, 10)
    assert would_run(run, constitution) == set(STAGES)
    assert "head" not in would_run(run, constitution)
