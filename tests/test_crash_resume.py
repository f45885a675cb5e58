"""SIGKILL after at least one saved unit, then the same command again: the rerun resumes and
gives exactly what an uninterrupted run gives, nothing lost or duplicated.

generate, train-rm and rl have their own crash tests (test_resume, test_train_rm, test_rl);
these cover sample, label, eval winrate, eval refusals, sft and dpo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DATA, crash_then_rerun, first_lines, labelled_copy, rlaif_cmd

# One record per chunk and per forward pass: every record is saved on its own, and its result
# depends on nothing but the record, so a resumed file can equal an uninterrupted one.
ONE_BY_ONE = ["--engine", "hf", "--chunk-size", "1", "--batch-size", "1", "--seed", "4"]


def saved_records(partial: Path) -> int:
    if not partial.exists():
        return 0
    return max(0, partial.read_bytes().count(b"\n") - 1)  # minus the header line


def kill_after_first_saved(args: list[str], partial: Path, total: int) -> int:
    """Run `args`, SIGKILL it once `partial` holds a finished record; returns how many."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while saved_records(partial) < 1:
        assert proc.poll() is None, "the run ended before saving a record"
        assert time.time() < deadline, "no record saved in 600 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = saved_records(partial)
    assert 1 <= saved < total, f"the kill should land mid-run ({saved} of {total} saved)"
    return saved


def run(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompts_file(tmp_path: Path, n: int) -> Path:
    return first_lines(DATA / "prompts.jsonl", n, tmp_path / "prompts.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sample", "label"])
def test_a_killed_record_stage_resumes_to_the_uninterrupted_output(
    stage, tmp_path, home_with_model
):
    if stage == "sample":
        source, n = prompts_file(tmp_path, 5), 5
        extra = ["--n", "2", "--max-new-tokens", "16"]
    else:
        source, n = first_lines(DATA / "hh-harmless-64.jsonl", 5, tmp_path / "pairs.jsonl"), 5
        extra = []
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    run(rlaif_cmd(stage, str(source), "-o", str(reference), *ONE_BY_ONE, *extra))
    args = rlaif_cmd(stage, str(source), "-o", str(out), *ONE_BY_ONE, *extra)
    saved = kill_after_first_saved(args, Path(f"{out}.partial.jsonl"), n)
    assert not out.exists()
    resumed = run(args)
    assert f"resuming: {saved} of {n} records already done" in resumed.stderr
    assert out.read_text() == reference.read_text()
    assert len({r["id"] for r in rows(out)}) == len(rows(out))
    assert json.loads(Path(f"{out}.manifest.json").read_text())["counts"]["resumed"] == saved
    assert not Path(f"{out}.partial.jsonl").exists()


@pytest.mark.slow
def test_a_killed_winrate_resumes_to_the_uninterrupted_output(tmp_path, home_with_model):
    source = prompts_file(tmp_path, 4)
    common = [*ONE_BY_ONE, "--policy", "smollm2-135m-instruct", "--max-new-tokens", "12"]
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    run(rlaif_cmd("eval", "winrate", str(source), "-o", str(reference), *common))
    args = rlaif_cmd("eval", "winrate", str(source), "-o", str(out), *common)
    work = Path(f"{out}.work")
    saved = kill_after_first_saved(args, work / "policy.jsonl.partial.jsonl", 4)
    assert not out.exists() and work.is_dir()
    resumed = run(args)
    assert f"resuming: {saved} of 4 records already done" in resumed.stderr
    assert rows(out) == rows(reference)
    assert not work.exists()


@pytest.mark.slow
def test_a_killed_refusals_run_resumes_to_the_uninterrupted_output(tmp_path, home_with_model):
    source = DATA / "xstest-prompts-8.jsonl"
    common = [*ONE_BY_ONE, "--policy", "smollm2-135m-instruct", "--max-new-tokens", "12"]
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    run(rlaif_cmd("eval", "refusals", str(source), "-o", str(reference), *common))
    args = rlaif_cmd("eval", "refusals", str(source), "-o", str(out), *common)
    work = Path(f"{out}.work")
    saved = kill_after_first_saved(args, work / "policy.jsonl.partial.jsonl", 8)
    assert not out.exists() and work.is_dir()
    resumed = run(args)
    assert f"resuming: {saved} of 8 records already done" in resumed.stderr
    assert rows(out) == rows(reference)
    assert not work.exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_killed_training_stage_resumes_from_its_checkpoint(stage, tmp_path, home_with_model):
    if stage == "sft":
        data = tmp_path / "chats.jsonl"
        data.write_text(
            "".join(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"Say {word}."},
                            {"role": "assistant", "content": f"{word.capitalize()}."},
                        ]
                    }
                )
                + "\n"
                for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")
            )
        )
    else:
        data = labelled_copy(tmp_path, n=8)
    out = tmp_path / "model"
    args = rlaif_cmd(
        stage,
        str(data),
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--max-length",
        "256",
        "--save-steps",
        "1",
    )  # fmt: skip
    crash_then_rerun(args, out, "checkpoint-1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 2
    steps = [e["step"] for e in rows(out / "log.jsonl") if "loss" in e]
    assert steps == [1, 2], steps  # step 1 from before the crash, step 2 after: none twice
    assert not Path(f"{out}.partial").exists()
