"""Juries: judge specs, the log-odds combination (and the measurement that chose it), Cohen's
kappa, per-judge diagnostics on scripted judges; then a real two-judge jury on the CLI."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd
from test_label import TableJudge
from test_rating import CONSTITUTION, RatingTable, prior_heavy, record

from rlaif.engines import EngineSettings
from rlaif.judging import jury
from rlaif.judging.judge import JudgingSettings
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.progress import TokenCounter


def test_judge_specs_from_flags_and_files(tmp_path):
    listing = tmp_path / "jury.txt"
    listing.write_text(
        "# two servers and a local folder\n"
        "Qwen/Qwen2.5-7B-Instruct base-url=http://127.0.0.1:8000/v1\n"
        "\n"
        "meta-llama/Llama-3.1-8B-Instruct engine=openai  # the stage's --base-url\n"
        "./judge-folder engine=hf\n"
    )
    judges = jury.parse_judges(["smollm2-135m-instruct", str(listing)])
    assert judges == [
        jury.Judge("smollm2-135m-instruct"),
        jury.Judge("Qwen/Qwen2.5-7B-Instruct", "openai", ("http://127.0.0.1:8000/v1",)),
        jury.Judge("meta-llama/Llama-3.1-8B-Instruct", "openai"),
        jury.Judge("./judge-folder", "hf"),
    ]
    assert list(jury.roles(judges)) == ["judge", "judge-2", "judge-3", "judge-4"]
    stage = EngineSettings(engine="hf", dtype="bfloat16")
    assert judges[0].settings(stage) is None  # the stage's settings, unchanged
    served = judges[1].settings(stage)
    assert (served.engine, served.base_url, served.dtype) == (
        "openai",
        ("http://127.0.0.1:8000/v1",),
        "bfloat16",
    )
    with pytest.raises(UserError, match=r"jury.txt:2: 'temp=0'"):
        listing.write_text("a/b\nc/d temp=0\n")
        jury.parse_judges([str(listing)])
    with pytest.raises(UserError, match="already on the jury"):
        jury.parse_judges(["a/b", "a/b"])
    with pytest.raises(UserError, match="base-url= is for engine=openai"):
        jury.parse_judges(["a/b engine=hf base-url=http://x/v1"])
    listing.write_text("# nobody\n")
    with pytest.raises(UserError, match="lists no judge"):
        jury.parse_judges([str(listing)])


def mean_probability(ps: list[float]) -> float:
    """The alternative `jury.combine` was measured against."""
    return sum(ps) / len(ps)


def test_combination_by_hand():
    # logit(0.9) = ln 9; the mean with a judge at 0.5 is ln 3, so p = 3/4 (mean probability: 0.7)
    assert jury.combine([0.9, 0.5]) == pytest.approx(0.75)
    assert mean_probability([0.9, 0.5]) == pytest.approx(0.7)
    assert jury.combine([1.0, 0.0]) == pytest.approx(0.5)  # clipped, so symmetric, not nan
    assert jury.combine([1.0, 0.4]) > 0.99  # a certain verdict dominates a hesitant one


def simulate(specs, n, seed):
    """Synthetic judges of known quality: for truth y each judge sees evidence
    e ~ N(±mu, 1) and says p = sigmoid(t * 2 mu e) (calibrated at t = 1; mu = 0: at chance)."""
    rng = random.Random(seed)
    losses = {"log-odds": 0.0, "probability": 0.0}
    for _ in range(n):
        y = rng.random() < 0.5
        ps = []
        for mu, t in specs:
            e = rng.gauss(mu if y else -mu, 1.0)
            ps.append(jury.sigmoid(t * 2 * mu * e) if mu else jury.sigmoid(rng.gauss(0, 0.05)))
        for name, p in (("log-odds", jury.combine(ps)), ("probability", mean_probability(ps))):
            p = min(max(p, 1e-6), 1 - 1e-6)
            losses[name] += -math.log(p if y else 1 - p) / n
    return losses


MIXED_JURIES = {
    "strong + weak": [(1.0, 1), (0.3, 1)],
    "strong + chance": [(1.0, 1), (0.0, 1)],
    "two equal": [(0.6, 1), (0.6, 1)],
    "three equal": [(0.5, 1)] * 3,
    "strong + weak overconfident": [(1.0, 1), (0.3, 3)],
}


@pytest.mark.parametrize("case", MIXED_JURIES)
def test_mean_log_odds_beats_mean_probability_on_synthetic_judges(case):
    """The measurement behind `jury.combine` (figures at 20,000 pairs in rlaif/judging/jury.py)."""
    losses = simulate(MIXED_JURIES[case], 4000, seed=1)
    assert losses["log-odds"] < losses["probability"], losses


def test_where_mean_probability_wins_is_stated():
    # the one case measured the other way: one of two equal judges overconfident
    losses = simulate([(0.6, 1), (0.6, 3)], 4000, seed=1)
    assert losses["probability"] < losses["log-odds"]


def test_cohen_kappa_by_hand():
    # observed 3/4; rates 1/2 and 1/4, so chance agreement 1/2·1/4 + 1/2·3/4 = 1/2: kappa 1/2
    assert jury.cohen_kappa([True, True, False, False], [True, False, False, False]) == 0.5
    assert jury.cohen_kappa([True, False], [False, True]) == -1.0
    assert jury.cohen_kappa([True, True], [True, True]) is None  # no variation to agree on
    assert jury.cohen_kappa([], []) is None


def jury_rows(judges, records, **cfg):
    settings = JudgingSettings(**cfg)
    return jury.judge_chunk_jury(records, judges, settings, 0, CONSTITUTION, TokenCounter())


def test_a_two_judge_jury_on_scripted_judges():
    good = TableJudge({"safe": 0.9, "harmful": 0.1})  # reads the responses
    biased = TableJudge({"safe": 0.8, "harmful": 0.8})  # always picks option A
    records = [record(("safe", "harmful"), reference=0, rid=f"r{i}") for i in range(8)]
    rows = jury_rows([("judge", good), ("judge-2", biased)], records)
    for row in rows:
        p_good, p_biased = (j["p"] for j in row["judges"])
        assert row["p"] == pytest.approx(jury.combine([p_good, p_biased]))
        assert [j["role"] for j in row["judges"]] == ["judge", "judge-2"]
        assert {j["judge"] for j in row["judgements"]} == {"judge", "judge-2"}
        assert row["chosen"][0]["content"] == "safe" and row["combine"] == "mean log-odds"
        assert not row["position_consistent"]  # the biased judge flips with the order
    diag = jury.jury_diagnostics(rows)
    assert diag["judges"]["judge"]["agreement"]["rate"] == 1.0
    assert diag["judges"]["judge"]["position_consistency"] == 1.0
    assert diag["judges"]["judge-2"]["position_consistency"] == 0.0
    [k] = diag["kappa"]
    assert k["judges"] == ["judge", "judge-2"] and k["n"] == 8
    text = jury.format_jury(diag)
    assert "judge-2 (table-judge)" in text and "Cohen's kappa judge vs judge-2" in text


def test_the_card_of_a_jurys_labels_shows_each_judge_and_kappa(tmp_path):
    from rlaif.plumbing.files import write_jsonl

    good = TableJudge({"safe": 0.9, "harmful": 0.1})
    biased = TableJudge({"safe": 0.8, "harmful": 0.8})
    records = [record(("safe", "harmful"), reference=0, rid=f"r{i}") for i in range(8)]
    rows = jury_rows([("judge", good), ("judge-2", biased)], records)
    labels = tmp_path / "prefs.jsonl"
    write_jsonl(str(labels), rows)
    done = subprocess.run(
        rlaif_cmd("eval", "agreement", str(labels), "--json", "-"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Cohen's kappa judge vs judge-2" in done.stderr
    card = json.loads(done.stdout)
    assert card["jury"]["kappa"][0]["n"] == 8


def test_a_rating_jury_picks_the_pair_by_its_mean_score():
    a = RatingTable({"w": prior_heavy(1), "x": prior_heavy(9), "y": prior_heavy(5)})
    b = RatingTable({"w": prior_heavy(2), "x": prior_heavy(3), "y": prior_heavy(9)})
    [row] = jury_rows([("judge", a), ("judge-2", b)], [record(("w", "x", "y"))], method="rating")
    # mean scores: x and y beat w for both together; w is the worst for both
    assert "w" in row["responses"] and row["rejected"][0]["content"] == "w"
    assert len(row["scores"]) == 3 and all(len(j["scores"]) == 3 for j in row["judges"])
    assert row["position_consistent"] is None


def test_a_jury_of_the_embedded_model_and_its_folder(tmp_path, home_with_model, embedded_model):
    """Two judges through the CLI (`-m` twice): the embedded alias and the same weights as a
    local folder, each on its own engine instance."""
    pairs = tmp_path / "xs.jsonl"
    pairs.write_text("".join((DATA / "xstest-dev.jsonl").read_text().splitlines(True)[:4]))
    out = tmp_path / "prefs.jsonl"
    args = ["label", str(pairs), "-o", str(out), "--engine", "hf", "--max-model-len", "2048",
            "-m", "smollm2-135m-instruct", "-m", embedded_model]  # fmt: skip
    done = subprocess.run(rlaif_cmd(*args), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Cohen's kappa judge vs judge-2" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["models"]["judge"]["kind"] == "embedded"
    assert manifest["models"]["judge-2"]["kind"] == "folder"
    assert manifest["fingerprint"]["judge-2_model_sha256"]
    for row in rows:
        p1, p2 = (j["p"] for j in row["judges"])
        assert p1 == pytest.approx(p2, abs=1e-4)  # the same weights judge alike
        assert row["p"] == pytest.approx(jury.combine([p1, p2]))
        assert len(row["judgements"]) == 2
    per_judge = manifest["diagnostics"]["jury"]["judges"]
    assert per_judge["judge"]["agreement"]["n"] == 4 and per_judge["judge-2"]["pairs"] == 4
    [k] = manifest["diagnostics"]["jury"]["kappa"]
    assert k["agreement"] == 1.0


@pytest.mark.slow
@pytest.mark.vllm
def test_a_jury_across_engines_from_a_file(tmp_path, home_with_model, embedded_model):
    """A judge file naming an engine per line: the embedded model on the stage's engine (hf)
    and the same weights on vLLM; both orders' probabilities from the two engines agree."""
    pytest.importorskip("vllm")
    from rlaif.stages import label

    listing = tmp_path / "jury.txt"
    listing.write_text(f"smollm2-135m-instruct\n{embedded_model} engine=vllm  # same weights\n")
    pairs = tmp_path / "xs.jsonl"
    pairs.write_text("".join((DATA / "xstest-dev.jsonl").read_text().splitlines(True)[:3]))
    cfg = label.LabelConfig(
        pairs=str(pairs),
        output=str(tmp_path / "prefs.jsonl"),
        judge_model=[str(listing)],
        # float32: the engines agree to 1e-5 there; bf16 scoring (auto on such CPUs) moves p
        # by up to ~0.06 differently on each engine (benchmarks/label_dtype.py)
        engine=EngineSettings(engine="hf", max_model_len=2048, dtype="float32"),
    )
    manifest = label.run(cfg)
    assert manifest["models"]["engine"] == "hf" and manifest["models"]["judge-2_engine"] == "vllm"
    assert manifest["fingerprint"]["role_engines"]["judge-2"]["engine"] == "vllm"
    rows = [json.loads(line) for line in Path(cfg.output).read_text().splitlines()]
    for row in rows:
        by_judge = {}
        for j in row["judgements"]:
            by_judge[j["judge"]] = (j["p_ab"], j["p_ba"])
        for hf_p, vllm_p in zip(by_judge["judge"], by_judge["judge-2"], strict=True):
            assert hf_p == pytest.approx(vllm_p, abs=0.02)
