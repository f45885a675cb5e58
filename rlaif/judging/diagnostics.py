"""The judge card of `rlaif label` output: is the judge reading the responses or the layout?

Every pair is judged in both orders (responses[0] as option A, then as option B), so each
judgement carries p_ab and p_ba, both P(responses[0] preferred). A judge that reads the
responses gives the same answer in both orders; one that favours a slot (nearly always "A")
gives opposite answers, and averaging the two orders then pulls its labels towards 0.5 — soft
labels that look cautious but carry no signal. These figures make that visible, together with
verbosity bias (preferring the longer response) and agreement with reference labels, set beside
trivial rules on the same pairs (prefer the first, second, shorter, longer response), with
calibration and, on request, per group. Every rate keeps its count and 95% interval.

Standard library (numpy for the ECE's bootstrap), so the report runs wherever the labels are,
without a model.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from rlaif.plumbing.stats import (
    bootstrap_ece_interval,
    calibration_bins,
    expected_calibration_error,
    format_rate,
    pearson_interval,
    rate,
    too_few,
    wilson_interval,  # noqa: F401  (re-exported: winrate and older callers import it from here)
)

# Thresholds for the warnings. They flag judges whose labels are mostly noise; they are not
# quality bars — a judge can pass all of them and still be wrong in a consistent way.
MIN_CONSISTENCY = 0.5  # below this, order flips the verdict more often than not
MAX_POSITION_SKEW = 0.8  # a fair judge picks each slot about half the time
MIN_CONFIDENCE = 0.05  # mean |p − 0.5| below this: labels barely distinguish the pair
CALIBRATION_BINS = 10  # equal-width bins of confidence over [0.5, 1]: 0.05 wide
CARD_KIND = "rlaif judge card"  # marks the JSON cards rlaif writes: a rerun may replace them


@dataclass(frozen=True)
class Judgement:
    """One principle's verdict on one pair; both p's are P(responses[0] preferred)."""

    principle_id: str
    p_ab: float | None  # responses[0] shown as option A
    p_ba: float | None  # responses[0] shown as option B
    abstained: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> Judgement:
        return cls(d["principle_id"], d.get("p_ab"), d.get("p_ba"), bool(d.get("abstained")))

    @property
    def paired(self) -> bool:
        """Both orders judged and nothing abstained: the only case where orders can be compared."""
        return self.p_ab is not None and self.p_ba is not None and not self.abstained

    def consistent(self) -> bool:
        """Same response picked in both orders. An exact 0.5 picks nothing, so it can't agree."""
        assert self.p_ab is not None and self.p_ba is not None
        if self.p_ab == 0.5 or self.p_ba == 0.5:
            return False
        return (self.p_ab > 0.5) == (self.p_ba > 0.5)

    def first_position_picks(self) -> list[bool]:
        """For each order that was judged, whether the judge chose the option shown first.

        In order ab the first option is responses[0] (picked iff p_ab > 0.5); in order ba it is
        responses[1] (picked iff p_ba < 0.5). An exact 0.5 chooses neither slot. An abstention
        leaves that order's p null, so the other order still counts as a verdict.
        """
        picks = []
        if self.p_ab is not None:
            picks.append(self.p_ab > 0.5)
        if self.p_ba is not None:
            picks.append(self.p_ba < 0.5)
        return picks


# --- small helpers shared by the overall, per-principle and per-group figures -----------------


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def position_consistency(judgements: list[Judgement]) -> float | None:
    paired = [j for j in judgements if j.paired]
    return _rate(sum(j.consistent() for j in paired), len(paired))


def first_position_rate(judgements: list[Judgement]) -> float | None:
    picks = [pick for j in judgements for pick in j.first_position_picks()]
    return _rate(sum(picks), len(picks))


def mean_p_first(judgements: list[Judgement]) -> float | None:
    return _mean((j.p_ab + j.p_ba) / 2 for j in judgements if j.paired)


def _consistency_counts(judgements: list[Judgement]) -> dict:
    """Position consistency with its count and interval, as the manifest keeps it."""
    paired = [j for j in judgements if j.paired]
    k = sum(j.consistent() for j in paired)
    return {
        "position_consistency": _rate(k, len(paired)),
        "position_consistency_ci95": list(wilson_interval(k, len(paired))),
        "consistent_judgements": k,
        "paired_judgements": len(paired),
    }


def _first_position_counts(judgements: list[Judgement]) -> dict:
    picks = [pick for j in judgements for pick in j.first_position_picks()]
    return {
        "first_position_rate": _rate(sum(picks), len(picks)),
        "first_position_ci95": list(wilson_interval(sum(picks), len(picks))),
        "first_position_picks": sum(picks),
        "verdicts": len(picks),
    }


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson r, or None with fewer than 3 points (2 always correlate ±1) or a constant input."""
    if len(xs) < 3:
        return None
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # zero variance
        return None


# --- choices: the judge's, and the trivial rules it is measured against ------------------------


def judge_choice(row: dict) -> int | None:
    """The index of the response the judge preferred; None for a tie (p exactly 0.5)."""
    return None if row["p"] == 0.5 else (0 if row["p"] > 0.5 else 1)


def _by_length(row: dict, longer: bool) -> int | None:
    a, b = (len(r) for r in row["responses"])  # characters: what a reader sees, any tokenizer
    if a == b:
        return None
    return 0 if (a > b) == longer else 1


# "first"/"second" are responses[0]/[1] as stored: `rlaif label` stores each pair in a seeded
# random order (`judge.presented_order`), so on its output both sit near 50%; on pairs kept in
# chosen-first order, "prefer first" would agree every time.
BASELINES = {
    "prefer_first": lambda row: 0,
    "prefer_second": lambda row: 1,
    "prefer_shorter": lambda row: _by_length(row, longer=False),
    "prefer_longer": lambda row: _by_length(row, longer=True),
}


def _agreement(rows: list[dict], choose=judge_choice) -> dict | None:
    """How often `choose` picks the reference's preferred response; a non-choice (a tie, or two
    responses of equal length) counts as a disagreement and is counted in `ties`."""
    known = [r for r in rows if r.get("reference") is not None]
    if not known:
        return None
    choices = [choose(r) for r in known]
    agree = sum(c is not None and c == r["reference"] for c, r in zip(choices, known, strict=True))
    figure = rate(agree, len(known))
    return {
        "n": len(known),
        "agree": agree,
        "ties": sum(c is None for c in choices),
        "rate": figure["rate"],
        "ci95": figure["ci95"],
        "too_few": figure["too_few"],
    }


def _baselines(rows: list[dict]) -> dict | None:
    if not any(r.get("reference") is not None for r in rows):
        return None
    return {name: _agreement(rows, choose) for name, choose in BASELINES.items()}


# --- calibration -------------------------------------------------------------------------------


def calibration(
    rows: list[dict], n_bins: int = CALIBRATION_BINS, resamples: int = 200
) -> dict | None:
    """Expected calibration error of the judge's confidence max(p, 1 − p) against whether its
    choice matches the reference, over `n_bins` equal-width bins of [0.5, 1] (the range a
    two-way confidence takes), with a seeded percentile-bootstrap 95% interval.

    A tie (p = 0.5) says "either, 50/50": it is counted as half right, so a judge that always
    says 0.5 is perfectly calibrated (and useless, which the agreement figure shows).
    """
    known = [r for r in rows if r.get("reference") is not None]
    if not known:
        return None
    confidence = [max(r["p"], 1 - r["p"]) for r in known]
    correct = [
        0.5 if judge_choice(r) is None else float(judge_choice(r) == r["reference"]) for r in known
    ]
    bins = calibration_bins(confidence, correct, n_bins, low=0.5, high=1.0)
    ece = expected_calibration_error(bins)
    # ECE is biased upwards on few pairs (every bin's |gap| is at least its noise); the interval
    # shows how far, and the too-few rule hides a figure the pairs cannot support.
    ci95 = bootstrap_ece_interval(confidence, correct, n_bins, 0.5, 1.0, resamples)
    return {
        "ece": ece,
        "ci95": ci95,
        "too_few": too_few(ci95),
        "pairs": len(known),
        "n_bins": n_bins,
        "bins": bins,
    }


# --- the figures ------------------------------------------------------------------------------


def _length_correlation(rows: list[dict]) -> float | None:
    """Positive when the judge prefers responses[0] more as it gets longer: verbosity bias."""
    ps = [float(r["p"]) for r in rows]
    diffs = [float(len(r["responses"][0]) - len(r["responses"][1])) for r in rows]
    return pearson(ps, diffs)


def _per_principle(judgements: list[Judgement]) -> dict:
    by_id: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_id.setdefault(j.principle_id, []).append(j)
    return {
        pid: {
            "judgements": len(js),
            **_consistency_counts(js),
            "first_position_rate": first_position_rate(js),
            "mean_p_first": mean_p_first(js),
        }
        for pid, js in by_id.items()
    }


MISSING_GROUP = "(missing)"


def group_key(value) -> str:
    """A group's name: text as it is, other JSON values as JSON (true, 3, null)."""
    return value if isinstance(value, str) else json.dumps(value)


def _groups(rows: list[dict], field: str) -> dict:
    by_value: dict[str, list[dict]] = {}
    for r in rows:
        key = group_key(r[field]) if field in r else MISSING_GROUP
        by_value.setdefault(key, []).append(r)
    out = {}
    for key in sorted(by_value):
        members = by_value[key]
        judgements = [Judgement.from_dict(j) for r in members for j in r.get("judgements", [])]
        out[key] = {
            "pairs": len(members),
            "agreement": _agreement(members),
            **_consistency_counts(judgements),
            "baselines": _baselines(members),
        }
    return {"field": field, "by_value": out}


def _worst_share(diag: dict) -> tuple[str, float, int, int] | None:
    """The slot the judge favours, with its share, picks and verdicts."""
    picks, n = diag.get("first_position_picks"), diag.get("verdicts")
    if not n:
        return None
    first = picks / n
    return ("first", first, picks, n) if first > 0.5 else ("second", 1 - first, n - picks, n)


def _warnings(diag: dict) -> list[str]:
    """Each warning needs a figure that is not "too few": a warning from two pairs is noise."""
    out = []
    k, n = diag["consistent_judgements"], diag["paired_judgements"]
    consistency = diag["position_consistency"]
    if consistency is not None and consistency < MIN_CONSISTENCY:
        if not too_few(diag["position_consistency_ci95"]):
            out.append(
                "the judge picks a position, not a response: it chose the same response in both"
                f" orders in only {format_rate(k, n, 'judgements')} of judgements."
            )
    skew = _worst_share(diag)
    if skew and skew[1] > MAX_POSITION_SKEW and not too_few(wilson_interval(skew[2], skew[3])):
        slot, _, picks, verdicts = skew
        out.append(
            f"the judge chose the {slot} option in {format_rate(picks, verdicts, 'verdicts')} of"
            " verdicts: its labels mostly reflect position bias."
        )
    agreement = diag["agreement"]
    if agreement is not None:
        if too_few(agreement["ci95"]):
            out.append(
                f"too few reference pairs ({agreement['agree']}/{agreement['n']} agree) to tell"
                " whether the judge agrees with the references; judge more of them."
            )
        else:
            if agreement["ci95"][0] <= 0.5:
                out.append(
                    "agreement with reference labels is not above chance:"
                    f" {format_rate(agreement['agree'], agreement['n'])}."
                )
            out += _baseline_warning(agreement, diag.get("baselines") or {})
    confidence = diag["mean_confidence"]
    if confidence is not None and confidence < MIN_CONFIDENCE:
        out.append(
            f"labels are close to 0.5: the mean |p − 0.5| is {confidence:.3f}, so they carry "
            "little preference signal."
        )
    return out


def _baseline_warning(agreement: dict, baselines: dict) -> list[str]:
    """Even a judge above chance may only be reading length or position: say so when the best
    trivial rule agrees with the references at least as often."""
    figures = [(name, f) for name, f in baselines.items() if f is not None]
    if not figures:
        return []
    name, best = max(figures, key=lambda item: item[1]["rate"])
    if best["rate"] < agreement["rate"]:
        return []
    return [
        f"'{name.replace('_', ' ')}' agrees with the references as often as the judge"
        f" ({format_rate(best['agree'], best['n'])} against"
        f" {format_rate(agreement['agree'], agreement['n'])}): the judge may be reading length"
        " or position, not content."
    ]


def check_label_rows(path: str, rows: list[tuple[int, dict]]) -> list[dict]:
    """The rows of an `rlaif label` output, each checked to have what the diagnostics read;
    a row that does not is a one-line error naming its line."""
    from rlaif.plumbing.errors import at

    def probability(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1

    out = []
    for line, row in rows:
        missing = [k for k in ("p", "responses", "judgements") if k not in row]
        if missing:
            raise at(path, line, f"not an `rlaif label` row (missing {', '.join(missing)})")
        if not probability(row["p"]):
            raise at(path, line, "'p' must be a probability in [0, 1]")
        responses = row["responses"]
        if not (isinstance(responses, list) and len(responses) == 2):
            raise at(path, line, "'responses' must be a list of two texts")
        if not all(isinstance(r, str) for r in responses):
            raise at(path, line, "'responses' must be a list of two texts")
        if row.get("reference") not in (None, 0, 1) or isinstance(row.get("reference"), bool):
            raise at(path, line, "'reference' must be 0, 1 or null")
        judgements = row["judgements"]
        if not isinstance(judgements, list) or not judgements:
            raise at(path, line, "'judgements' must be a non-empty list")
        for n, j in enumerate(judgements, 1):
            ok = (
                isinstance(j, dict)
                and isinstance(j.get("principle_id"), str)
                and all(j.get(k) is None or probability(j.get(k)) for k in ("p_ab", "p_ba"))
            )
            if not ok:
                raise at(
                    path,
                    line,
                    f"judgement #{n} must have a 'principle_id' and probabilities 'p_ab', 'p_ba'",
                )
        out.append(row)
    return out


def judge_diagnostics(
    rows: list[dict], group_by: str | None = None, n_bins: int = CALIBRATION_BINS
) -> dict:
    """The judge card of `rlaif label` rows: a JSON-serialisable dict.

    Each rate keeps its count and Wilson 95% interval; a rate with nothing to count is None,
    never a division by zero. `group_by` adds the figures per value of that row field.
    """
    judgements = [Judgement.from_dict(j) for r in rows for j in r.get("judgements", [])]
    ps = [float(r["p"]) for r in rows]
    length_r = _length_correlation(rows)
    length_ci = None if length_r is None else pearson_interval(length_r, len(rows))
    diag = {
        "pairs": len(rows),
        "judgements": len(judgements),
        **_consistency_counts(judgements),
        **_first_position_counts(judgements),
        "mean_confidence": _mean(abs(p - 0.5) for p in ps),
        "label_balance": _rate(sum(p > 0.5 for p in ps), len(rows)),
        "length_correlation": length_r,
        "length_correlation_ci95": None if length_ci is None else list(length_ci),
        "agreement": _agreement(rows),
        "baselines": _baselines(rows),
        "calibration": calibration(rows, n_bins),
        "abstentions": sum(j.abstained for j in judgements),
        "per_principle": _per_principle(judgements),
    }
    if group_by is not None:
        diag["groups"] = _groups(rows, group_by)
    diag["warnings"] = _warnings(diag)
    return diag


# --- the card as text ---------------------------------------------------------------------------
# Manifests written before the card had n and intervals lack some keys: read them with .get.


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _of_pairs(value: str, d: dict) -> str:
    return value if value == "n/a" else f"{value} of {d['pairs']} pairs"


def agreement_cell(figure: dict | None) -> str:
    if figure is None:
        return "n/a (no reference labels)"
    return format_rate(figure["agree"], figure["n"])


def consistency_cell(d: dict) -> str:
    n = d.get("paired_judgements")
    if n is None:  # an older manifest: the rate alone
        return _pct(d.get("position_consistency"))
    return format_rate(d["consistent_judgements"], n, "judgements")


def _first_position_cell(d: dict) -> str:
    n = d.get("verdicts")
    if n is None:
        return _pct(d.get("first_position_rate"))
    return format_rate(d["first_position_picks"], n, "verdicts")


def _length_cell(d: dict) -> str:
    r, ci = d.get("length_correlation"), d.get("length_correlation_ci95")
    if r is None:
        return "n/a"
    if ci is None:
        return f"{r:+.3f} ({d['pairs']} pairs)"
    if too_few(ci, span=2.0):  # r lives in [-1, 1]
        return f"too few pairs ({d['pairs']})"
    return f"{r:+.3f} ({d['pairs']} pairs; 95% CI {ci[0]:+.2f} to {ci[1]:+.2f})"


def _calibration_cell(c: dict | None) -> str:
    if c is None:
        return "n/a (no reference labels)"
    if c["too_few"]:
        return f"too few pairs ({c['pairs']})"
    lo, hi = c["ci95"]
    return f"{c['ece']:.3f} ({c['pairs']} pairs; 95% CI {lo:.3f}–{hi:.3f})"


def _table(header: tuple[str, ...], cells: list[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        # Names read best left-aligned, numbers right-aligned.
        first, *rest = row
        return indent + "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    return [line(header)] + [line(row) for row in cells]


def _principle_table(per_principle: dict) -> list[str]:
    header = ("principle", "judgements", "consistency", "first-position", "mean p(first)")
    cells = [
        (
            pid,
            str(f["judgements"]),
            consistency_cell(f),
            _pct(f["first_position_rate"]),
            _num(f["mean_p_first"]),
        )
        for pid, f in per_principle.items()
    ]
    return _table(header, cells)


def _group_table(groups: dict) -> list[str]:
    header = (groups["field"], "pairs", "agreement", "consistency", "shorter", "longer")
    cells = []
    for key, g in groups["by_value"].items():
        baselines = g["baselines"] or {}
        cells.append(
            (
                key,
                str(g["pairs"]),
                agreement_cell(g["agreement"]),
                consistency_cell(g),
                agreement_cell(baselines.get("prefer_shorter")),
                agreement_cell(baselines.get("prefer_longer")),
            )
        )
    return [f"by {groups['field']} (shorter/longer: the length baselines)", *_table(header, cells)]


def format_diagnostics(diag: dict, title: str = "Judge card") -> str:
    """The judge card as plain text, for the terminal and the report."""
    calibration_ = diag.get("calibration")
    bins = f", {calibration_['n_bins']} bins" if calibration_ else ""
    agreement = diag["agreement"]
    ties = f", {agreement['ties']} ties" if agreement else ""
    overall = [
        ("pairs", str(diag["pairs"])),
        ("judgements", f"{diag['judgements']} ({diag['abstentions']} abstained)"),
        ("agreement with references", agreement_cell(agreement) + ties),
    ]
    for name, figure in (diag.get("baselines") or {}).items():
        overall.append((f"  baseline: {name.replace('_', ' ')}", agreement_cell(figure)))
    overall += [
        (f"calibration (ECE{bins})", _calibration_cell(calibration_)),
        ("position consistency", consistency_cell(diag)),
        ("first-position rate", _first_position_cell(diag)),
        ("mean confidence |p-0.5|", _of_pairs(_num(diag["mean_confidence"]), diag)),
        ("label balance (p > 0.5)", _of_pairs(_pct(diag["label_balance"]), diag)),
        ("length correlation", _length_cell(diag)),
    ]
    width = max(len(name) for name, _ in overall)
    lines = [title]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in overall]
    if diag.get("groups"):
        lines += ["", *_group_table(diag["groups"])]
    if diag["per_principle"]:
        lines += ["", *_principle_table(diag["per_principle"])]
    if diag["warnings"]:
        lines += ["", *(f"WARNING: {w}" for w in diag["warnings"])]
    return "\n".join(lines) + "\n"
