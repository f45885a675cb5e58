"""Judge diagnostics on a fixed hand-made table of `rlaif label` rows; no model.

Every expected figure is worked out by hand in the comments, so a change in the arithmetic
(or in what counts as a verdict) fails here with the number that moved.
"""

from __future__ import annotations

import json

import pytest

from rlaif.diagnostics import format_diagnostics, judge_diagnostics, wilson_interval


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


def test_per_principle(diag):
    pp = diag["per_principle"]
    assert list(pp) == ["helpful", "harmless"]
    # helpful: 6 paired, consistent in rows 1, 2, 4, 6 -> 4/6. First picks over 12 orders:
    # 1 + 1 + 2 + 1 + 0 + 1 = 6 -> .5. Means .8, .3, .6, .7, .5, .2 -> 3.1/6.
    assert pp["helpful"] == {
        "judgements": 6,
        "position_consistency": approx(4 / 6),
        "first_position_rate": approx(0.5),
        "mean_p_first": approx(3.1 / 6),  # 0.5167
    }
    # harmless: 5 paired (row 4 abstained), consistent in rows 1, 2, 6 -> 3/5. First picks over
    # 11 orders: rows 1, 2, 3, 4, 6 -> 5/11. Means of paired .7, .2, .6, .5, .3 -> 2.3/5.
    assert pp["harmless"] == {
        "judgements": 6,
        "position_consistency": approx(0.6),
        "first_position_rate": approx(5 / 11),  # 0.4545
        "mean_p_first": approx(0.46),
    }


def test_table_warns_only_about_agreement(diag):
    # Consistency .64, first rate .48 and confidence .17 are fine; the agreement CI's lower
    # bound .23 is not above chance.
    assert diag["warnings"] == [
        "agreement with reference labels is not above chance: 3/5 = 60% (95% CI 23%–88%)."
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
        "orders in only 0% of judgements.",
        "the judge chose the first option in 100% of verdicts: its labels mostly reflect "
        "position bias.",
        "agreement with reference labels is not above chance: 0/6 = 0% (95% CI 0%–39%).",
        "labels are close to 0.5: the mean |p − 0.5| is 0.000, so they carry little "
        "preference signal.",
    ]


def test_always_b_judge_warns_about_the_second_slot():
    d = judge_diagnostics([pair(0.1, 0.9, reference=None) for _ in range(3)])
    assert d["first_position_rate"] == 0.0
    assert "the judge chose the second option in 100% of verdicts" in d["warnings"][1]


def test_good_judge_does_not_warn():
    # Consistent and confident, alternating which response wins, agreeing with all 6 refs:
    # first rate 6/12 = .5, Wilson(6, 6) lower bound .61 > .5.
    rows = [pair(0.9, 0.8, 0), pair(0.2, 0.1, 1)] * 3
    d = judge_diagnostics(rows)
    assert d["position_consistency"] == 1.0
    assert d["first_position_rate"] == 0.5
    assert d["agreement"]["rate"] == 1.0
    assert d["warnings"] == []


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
    ):
        assert d[key] is None, key
    assert d["per_principle"] == {} and d["warnings"] == []
    assert "n/a" in format_diagnostics(d)


# --- the report ------------------------------------------------------------------------------


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the report line that starts with `first_cell` (spacing is not asserted)."""
    (line,) = [line for line in text.splitlines() if line.startswith(first_cell)]
    return line.split()


def test_format_contains_the_figures(diag):
    text = format_diagnostics(diag)
    assert "position consistency     63.6%" in text
    assert "first-position rate      47.8%" in text
    assert "label balance (p > 0.5)  50.0%" in text
    assert "length correlation       +0.718" in text
    assert "3/5 = 60.0% (95% CI 23.1%–88.2%), 1 ties" in text
    # The per-principle table: one row per principle, in the order they were first seen.
    assert table_row(text, "principle") == [
        "principle",
        "judgements",
        "consistency",
        "first-position",
        "mean",
        "p(first)",
    ]
    assert table_row(text, "helpful") == ["helpful", "6", "66.7%", "50.0%", "0.517"]
    assert table_row(text, "harmless") == ["harmless", "6", "60.0%", "45.5%", "0.460"]
    assert text.count("WARNING: ") == 1
    assert "WARNING: agreement with reference labels is not above chance" in text


def test_format_prints_na_for_nulls():
    row = {"responses": ["a", "b"], "p": 0.8, "judgements": [j("helpful", 0.8, None)]}
    text = format_diagnostics(judge_diagnostics([row]))
    assert "position consistency     n/a" in text
    assert "agreement                n/a (no reference labels)" in text
    assert table_row(text, "helpful") == ["helpful", "1", "n/a", "100.0%", "n/a"]
