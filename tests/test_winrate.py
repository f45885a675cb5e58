"""`rlaif eval winrate`: its arithmetic on a fixed table, and a real run on the embedded model."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import DATA, perturbed_copy, rlaif_cmd

from rlaif.judging.diagnostics import wilson_interval
from rlaif.stages import eval_winrate as winrate


def judged(*orders: tuple[float, float], p: float) -> dict:
    return {
        "identical": False,
        "p": p,
        "judgements": [
            {"principle_id": f"pr{i}", "p_ab": ab, "p_ba": ba} for i, (ab, ba) in enumerate(orders)
        ],
    }


# p_ab: P(policy better) with the policy's answer shown first; p_ba: shown second.
TABLE = [
    judged((0.8, 0.7), p=0.75),  # both orders prefer the policy: win
    judged((0.6, 0.4), p=0.5),  # the verdict flips with the order: tie
    judged((0.2, 0.3), p=0.25),  # loss
    {"identical": True, "p": 0.5, "judgements": []},  # same answer: tie
    judged((0.9, 0.55), p=0.725),  # win
    judged((0.7, 0.4), (0.6, 0.7), p=0.6),  # averaged over principles: 0.65 / 0.55, win
]


def test_outcomes_and_report_on_a_fixed_table():
    rows = [{**r, "outcome": winrate.outcome(r)} for r in TABLE]
    assert [r["outcome"] for r in rows] == ["win", "tie", "loss", "tie", "win", "win"]
    report = winrate.winrate_report(rows)
    assert (report["win"], report["tie"], report["loss"]) == (3, 2, 1)
    assert report["win_rate"] == pytest.approx(4 / 6)
    # Wilson on 3 + 2/2 = 4 successes of 6: centre (4/6 + z²/12)/(1 + z²/6).
    z = 1.96
    centre = (4 / 6 + z * z / 12) / (1 + z * z / 6)
    half = z * math.sqrt((4 / 6) * (2 / 6) / 6 + z * z / 144) / (1 + z * z / 6)
    assert report["win_rate_ci95"] == pytest.approx([centre - half, centre + half])
    assert report["decisive"] == 4 and report["win_share_of_decisive"] == 0.75
    assert report["win_share_of_decisive_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert report["mean_p_policy"] == pytest.approx((0.75 + 0.5 + 0.25 + 0.5 + 0.725 + 0.6) / 6)
    text = winrate.format_report(report)
    assert "too few prompts (4/6)" in text  # a Wilson interval 0.6 wide: no number shown
    assert "win 3" in text and "tie 2" in text and "loss 1" in text


def test_rewards_are_reported_per_side():
    rows = [
        {**r, "outcome": winrate.outcome(r), "reward_policy": rp, "reward_baseline": rb}
        for r, rp, rb in zip(TABLE, [1, 2, 3, 4, 5, 6], [0, 2, 1, 4, 5, 3], strict=True)
    ]
    report = winrate.winrate_report(rows, {"reward_model": "rm"})
    assert report["reward"]["policy_mean"] == pytest.approx(3.5)
    assert report["reward"]["baseline_mean"] == pytest.approx(2.5)
    assert report["reward"]["difference_mean"] == pytest.approx(1.0)


def test_all_ties_warn_and_keep_a_wide_interval():
    rows = [{"identical": True, "p": 0.5, "judgements": [], "outcome": "tie"}] * 60
    report = winrate.winrate_report(rows)
    assert report["win_rate"] == 0.5
    low, high = report["win_rate_ci95"]
    assert low < 0.4 and high > 0.6  # no verdict, no certainty
    assert "WARNING" in winrate.format_report(report)


@pytest.mark.slow
def test_winrate_runs_on_the_embedded_model(tmp_path, home_with_model, embedded_model):
    policy = perturbed_copy(embedded_model, tmp_path / "policy")
    out = tmp_path / "winrate.jsonl"
    done = subprocess.run(
        rlaif_cmd(
            "eval",
            "winrate",
            str(DATA / "prompts.jsonl"),
            "--policy",
            str(policy),
            "-o",
            str(out),
            "--engine",
            "hf",
            "--max-new-tokens",
            "24",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "win rate of the policy against the baseline over 6 prompts" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["outcome"] in winrate.OUTCOMES for r in rows)
    assert any(r["policy_response"] != r["baseline_response"] for r in rows)
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    report = manifest["report"]
    assert report["win"] + report["tie"] + report["loss"] == 6
    assert manifest["models"]["policy"]["spec"] == str(policy)
    assert not out.with_name(out.name + ".work").exists()
