"""Judge diagnostics on a fixed hand-made table of `rlaif label` rows; no model.

Every expected figure is worked out by hand in the comments, so a change in the arithmetic
(or in what counts as a verdict) fails here with the number that moved.
"""

from __future__ import annotations

import json

import pytest

from rlaif.judging.diagnostics import format_diagnostics, judge_diagnostics
from rlaif.plumbing.stats import (
    cohen_kappa,
    format_rate,
    pearson_interval,
    rate,
    too_few,
    wilson_interval,
)


def j(principle_id: str, p_ab: float | None, p_ba: float | None, abstained: bool = False):
    return {"principle_id": principle_id, "p_ab": p_ab, "p_ba": p_ba, "abstained": abstained}


# Two principles, six pairs. Per judgement: consistent? and which orders picked the FIRST slot
# (ab: p_ab > 0.5; ba: p_ba < 0.5, since responses[1] is shown first there).
#                                          len diff  ref   p
TABLE = [
    # helpful .9/.7 consistent, first: ab   | harmless .8/.6 consistent, first: ab
    {
        "responses": ["aaaa", "bb"],  #     +2      0   .75
        "p": 0.75,
        "reference": 0,
        "judgements": [j("helpful", 0.9, 0.7), j("harmless", 0.8, 0.6)],
    },
    # helpful .2/.4 consistent, first: ba   | harmless .3/.1 consistent, first: ba
    {
        "responses": ["a", "bbb"],  #       -2      1   .25
        "p": 0.25,
        "reference": 1,
        "judgements": [j("helpful", 0.2, 0.4), j("harmless", 0.3, 0.1)],
    },
    # helpful .9/.3 INconsistent (said "A" twice), first: ab, ba
    # harmless .7/.5 INconsistent (exact 0.5), first: ab (0.5 picks neither slot)
    {
        "responses": ["xx", "yy"],  #        0      0   .6
        "p": 0.6,
        "reference": 0,
        "judgements": [j("helpful", 0.9, 0.3), j("harmless", 0.7, 0.5)],
    },
    # helpful .8/.6 consistent, first: ab   | harmless abstained in order ba: .6/None,
    # left out of consistency, but its ab verdict (.6, first) still counts
    {
        "responses": ["long response", "short"],  # +8   1   .65 (judge disagrees)
        "p": 0.65,
        "reference": 1,
        "judgements": [j("helpful", 0.8, 0.6), j("harmless", 0.6, None, abstained=True)],
    },
    # both .5/.5: inconsistent, no first picks; p = .5 is a tie against the reference
    {
        "responses": ["s", "t"],  #          0      0   .5
        "p": 0.5,
        "reference": 0,
        "judgements": [j("helpful", 0.5, 0.5), j("harmless", 0.5, 0.5)],
    },
    # helpful .1/.3 consistent, first: ba   | harmless .4/.2 consistent, first: ba
    # no "reference" key at all: unknown
    {
        "responses": ["abc", "abcdef"],  #  -3      -   .25
        "p": 0.25,
        "judgements": [j("helpful", 0.1, 0.3), j("harmless", 0.4, 0.2)],
    },
]


@pytest.fixture
def diag() -> dict:
    return judge_diagnostics(TABLE)


def approx(x: float):
    return pytest.approx(x, abs=1e-4)


def test_counts(diag):
    assert diag["pairs"] == 6
    assert diag["judgements"] == 12
    assert diag["abstentions"] == 1


def test_position_consistency(diag):
    # Paired judgements: 12 minus the abstained one = 11. Consistent: rows 1, 2, 6 (2 each)
    # and row 4 helpful = 7. 7/11.
    assert diag["position_consistency"] == approx(7 / 11)  # 0.6364


def test_first_position_rate(diag):
    # Verdicts: 24 orders minus row 4's null = 23. First picks by row: 2, 2, 3, 2, 0, 2 = 11.
    assert diag["first_position_rate"] == approx(11 / 23)  # 0.4783


def test_label_balance_and_confidence(diag):
    # p > .5 in rows 1, 3, 4: 3/6.
    assert diag["label_balance"] == 0.5
    # |p - .5| = .25, .25, .1, .15, 0, .25 -> 1.0 / 6.
    assert diag["mean_confidence"] == approx(1 / 6)


def test_length_correlation_on_table(diag):
    # p = [.75, .25, .6, .65, .5, .25] (mean .5), diff = [2, -2, 0, 8, 0, -3] (mean 5/6).
    # Σ dp·dd = 2.95, Σ dp² = .22, Σ dd² = 76.8333 -> r = 2.95 / √16.9033 = 0.7175.
    assert diag["length_correlation"] == approx(0.7175)


def test_agreement(diag):
    # References in rows 1-5 (row 6 has none): n = 5. Choices: row 1 -> 0 ✓, row 2 -> 1 ✓,
    # row 3 -> 0 ✓, row 4 -> 0 ✗ (ref 1), row 5 tie. agree 3, ties 1, rate .6.
    # Wilson(3, 5): centre (.6 + .38416)/1.76832 = .55655, half 1.96·√.086416/1.76832 = .32584.
    a = diag["agreement"]
    assert (a["n"], a["agree"], a["ties"]) == (5, 3, 1)
    assert a["rate"] == approx(0.6)
    assert a["ci95"] == [approx(0.2307), approx(0.8824)]
    assert a["too_few"]  # 0.65 wide: more than half of [0, 1]


def test_baselines_on_the_same_pairs(diag):
    # The 5 rows with a reference (refs 0, 1, 0, 1, 0; lengths 4/2, 1/3, 2/2, 13/5, 1/1).
    # first: right on refs 0 -> 3/5. second: 2/5. shorter picks 1, 0, -, 1, - -> right only on
    # row 4 -> 1/5 with 2 ties (equal lengths). longer picks 0, 1, -, 0, - -> rows 1, 2 -> 2/5.
    b = diag["baselines"]
    assert [(b[k]["agree"], b[k]["n"], b[k]["ties"]) for k in b] == [
        (3, 5, 0),
        (2, 5, 0),
        (1, 5, 2),
        (2, 5, 2),
    ]
    assert list(b) == ["prefer_first", "prefer_second", "prefer_shorter", "prefer_longer"]


def test_calibration_by_hand(diag):
    # Confidence max(p, 1-p) and right? of the 5 referenced rows: .75 ✓, .75 ✓, .6 ✓, .65 ✗,
    # .5 tie (half right). Bins of width .05 over [.5, 1]: [.5] acc .5 -> gap 0; [.6] acc 1 ->
    # .4; [.65] acc 0 -> .65; [.75, .75] acc 1 -> .25 each. ECE = (0 + .4 + .65 + .5) / 5 = .31.
    c = diag["calibration"]
    assert c["n_bins"] == 10 and c["pairs"] == 5
    assert c["ece"] == approx(0.31)
    counts = {round(b["low"], 2): b["count"] for b in c["bins"] if b["count"]}
    assert counts == {0.5: 1, 0.6: 1, 0.65: 1, 0.75: 2}  # 0.6 opens its bin, not the one below
    lo, hi = c["ci95"]
    assert lo <= c["ece"] <= hi


def test_calibration_of_a_calibrated_and_an_overconfident_judge():
    # Says .8 and is right 8 times in 10: ECE 0. Says .95 and is right 5 times in 10: .45.
    calibrated = [pair(0.8, 0.8, reference=0 if i < 8 else 1) for i in range(10)]
    assert judge_diagnostics(calibrated)["calibration"]["ece"] == approx(0.0)
    overconfident = [pair(0.95, 0.95, reference=i % 2) for i in range(10)]
    assert judge_diagnostics(overconfident)["calibration"]["ece"] == approx(0.45)
    # Fewer bins put .8 and .95 together: 20 pairs at mean confidence .875, 13/20 right.
    both = judge_diagnostics(calibrated + overconfident, n_bins=2)["calibration"]
    assert both["ece"] == approx(0.875 - 0.65)


def test_group_by(diag):
    rows = [{**r, "kind": "long" if len(r["responses"][0]) > 1 else "short"} for r in TABLE]
    del rows[5]["kind"]  # a row without the field is grouped as "(missing)"
    g = judge_diagnostics(rows, group_by="kind")["groups"]
    assert g["field"] == "kind" and list(g["by_value"]) == ["(missing)", "long", "short"]
    # long: rows 1, 3, 4 -> agree on 1 and 3 -> 2/3; short: rows 2, 5 -> row 2 agrees, 5 ties.
    long_, short = g["by_value"]["long"], g["by_value"]["short"]
    assert (long_["pairs"], long_["agreement"]["agree"], long_["agreement"]["n"]) == (3, 2, 3)
    assert (short["agreement"]["agree"], short["agreement"]["ties"]) == (1, 1)
    # Consistency per group: long has rows 1 (2/2), 3 (0/2), 4 (1/1 paired) -> 3/5.
    assert (long_["consistent_judgements"], long_["paired_judgements"]) == (3, 5)
    assert g["by_value"]["(missing)"]["agreement"] is None
    text = format_diagnostics(judge_diagnostics(rows, group_by="kind"))
    assert "by kind" in text and "too few pairs (2/3)" in text


def test_group_values_are_named_as_json():
    rows = [{**pair(0.9, 0.8), "unsafe": True}, {**pair(0.2, 0.1, 1), "unsafe": False}]
    assert list(judge_diagnostics(rows, group_by="unsafe")["groups"]["by_value"]) == [
        "false",
        "true",
    ]


def test_per_principle(diag):
    pp = diag["per_principle"]
    assert list(pp) == ["helpful", "harmless"]
    # helpful: 6 paired, consistent in rows 1, 2, 4, 6 -> 4/6. First picks over 12 orders:
    # 1 + 1 + 2 + 1 + 0 + 1 = 6 -> .5. Means .8, .3, .6, .7, .5, .2 -> 3.1/6.
    assert pp["helpful"] == {
        "judgements": 6,
        "position_consistency": approx(4 / 6),
        "position_consistency_ci95": list(wilson_interval(4, 6)),
        "consistent_judgements": 4,
        "paired_judgements": 6,
        "first_position_rate": approx(0.5),
        "mean_p_first": approx(3.1 / 6),  # 0.5167
    }
    # harmless: 5 paired (row 4 abstained), consistent in rows 1, 2, 6 -> 3/5. First picks over
    # 11 orders: rows 1, 2, 3, 4, 6 -> 5/11. Means of paired .7, .2, .6, .5, .3 -> 2.3/5.
    assert pp["harmless"] == {
        "judgements": 6,
        "position_consistency": approx(0.6),
        "position_consistency_ci95": list(wilson_interval(3, 5)),
        "consistent_judgements": 3,
        "paired_judgements": 5,
        "first_position_rate": approx(5 / 11),  # 0.4545
        "mean_p_first": approx(0.46),
    }


def test_table_warns_only_about_agreement(diag):
    # Consistency .64, first rate .48 and confidence .17 are fine; 5 reference pairs are too
    # few to say whether the judge agrees with them, and that is what it says.
    assert diag["warnings"] == [
        "too few reference pairs (3/5 agree) to tell whether the judge agrees with the"
        " references; judge more of them."
    ]


def test_result_is_json_serialisable(diag):
    assert json.loads(json.dumps(diag))["per_principle"]["helpful"]["judgements"] == 6


# --- Wilson interval -------------------------------------------------------------------------


def test_wilson_known_case():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (approx(0.4902), approx(0.9433))


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(6, 6)  # all successes: the upper bound is 1, the lower is not
    assert lo == approx(0.6097) and hi == approx(1.0)
    lo, hi = wilson_interval(0, 6)
    assert lo == 0.0 and hi == approx(0.3903)


# --- constructed judges ----------------------------------------------------------------------


def pair(p_ab: float, p_ba: float, reference: int | None = 0, lengths=(5, 5)) -> dict:
    return {
        "responses": ["x" * lengths[0], "y" * lengths[1]],
        "p": (p_ab + p_ba) / 2,
        "reference": reference,
        "judgements": [j("helpful", p_ab, p_ba)],
    }


def test_always_a_judge_warns():
    # Says "A" with .9 in both orders: P(responses[0]) is .9 in ab and .1 in ba, so every
    # judgement is inconsistent, every verdict picks the first slot, and every p is .5.
    d = judge_diagnostics([pair(0.9, 0.1) for _ in range(6)])
    assert d["position_consistency"] == 0.0
    assert d["first_position_rate"] == 1.0
    assert d["mean_confidence"] == 0.0
    assert d["agreement"]["ties"] == 6 and d["agreement"]["agree"] == 0
    assert d["warnings"] == [
        "the judge picks a position, not a response: it chose the same response in both "
        "orders in only 0.0% (0/6; 95% CI 0.0–39.0%) of judgements.",
        "the judge chose the first option in 100.0% (12/12; 95% CI 75.7–100.0%) of verdicts:"
        " its labels mostly reflect position bias.",
        "agreement with reference labels is not above chance: 0.0% (0/6; 95% CI 0.0–39.0%).",
        "'prefer first' agrees with the references as often as the judge (100.0% (6/6; 95% CI"
        " 61.0–100.0%) against 0.0% (0/6; 95% CI 0.0–39.0%)): the judge may be reading length"
        " or position, not content.",
        "labels are close to 0.5: the mean |p − 0.5| is 0.000, so they carry little "
        "preference signal.",
    ]


def test_always_b_judge_warns_about_the_second_slot():
    d = judge_diagnostics([pair(0.1, 0.9, reference=None) for _ in range(3)])
    assert d["first_position_rate"] == 0.0
    # 0 of 3 paired judgements consistent is too few to warn about (Wilson 0–56%)...
    assert not any("picks a position" in w for w in d["warnings"])
    # ...but 6 of 6 verdicts on the second slot is not (Wilson 61–100%).
    assert any(
        w.startswith("the judge chose the second option in 100.0% (6/6;") for w in d["warnings"]
    )


def test_good_judge_does_not_warn():
    # Consistent and confident, alternating which response wins, agreeing with all 6 refs:
    # first rate 6/12 = .5, Wilson(6, 6) lower bound .61 > .5.
    # Lengths say nothing: the longer response is responses[0] in every pair, preferred half
    # the time, so no baseline does as well as the judge.
    rows = [pair(0.9, 0.8, 0, lengths=(5, 3)), pair(0.2, 0.1, 1, lengths=(5, 3))] * 3
    d = judge_diagnostics(rows)
    assert d["position_consistency"] == 1.0
    assert d["first_position_rate"] == 0.5
    assert d["agreement"]["rate"] == 1.0
    assert d["warnings"] == []


def test_a_judge_no_better_than_a_length_rule_is_named():
    # Agrees 10/12 (Wilson 55-95%: above chance), but always with the longer response, and
    # so does "prefer longer".
    rows = [pair(0.9, 0.8, 0, lengths=(9, 3)), pair(0.2, 0.1, 1, lengths=(3, 9))] * 5
    rows += [pair(0.9, 0.8, 1, lengths=(9, 3))] * 2
    d = judge_diagnostics(rows)
    assert d["agreement"]["agree"] == 10 and d["agreement"]["ci95"][0] > 0.5
    assert d["baselines"]["prefer_longer"]["agree"] == 10
    [warning] = d["warnings"]
    assert warning.startswith("'prefer longer' agrees with the references as often as the judge")


def test_length_correlation_sign():
    # p rises with responses[0]'s extra length: verbosity bias, r > 0; reversed, r < 0.
    longer_wins = [pair(0.6, 0.6, lengths=(10, 5)), pair(0.5, 0.5), pair(0.3, 0.3, lengths=(2, 9))]
    assert judge_diagnostics(longer_wins)["length_correlation"] > 0.9
    shorter_wins = [pair(0.3, 0.3, lengths=(10, 5)), pair(0.5, 0.5), pair(0.7, 0.7, lengths=(2, 9))]
    assert judge_diagnostics(shorter_wins)["length_correlation"] < -0.9


def test_length_correlation_undefined():
    assert judge_diagnostics([pair(0.9, 0.8), pair(0.2, 0.1)])["length_correlation"] is None
    same_lengths = [pair(0.9, 0.8), pair(0.2, 0.1), pair(0.6, 0.7)]  # diff is always 0
    assert judge_diagnostics(same_lengths)["length_correlation"] is None


# --- nulls and empty input -------------------------------------------------------------------


def test_no_references_means_no_agreement():
    d = judge_diagnostics([pair(0.9, 0.8, reference=None), pair(0.2, 0.1, reference=None)])
    assert d["agreement"] is None
    assert not any("reference" in w for w in d["warnings"])


def test_single_order_judgement():
    # Only order ab judged (not flagged abstained): no consistency to measure, but one verdict.
    row = {"responses": ["a", "b"], "p": 0.8, "judgements": [j("helpful", 0.8, None)]}
    d = judge_diagnostics([row])
    assert d["position_consistency"] is None
    assert d["first_position_rate"] == 1.0
    assert d["per_principle"]["helpful"]["mean_p_first"] is None


def test_abstained_judgement_is_not_compared_across_orders():
    # Flagged abstained although both p's are present: left out of consistency (and mean p),
    # so only the consistent judgement counts -> 1/1; it is still counted as an abstention.
    row = {
        "responses": ["a", "b"],
        "p": 0.7,
        "judgements": [j("helpful", 0.9, 0.8), j("harmless", 0.9, 0.1, abstained=True)],
    }
    d = judge_diagnostics([row])
    assert d["position_consistency"] == 1.0
    assert d["abstentions"] == 1
    assert d["per_principle"]["harmless"]["position_consistency"] is None


def test_empty_rows():
    d = judge_diagnostics([])
    assert d["pairs"] == 0 and d["judgements"] == 0
    for key in (
        "position_consistency",
        "first_position_rate",
        "mean_confidence",
        "label_balance",
        "length_correlation",
        "agreement",
        "baselines",
        "calibration",
    ):
        assert d[key] is None, key
    assert d["per_principle"] == {} and d["warnings"] == []
    assert "n/a" in format_diagnostics(d)


# --- the report ------------------------------------------------------------------------------


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the report line that starts with `first_cell` (spacing is not asserted)."""
    (line,) = [line for line in text.splitlines() if line.startswith(first_cell)]
    return line.split()


def card_lines(text: str) -> dict[str, str]:
    """The card's `name  value` lines as a mapping (padding is not asserted)."""
    pairs = [line.strip().split("  ", 1) for line in text.splitlines()[1:] if line.strip()]
    return {p[0]: p[1].strip() for p in pairs if len(p) == 2}


def test_format_contains_the_figures(diag):
    text = format_diagnostics(diag)
    assert text.startswith("Judge card\n")
    lines = card_lines(text)
    assert lines["position consistency"] == "63.6% (7/11; 95% CI 35.4–84.8%)"
    assert lines["first-position rate"] == "47.8% (11/23; 95% CI 29.2–67.0%)"
    assert lines["label balance (p > 0.5)"] == "50.0% of 6 pairs"
    assert lines["mean confidence |p-0.5|"] == "0.167 of 6 pairs"
    assert lines["length correlation"] == "too few pairs (6)"  # Fisher's interval on 6 points
    assert lines["agreement with references"] == "too few pairs (3/5), 1 ties"
    assert lines["baseline: prefer shorter"] == "too few pairs (1/5)"
    assert lines["calibration (ECE, 10 bins)"].startswith("0.310 (5 pairs; 95% CI")
    # The per-principle table: one row per principle, in the order they were first seen.
    assert table_row(text, "principle") == [
        "principle",
        "judgements",
        "consistency",
        "first-position",
        "mean",
        "p(first)",
    ]
    assert table_row(text, "helpful") == "helpful 6 too few judgements (4/6) 50.0% 0.517".split()
    assert table_row(text, "harmless")[-2:] == ["45.5%", "0.460"]
    assert text.count("WARNING: ") == 1
    assert "WARNING: too few reference pairs" in text


def test_format_prints_na_for_nulls():
    row = {"responses": ["a", "b"], "p": 0.8, "judgements": [j("helpful", 0.8, None)]}
    text = format_diagnostics(judge_diagnostics([row]))
    assert card_lines(text)["position consistency"] == "n/a (no judgements)"
    assert card_lines(text)["agreement with references"] == "n/a (no reference labels)"
    assert table_row(text, "helpful") == "helpful 1 n/a (no judgements) 100.0% n/a".split()


def test_format_reads_a_manifest_written_before_the_counts():
    # Older label manifests kept the rates alone: the report still shows them.
    old = {
        "pairs": 2,
        "judgements": 2,
        "abstentions": 0,
        "position_consistency": 0.5,
        "first_position_rate": 0.5,
        "mean_confidence": 0.2,
        "label_balance": 0.5,
        "length_correlation": None,
        "agreement": None,
        "per_principle": {},
        "warnings": [],
    }
    assert card_lines(format_diagnostics(old))["position consistency"] == "50.0%"


# --- rlaif.plumbing.stats ----------------------------------------------------------------------


def test_too_few_pairs_rule():
    # Wilson width at a 50% rate: 0.509 with 11 pairs, 0.492 with 12; at 0/n, 0.56 with 3.
    assert format_rate(5.5, 11) == "too few pairs (5.5/11)"
    assert format_rate(6, 12) == "50.0% (6/12; 95% CI 25.4–74.6%)"
    assert format_rate(0, 3) == "too few pairs (0/3)"
    assert format_rate(0, 4).startswith("0.0% (0/4; 95% CI 0.0–49.0%)")
    # What `make demo` printed as "held-out accuracy 0.0%": 0 of 2 pairs.
    assert format_rate(0, 2) == "too few pairs (0/2)"
    assert format_rate(0, 0, "judgements") == "n/a (no judgements)"
    assert rate(6, 12)["too_few"] is False and rate(1, 2)["too_few"] is True
    assert too_few((-0.9, 0.2), span=2.0) is True and too_few((0.1, 0.9), span=2.0) is False


def test_pearson_interval_by_hand():
    # r = .5 on 28 points: atanh .5493 ± 1.96/5 -> tanh(.1573), tanh(.9413) = .1560, .7358.
    lo, hi = pearson_interval(0.5, 28)
    assert (lo, hi) == (approx(0.1560), approx(0.7358))
    assert pearson_interval(0.5, 3) is None


def test_cohen_kappa_by_hand():
    # Observed agreement 3/4; rates of True .5 and .25: chance .5·.25 + .5·.75 = .5.
    # kappa = (.75 - .5) / (1 - .5) = .5.
    assert cohen_kappa([True, True, False, False], [True, False, False, False]) == approx(0.5)
    assert cohen_kappa([True, False, True], [True, False, True]) == 1.0
    assert cohen_kappa([True, False], [False, True]) == -1.0  # always disagreeing
    assert cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa([True], [True, False])


def test_kappa_interval_by_hand():
    from rlaif.plumbing.stats import cohen_kappa, kappa_interval

    a = [True] * 30 + [False] * 30
    b = [True] * 25 + [False] * 5 + [False] * 25 + [True] * 5
    # p_o = 50/60, p_e = 0.5, kappa = 2/3; se = sqrt(p_o (1 - p_o) / 60) / 0.5 = 0.0962
    assert cohen_kappa(a, b) == pytest.approx(2 / 3)
    low, high = kappa_interval(a, b)
    assert (low, high) == (
        pytest.approx(2 / 3 - 1.96 * 0.09623, abs=1e-4),
        pytest.approx(2 / 3 + 1.96 * 0.09623, abs=1e-4),
    )
    assert kappa_interval([True, True], [True, True]) is None
