"""Pointwise judging (`--method rating`): the arithmetic on scripted judges, then the real
embedded judge end to end (a 4-response row, `sample --one-row` feeding `label`, the RL reward)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd
from test_label import TableJudge

from rlaif.engines import EngineSettings
from rlaif.engines.base import OptionScores
from rlaif.judging import rating
from rlaif.judging.constitution import load_constitution, resolve_constitution_path
from rlaif.judging.diagnostics import judge_diagnostics
from rlaif.judging.judge import JudgingSettings, judge_chunk
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.pairs import PairRecord, parse_pair_records
from rlaif.plumbing.progress import TokenCounter
from rlaif.stages import eval_winrate as winrate
from rlaif.stages import label
from rlaif.training import rewards


def prior_heavy(digit: int) -> list[float]:
    """A small judge's habit: 90% on '5' whatever it reads, 10% on the digit it means."""
    probs = [0.0] * 9
    probs[4] += 0.9
    probs[digit - 1] += 0.1
    return [math.log(p) if p else -math.inf for p in probs]


class RatingTable:
    """A scripted judge for pure logic: the digit log-probs looked up by the rated response."""

    name = "rating-table"
    model_id = "rating-table"

    def __init__(self, logprobs_by_response: dict[str, list[float]]):
        self.table = logprobs_by_response
        self.calls = 0

    def score_options(self, chats, options, answer_prefix="", on_done=None):
        assert tuple(options) == tuple("123456789") and answer_prefix == "Rating: "
        self.calls += 1
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            # the rated response is the conversation's last "Assistant:" turn
            response = text.split("Assistant: ")[-1].split("\n\nThe assistant's last")[0]
            out.append(OptionScores(self.table[response], 7))
        return out


CONSTITUTION = load_constitution(resolve_constitution_path("harmless"))


def rate_rows(records, judge, **cfg):
    seed = cfg.pop("seed", 0)
    tokens = TokenCounter()
    rows = judge_chunk(records, judge, JudgingSettings(method="rating", **cfg), seed,
                       CONSTITUTION, tokens)  # fmt: skip
    return rows, tokens


def record(responses, reference=None, rid="r1"):
    return PairRecord(rid, [{"role": "user", "content": "Q?"}], tuple(responses), reference,
                      "responses", 1)  # fmt: skip


def test_batch_prior_removal_by_hand():
    # Raw expected ratings 4.6, 4.8, 5.4: the '5' habit hides the judgement. The batch mean is
    # 0.9 on '5' and 0.1/3 on each of 1, 3, 9; dividing leaves weights 1 ('5') and 3 (the meant
    # digit), so each score is (5 + 3d) / 4: 2, 3.5, 8.
    raw = [rating.digit_distribution(prior_heavy(d)) for d in (1, 3, 9)]
    assert [rating.expected_digit(r) for r in raw] == pytest.approx([4.6, 4.8, 5.4])
    calibrated = rating.remove_batch_prior(raw)
    assert [rating.expected_digit(c) for c in calibrated] == pytest.approx([2.0, 3.5, 8.0])
    # a batch of one has no prior to remove; a digit nobody gives stays at zero
    assert rating.remove_batch_prior(raw[:1]) == [pytest.approx(raw[0])]
    assert all(c[1] == 0.0 for c in calibrated)


def test_preference_scale_and_best_vs_worst():
    assert rating.preference(6.0, 5.0, tau=1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert rating.preference(5.0, 7.0, tau=2.0) == pytest.approx(1 / (1 + math.e))
    assert rating.preference(9.0, 1.0, tau=0.001) == 1.0  # no overflow
    assert rating.best_and_worst([3.0, 7.0, 7.0, 1.0], ["a", "b", "c", "d"]) == (1, 3)
    # the worst is never a copy of the best
    assert rating.best_and_worst([9.0, 1.0, 5.0], ["x", " x ", "y"]) == (0, 2)


def test_four_responses_give_the_best_versus_worst_pair():
    judge = RatingTable({t: prior_heavy(d) for t, d in (("ok", 5), ("bad", 1), ("good", 9),
                                                        ("meh", 3))})  # fmt: skip
    rows, tokens = rate_rows([record(("ok", "bad", "good", "meh"), reference=2)], judge)
    [row] = rows
    assert judge.calls == 1 and tokens.tokens["judge_prompt_tokens"] == 4 * 7  # n passes
    assert sorted(row["responses"]) == ["bad", "good"] and row["chosen"][0]["content"] == "good"
    assert row["picked"] == ([2, 1] if row["responses"][0] == "good" else [1, 2])
    assert row["responses"][row["reference"]] == "good"  # the reference follows the order
    # prior removal over the batch of four: weights 1 on '5', 4 (or 4/2 for the shared '5')
    mean = [0.0] * 9
    for d in (5, 1, 9, 3):
        for i, p in enumerate(rating.digit_distribution(prior_heavy(d))):
            mean[i] += p / 4
    expected = []
    for d in (5, 1, 9, 3):
        dist = rating.digit_distribution(prior_heavy(d))
        w = [p / q if q else 0 for p, q in zip(dist, mean, strict=True)]
        expected.append(sum((i + 1) * x for i, x in enumerate(w)) / sum(w))
    assert row["scores"] == pytest.approx(expected)
    [j] = row["judgements"]
    s_good, s_bad = expected[2], expected[1]
    assert row["p_chosen"] == pytest.approx(1 / (1 + math.exp(-(s_good - s_bad))))
    # no order exists: position figures are n/a, not a perfect score
    assert (j["p_ab"], j["p_ba"], j["consistent"], row["position_consistent"]) == (
        None, None, None, None)  # fmt: skip
    diag = judge_diagnostics(rows)
    assert diag["position_consistency"] is None and diag["first_position_rate"] is None
    assert diag["agreement"]["agree"] == 1


def test_tau_sets_the_confidence():
    judge = RatingTable({"a": prior_heavy(7), "b": prior_heavy(3)})
    sharp, _ = rate_rows([record(("a", "b"))], judge, tau=0.5)
    soft, _ = rate_rows([record(("a", "b"))], judge, tau=4.0)
    assert sharp[0]["p_chosen"] > soft[0]["p_chosen"] > 0.5
    with pytest.raises(UserError, match="--tau"):
        JudgingSettings(method="rating", tau=0)
    with pytest.raises(UserError, match="--cot"):
        JudgingSettings(method="rating", cot=True)


def test_more_than_two_responses_need_rating():
    rows = [(1, {"prompt": "Q?", "responses": ["a", "b", "c"], "preferred": 2})]
    with pytest.raises(UserError, match="only `rlaif label --method rating` takes them"):
        parse_pair_records("in.jsonl", rows)
    [r] = parse_pair_records("in.jsonl", rows, many=True)
    assert r.responses == ("a", "b", "c") and r.reference == 2 and not r.identical
    with pytest.raises(UserError, match=r"'preferred' must be 0..2"):
        parse_pair_records("in.jsonl", [(1, {"prompt": "Q?", "responses": ["a", "b", "c"],
                                              "preferred": 3})], many=True)  # fmt: skip


def test_label_cli_refuses_three_responses_without_rating(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text('{"prompt": "Q?", "responses": ["a", "b", "c"]}\n')
    done = subprocess.run(rlaif_cmd("label", str(src), "-o", str(tmp_path / "o.jsonl")),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {src}:1: 'responses' must be a list of exactly two")
    assert "--method rating" in line


def test_judge_reward_and_label_share_the_scorer():
    judge = RatingTable({"fine": prior_heavy(8), "rude": prior_heavy(2), "so-so": prior_heavy(5)})
    reward = object.__new__(rewards.JudgeReward)  # its engine scripted, not loaded
    reward.constitution, reward.seed, reward.engine, reward.calls = CONSTITUTION, 0, judge, 0
    got = reward(prompts=["Q?"] * 3, completions=["fine", "rude", "so-so"])
    rows, _ = rate_rows([record(("fine", "rude", "so-so"))], judge)
    assert got == pytest.approx([rating.to_unit(s) for s in rows[0]["scores"]])
    assert all(0 <= g <= 1 for g in got) and got[0] > got[2] > got[1]


def test_winrate_outcome_of_rating_rows_follows_p():
    rows = [{"identical": False, "method": "rating", "p": p, "judgements": []}
            for p in (0.7, 0.5, 0.2)]  # fmt: skip
    assert [winrate.outcome(r) for r in rows] == ["win", "tie", "loss"]


# --- the real embedded judge ---------------------------------------------------------------


def rating_label(tmp_path, pairs: Path, **overrides) -> tuple[list[dict], dict]:
    cfg = label.LabelConfig(
        pairs=str(pairs),
        output=str(tmp_path / "prefs.jsonl"),
        engine=EngineSettings(engine="hf", max_model_len=2048),
        judging=JudgingSettings(method="rating"),
        **overrides,
    )
    manifest = label.run(cfg)
    return [json.loads(line) for line in Path(cfg.output).read_text().splitlines()], manifest


def test_rating_labels_on_the_embedded_judge(tmp_path, home_with_model):
    xs, _ = read_jsonl(str(DATA / "xstest-dev.jsonl"))
    src = tmp_path / "rows.jsonl"
    rows = [r for _, r in xs[:3]]
    colours = ["Blue.", "Red, like a fire truck.", "I will not answer.", "Green."]
    four = {"id": "four", "prompt": "Name a colour.", "responses": colours}
    src.write_text("".join(json.dumps(r) + "\n" for r in [*rows, four]))
    out, manifest = rating_label(tmp_path, src)
    assert [r["id"] for r in out] == [r["id"] for r in rows] + ["four"]
    for row in out:
        assert row["method"] == "rating" and 0 < row["p"] < 1 and row["p_chosen"] >= 0.5
        assert all(1 <= s <= 9 for s in row["scores"])
        [j] = row["judgements"]
        assert j["p_ab"] is None and j["p_ba"] is None
        first, second = row["picked"]
        s = j["scores"]
        assert j["p"] == pytest.approx(1 / (1 + math.exp(-(s[0] - s[1]))))
        assert row["responses"] == [four["responses"][first], four["responses"][second]] or (
            row["id"] != "four"
        )
    four_row = out[-1]
    assert len(four_row["scores"]) == 4
    best, worst = max(four_row["scores"]), min(four_row["scores"])
    assert sorted(four_row["scores"][i] for i in four_row["picked"]) == [worst, best]
    assert out[0]["unsafe"] in (True, False)  # input fields carried
    diag = manifest["diagnostics"]
    assert diag["position_consistency"] is None and diag["agreement"]["n"] == 3
    # 3 pairs x 2 + 4 responses = 10 judge passes, one principle each
    assert manifest["tokens"]["judge_prompt_tokens"] > 10 * 50
    assert manifest["settings"]["judging"]["method"] == "rating"


def test_sample_four_in_one_row_feeds_rating_labels(tmp_path, home_with_model):
    from rlaif.stages import sample

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(DATA.joinpath("prompts.jsonl").read_text().splitlines(True)[:2]))
    samples = tmp_path / "samples.jsonl"
    sample.run(
        sample.SampleConfig(
            prompts=str(prompts),
            output=str(samples),
            n=4,
            one_row=True,
            max_new_tokens=12,
            engine=EngineSettings(engine="hf", max_model_len=2048),
        )
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["responses"]) == 4 for r in rows)
    out, manifest = rating_label(tmp_path, samples)
    assert len(out) + manifest["counts"]["skipped"] == 2
    assert all(len(r["scores"]) == 4 and len(set(r["picked"])) == 2 for r in out)


def test_judge_reward_on_the_embedded_judge(home_with_model):
    reward = rewards.JudgeReward(
        "smollm2-135m-instruct", "harmless", 0, EngineSettings(engine="hf", max_model_len=2048)
    )
    try:
        got = reward(
            prompts=["How do I bake bread?"] * 3,
            completions=["Mix flour, water, yeast; knead; bake.", "No.", "Bread is food."],
        )
    finally:
        reward.engine.close()
    assert len(got) == 3 and all(0 <= g <= 1 for g in got) and len(set(got)) == 3


def test_winrate_reads_every_verdict_from_the_policys_side():
    """The judging writes each pair in a seeded order; winrate must turn the rows whose first
    response is the baseline's round, whatever the method."""
    pairwise = TableJudge({"policy says": 0.9, "baseline says": 0.3})
    scored = RatingTable({"policy says": prior_heavy(8), "baseline says": prior_heavy(2)})
    records = [record(("policy says", "baseline says"), rid=f"r{i}") for i in range(12)]
    for judge, method in ((pairwise, "probabilities"), (scored, "rating")):
        settings = JudgingSettings(method=method)
        rows = judge_chunk(records, judge, settings, 0, CONSTITUTION, TokenCounter())
        assert {r["responses"][0] for r in rows} == {"policy says", "baseline says"}
        for row in rows:
            seen = winrate.policy_first(row, "policy says")
            assert seen["responses"][0] == "policy says" and seen["p"] > 0.5
            seen["outcome"] = winrate.outcome({**seen, "identical": False})
            assert seen["outcome"] == "win", seen


def test_sample_one_row_takes_any_count():
    from rlaif.stages.sample import SampleConfig, pairs_of

    assert SampleConfig(prompts="-", output="-", n=3, one_row=True).n == 3
    with pytest.raises(UserError, match="--n 3: an even number"):
        SampleConfig(prompts="-", output="-", n=3)
    row = {"id": "p", "prompt": [{"role": "user", "content": "Q?"}], "samples": ["a", "b", "c"]}
    assert pairs_of(row, one_row=True) == [
        {"id": "p", "prompt": row["prompt"], "responses": ["a", "b", "c"]}
    ]
