"""benchmarks/gpu_smoke.sh --dry-run: every rlaif command in the GPU smoke script parses, and the
checker behind it rejects a command line rlaif would reject."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_smoke.sh"


def dry_run(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "WORK": str(tmp_path / "work"),
    }
    return subprocess.run(
        ["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env, timeout=120
    )


def test_dry_run_checks_every_command(tmp_path):
    result = dry_run(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    checked = [line for line in result.stdout.splitlines() if line.startswith("ok: rlaif ")]
    stages = [line.split()[2] for line in checked]
    assert stages == ["label", "train-rm", "rl", "dpo"]
    assert "--engine vllm" in checked[0] and "--use-vllm" in checked[2]
    # the 200 pairs it would label
    assert len((tmp_path / "work" / "pairs.jsonl").read_text().splitlines()) == 200


def test_dry_run_fails_on_a_misspelt_option(tmp_path):
    """The same script with one option misspelt: the dry run must fail and name it."""
    fake_repo = tmp_path / "repo"
    (fake_repo / "benchmarks").mkdir(parents=True)
    for shared in ("examples", "tests"):
        (fake_repo / shared).symlink_to(REPO / shared)
    shutil.copy(REPO / "benchmarks" / "gpu_smoke.py", fake_repo / "benchmarks")
    text = SCRIPT.read_text()
    command = '--reward "$WORK/rm" --use-vllm'
    assert text.count(command) == 1
    broken = fake_repo / "benchmarks" / "gpu_smoke.sh"
    broken.write_text(text.replace(command, '--reward "$WORK/rm" --use-vlm'))
    result = dry_run(broken, tmp_path)
    assert result.returncode == 2
    assert "--use-vlm" in result.stderr


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["label", "p.jsonl", "-o", "l.jsonl", "--engine", "vlm"], "--engine vlm"),
        (["dpo", "l.jsonl", "-o", "d", "--max-steps", "ten"], "--max-steps"),
        (["rl", "p.jsonl", "-o", "d", "--batch-size", "6"], "--batch-size 6"),
        (["train-rm", "l.jsonl"], "-o"),
        (["labl", "p.jsonl"], "labl"),
    ],
)
def test_checker_rejects_what_rlaif_rejects(args, culprit):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "check", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 2
    assert culprit in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
