"""A run killed with SIGKILL resumes without losing or duplicating records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd

ARGS = [
    "--engine",
    "hf",
    "--chunk-size",
    "1",
    "--rounds",
    "1",
    "--max-new-tokens",
    "12",
    "--seed",
    "5",
]


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def partial_records(path: Path) -> int:
    if not path.exists():
        return 0
    return max(0, len(path.read_bytes().split(b"\n")) - 2)  # minus header and the trailing ""


@pytest.mark.slow
def test_sigkill_then_rerun_gives_exactly_the_uninterrupted_records(tmp_path, home_with_model):
    src = str(DATA / "prompts.jsonl")
    reference = tmp_path / "reference.jsonl"
    subprocess.run(
        rlaif_cmd("generate", src, "-o", str(reference), *ARGS),
        check=True,
        capture_output=True,
        timeout=600,
    )

    out = tmp_path / "out.jsonl"
    partial = Path(f"{out}.partial.jsonl")
    proc = subprocess.Popen(
        rlaif_cmd("generate", src, "-o", str(out), *ARGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while partial_records(partial) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = partial_records(partial)
    assert 2 <= saved < 6, "the kill should land mid-run"
    assert not out.exists(), "no output may appear before the run completes"

    # Other settings: resuming is refused, and nothing is lost.
    refused = subprocess.run(
        rlaif_cmd("generate", src, "-o", str(out), *ARGS[:-1], "6"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert (
        "different settings exists (changed: seed" in refused.stderr and "--force" in refused.stderr
    )
    assert partial_records(partial) == saved

    resumed = subprocess.run(
        rlaif_cmd("generate", src, "-o", str(out), *ARGS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {saved} of 6" in resumed.stderr
    assert ids(out) == ids(reference)
    assert len(set(ids(out))) == 6
    # Each record is seeded by its own id, so resumed output equals the uninterrupted one.
    assert out.read_text() == reference.read_text()
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["counts"]["resumed"] == saved
    assert manifest["counts"]["generated"] == 6 - saved
    assert not partial.exists()
