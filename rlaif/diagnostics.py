"""Judge diagnostics for `rlaif label` output: is the judge reading the responses or the layout?

Every pair is judged in both orders (responses[0] as option A, then as option B), so each
judgement carries p_ab and p_ba, both P(responses[0] preferred). A judge that reads the
responses gives the same answer in both orders; one that favours a slot (nearly always "A")
gives opposite answers, and averaging the two orders then pulls its labels towards 0.5 — soft
labels that look cautious but carry no signal. These figures make that visible, together with
verbosity bias (preferring the longer response) and agreement with reference labels.

Pure standard library, so the report can run wherever the labels are, without a model.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

# Thresholds for the warnings. They flag judges whose labels are mostly noise; they are not
# quality bars — a judge can pass all of them and still be wrong in a consistent way.
MIN_CONSISTENCY = 0.5  # below this, order flips the verdict more often than not
MAX_POSITION_SKEW = 0.8  # a fair judge picks each slot about half the time
MIN_CONFIDENCE = 0.05  # mean |p − 0.5| below this: labels barely distinguish the pair


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


# --- small helpers shared by the overall and per-principle figures ---------------------------


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


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (95% with the default z).

    Chosen over the normal approximation because label sets are often small and rates near
    1, where p ± z·se runs past [0, 1] and claims certainty from a handful of pairs.
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson r, or None with fewer than 3 points (2 always correlate ±1) or a constant input."""
    if len(xs) < 3:
        return None
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # zero variance
        return None


# --- the figures ------------------------------------------------------------------------------


def _length_correlation(rows: list[dict]) -> float | None:
    """Positive when the judge prefers responses[0] more as it gets longer: verbosity bias."""
    ps = [float(r["p"]) for r in rows]
    diffs = [float(len(r["responses"][0]) - len(r["responses"][1])) for r in rows]
    return pearson(ps, diffs)


def _agreement(rows: list[dict]) -> dict | None:
    """Agreement with the data's own labels; a tie (p exactly 0.5) is a choice of neither."""
    known = [r for r in rows if r.get("reference") is not None]
    if not known:
        return None
    ties = sum(r["p"] == 0.5 for r in known)
    agree = sum(r["p"] != 0.5 and (0 if r["p"] > 0.5 else 1) == r["reference"] for r in known)
    lo, hi = wilson_interval(agree, len(known))
    return {
        "n": len(known),
        "agree": agree,
        "ties": ties,
        "rate": agree / len(known),
        "ci95": [lo, hi],
    }


def _per_principle(judgements: list[Judgement]) -> dict:
    by_id: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_id.setdefault(j.principle_id, []).append(j)
    return {
        pid: {
            "judgements": len(js),
            "position_consistency": position_consistency(js),
            "first_position_rate": first_position_rate(js),
            "mean_p_first": mean_p_first(js),
        }
        for pid, js in by_id.items()
    }


def _warnings(diag: dict) -> list[str]:
    out = []
    consistency = diag["position_consistency"]
    if consistency is not None and consistency < MIN_CONSISTENCY:
        out.append(
            "the judge picks a position, not a response: it chose the same response in both "
            f"orders in only {consistency:.0%} of judgements."
        )
    first = diag["first_position_rate"]
    if first is not None and (first > MAX_POSITION_SKEW or first < 1 - MAX_POSITION_SKEW):
        slot, share = ("first", first) if first > 0.5 else ("second", 1 - first)
        out.append(
            f"the judge chose the {slot} option in {share:.0%} of verdicts: its labels mostly "
            "reflect position bias."
        )
    agreement = diag["agreement"]
    if agreement is not None and agreement["ci95"][0] <= 0.5:
        lo, hi = agreement["ci95"]
        out.append(
            "agreement with reference labels is not above chance: "
            f"{agreement['agree']}/{agreement['n']} = {agreement['rate']:.0%} "
            f"(95% CI {lo:.0%}–{hi:.0%})."
        )
    confidence = diag["mean_confidence"]
    if confidence is not None and confidence < MIN_CONFIDENCE:
        out.append(
            f"labels are close to 0.5: the mean |p − 0.5| is {confidence:.3f}, so they carry "
            "little preference signal."
        )
    return out


def check_label_rows(path: str, rows: list[tuple[int, dict]]) -> list[dict]:
    """The rows of an `rlaif label` output, each checked to have what the diagnostics read;
    a row that does not is a one-line error naming its line."""
    from rlaif.errors import at

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


def judge_diagnostics(rows: list[dict]) -> dict:
    """Figures on a judge's labels (rows written by `rlaif label`); a JSON-serialisable dict.

    A rate with nothing to count is None, never a division by zero.
    """
    judgements = [Judgement.from_dict(j) for r in rows for j in r.get("judgements", [])]
    diag = {
        "pairs": len(rows),
        "judgements": len(judgements),
        "position_consistency": position_consistency(judgements),
        "first_position_rate": first_position_rate(judgements),
        "mean_confidence": _mean(abs(r["p"] - 0.5) for r in rows),
        "label_balance": _rate(sum(r["p"] > 0.5 for r in rows), len(rows)),
        "length_correlation": _length_correlation(rows),
        "agreement": _agreement(rows),
        "abstentions": sum(j.abstained for j in judgements),
        "per_principle": _per_principle(judgements),
    }
    diag["warnings"] = _warnings(diag)
    return diag


# --- the report -------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _agreement_line(agreement: dict | None) -> str:
    if agreement is None:
        return "n/a (no reference labels)"
    lo, hi = agreement["ci95"]
    return (
        f"{agreement['agree']}/{agreement['n']} = {_pct(agreement['rate'])} "
        f"(95% CI {_pct(lo)}–{_pct(hi)}), {agreement['ties']} ties"
    )


def _principle_table(per_principle: dict) -> list[str]:
    header = ("principle", "judgements", "consistency", "first-position", "mean p(first)")
    cells = [
        (
            pid,
            str(f["judgements"]),
            _pct(f["position_consistency"]),
            _pct(f["first_position_rate"]),
            _num(f["mean_p_first"]),
        )
        for pid, f in per_principle.items()
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        # Ids read best left-aligned, numbers right-aligned.
        first, *rest = row
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    return [line(header)] + [line(row) for row in cells]


def format_diagnostics(diag: dict) -> str:
    """A plain-text report of `judge_diagnostics` output, for the terminal (stderr)."""
    overall = [
        ("pairs", str(diag["pairs"])),
        ("judgements", f"{diag['judgements']} ({diag['abstentions']} abstained)"),
        ("position consistency", _pct(diag["position_consistency"])),
        ("first-position rate", _pct(diag["first_position_rate"])),
        ("mean confidence |p-0.5|", _num(diag["mean_confidence"])),
        ("label balance (p > 0.5)", _pct(diag["label_balance"])),
        ("length correlation", _num(diag["length_correlation"], "+.3f")),
        ("agreement", _agreement_line(diag["agreement"])),
    ]
    width = max(len(name) for name, _ in overall)
    lines = ["Judge diagnostics"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in overall]
    if diag["per_principle"]:
        lines += ["", *_principle_table(diag["per_principle"])]
    if diag["warnings"]:
        lines += ["", *(f"WARNING: {w}" for w in diag["warnings"])]
    return "\n".join(lines) + "\n"
