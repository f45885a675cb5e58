"""Calibrated soft labels: Platt scaling of the judge's log-odds, fitted on reference pairs.

A judge's p is rarely the probability it claims: a small judge hedges near 0.5, a large one
with chain-of-thought is overconfident. On a reference set of pairs with a known preference we
fit two numbers by maximum likelihood,

    p_cal = σ(a · logit(p_raw) + b)

(a: an inverse temperature on the judge's log-odds; b: a bias), and apply them to every label.
`a` near 0 means the judge's p says nothing about the reference preference: the calibrated
labels then collapse towards 0.5, so soft-label reward-model and DPO training learn little
from noise. That is intended, and reported as such. Unless the fit predicts held-out reference
pairs better than a = 0 by more than its own uncertainty (k-fold, paired per pair), the fit
applied is a = 0 (`calibrate` says why); when it does, its a is shrunk by its standard error
first. The held-out figures measure that whole procedure.

Departures from Platt (1999), named where they are made: the fit uses Platt's smoothed targets
((N₊ + 1)/(N₊ + 2) and 1/(N₋ + 2)), as he did, so that a reference set the judge separates
perfectly still gives a finite fit; the optimiser is plain Newton with step halving on the
two parameters (no library needed); the held-out figures come from k-fold cross-validation
with seeded folds; and the a applied is not Platt's maximum-likelihood one but that shrunk
towards 0 (`shrink_factor`), and only past a held-out gate (`calibrate`).

Pure standard library, like `rlaif.judging.diagnostics`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace

from rlaif.plumbing.seeds import derived_seed
from rlaif.plumbing.stats import (
    P_CLIP,
    calibration_bins,
    expected_calibration_error,
    logit,
    sigmoid,
)

ECE_BINS = 10
# A fit is applied only when its held-out log-loss gain over a = 0 is above GAIN_Z standard
# errors: the one-sided 95% lower bound (see `held_out_gain` for why that level is enough).
GAIN_Z = 1.645


@dataclass(frozen=True)
class PlattFit:
    a: float  # multiplies the judge's log-odds: 1 keeps them, 0 ignores them, < 0 reverses them
    b: float  # added to the log-odds of responses[0]
    a_se: float | None  # standard errors from the observed information (inverse Hessian);
    b_se: float | None  # None where not identified, or b held at 0
    n: int  # pairs fitted on

    def apply(self, p_raw: float) -> float:
        return sigmoid(self.a * logit(p_raw) + self.b)


def _nll(xs, ts, a: float, b: float) -> float:
    """Negative log-likelihood of targets `ts` under σ(a·x + b), computed stably."""
    total = 0.0
    for x, t in zip(xs, ts, strict=True):
        z = a * x + b
        # log(1 + e^z) without overflow; −[t·log σ(z) + (1 − t)·log σ(−z)] = softplus(z) − t·z
        softplus = max(z, 0.0) + math.log1p(math.exp(-abs(z)))
        total += softplus - t * z
    return total


def _data(p_raw: list[float], outcomes: list[int], bias: bool) -> tuple[list, list]:
    """Log-odds and Platt's smoothed targets; without `bias`, each pair is also counted the
    other way round (−x, 1 − y), which makes the maximum-likelihood b exactly 0."""
    xs = [logit(p) for p in p_raw]
    ys = list(outcomes)
    if not bias:
        xs, ys = xs + [-x for x in xs], ys + [1 - y for y in ys]
    positives, n = sum(ys), len(ys)
    hi, lo = (positives + 1) / (positives + 2), 1 / (n - positives + 2)  # Platt's targets
    return xs, [hi if y else lo for y in ys]


def fit_platt(
    p_raw: list[float], outcomes: list[int], *, bias: bool = True, max_iter: int = 100
) -> PlattFit:
    """Maximum-likelihood (a, b) of P(outcome = 1) = σ(a · logit(p_raw) + b).

    `outcomes[i]` is 1 when the response p_raw[i] speaks for is the reference's preferred one.
    `bias=False` holds b at 0 (see `rlaif label`: its p is for a response put first by a coin
    flip, so any bias is noise). The negative log-likelihood is convex in (a, b), so Newton's
    method with step halving converges from (0, 0); a tiny ridge keeps the 2×2 system solvable
    when every p_raw is the same (then a is not identified and stays 0).
    """
    n = len(p_raw)
    if n == 0:
        raise ValueError("no reference pairs to fit on")
    xs, ts = _data(p_raw, outcomes, bias)
    a = b = 0.0
    loss = _nll(xs, ts, a, b)
    ridge = 1e-9 * len(xs)
    for _ in range(max_iter):
        ga = gb = haa = hab = hbb = 0.0
        for x, t in zip(xs, ts, strict=True):
            s = sigmoid(a * x + b)
            w = s * (1.0 - s)
            ga += (s - t) * x
            gb += s - t
            haa += w * x * x
            hab += w * x
            hbb += w
        haa, hbb = haa + ridge, hbb + ridge
        det = haa * hbb - hab * hab
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        step = 1.0
        while step > 1e-10:
            new_a, new_b = a - step * da, b - step * db
            new_loss = _nll(xs, ts, new_a, new_b)
            if new_loss <= loss:
                break
            step /= 2
        else:
            break  # no step lowers the loss: at the optimum to machine precision
        a, b, moved = new_a, new_b, loss - new_loss
        loss = new_loss
        if max(abs(step * da), abs(step * db)) < 1e-10 or moved < 1e-14:
            break
    a_se, b_se = _standard_errors(xs, a, b)
    if not bias:
        # Each pair was counted twice: the information is half what the doubled data claims.
        a_se = None if a_se is None else a_se * math.sqrt(2.0)
        b, b_se = 0.0, None
    return PlattFit(a, b, a_se, b_se, n)


def _standard_errors(xs: list[float], a: float, b: float) -> tuple[float | None, float | None]:
    haa = hab = hbb = 0.0
    for x in xs:
        s = sigmoid(a * x + b)
        w = s * (1.0 - s)
        haa, hab, hbb = haa + w * x * x, hab + w * x, hbb + w
    det = haa * hbb - hab * hab
    if det <= 1e-12 * max(haa * hbb, 1e-300):
        return None, None  # not identified (e.g. every p_raw the same)
    return math.sqrt(hbb / det), math.sqrt(haa / det)


def signal_p_value(p_raw: list[float], outcomes: list[int], fit: PlattFit, bias: bool) -> float:
    """Likelihood-ratio test of a = 0 (the judge's p says nothing beyond a constant): the
    p-value of 2·(NLL of the best constant − NLL of the fit) against χ² with one degree of
    freedom."""
    xs, ts = _data(p_raw, outcomes, bias)
    rate = sum(ts) / len(ts)  # the best constant prediction (0.5 without bias)
    constant = _nll(xs, ts, 0.0, math.log(rate / (1.0 - rate)))
    statistic = 2.0 * (constant - _nll(xs, ts, fit.a, fit.b))
    if not bias:
        statistic /= 2.0  # each pair counted twice
    return math.erfc(math.sqrt(max(0.0, statistic) / 2.0))  # χ²₁ survival function


def null_fit(p_raw: list[float], outcomes: list[int], bias: bool) -> PlattFit:
    """The fit that ignores the judge (a = 0): the base rate (0.5 without bias)."""
    _, ts = _data(p_raw, outcomes, bias)
    rate = sum(ts) / len(ts)
    return PlattFit(0.0, math.log(rate / (1.0 - rate)) if bias else 0.0, None, None, len(p_raw))


def shrink_factor(fit: PlattFit) -> float:
    """What a is multiplied by before it is applied: the positive-part James–Stein factor
    max(0, 1 − SE(a)²/a²), i.e. the empirical-Bayes posterior mean of a under a Normal(0, τ²)
    prior whose τ² = a² − SE² is estimated from the fit itself (Efron & Morris 1973, "Stein's
    estimation rule and its competitors — an empirical Bayes approach", JASA 68:117).

    Why: a maximum-likelihood a of a few pairs is too large in magnitude on average
    (E[â²] = a² + SE²), and under log loss an overconfident label costs more than an
    underconfident one. A well-determined a (a/SE = 5) keeps 96% of itself; a = 5.13 ± 2.23
    (the motivating chance judge) would keep 81%, which alone is not enough: the held-out gate
    (`calibrate`) is what stops noise, this only trims what passes it. 0 where a has no
    standard error (not identified)."""
    if fit.a == 0.0 or fit.a_se is None:
        return 0.0
    return max(0.0, 1.0 - (fit.a_se / fit.a) ** 2)


def shrunk(fit: PlattFit) -> PlattFit:
    """The fit with a shrunk by `shrink_factor`. b is kept as fitted: `rlaif label` holds it at
    0, and with a bias the joint ML b is a small price for not refitting."""
    return PlattFit(fit.a * shrink_factor(fit), fit.b, fit.a_se, fit.b_se, fit.n)


def _pair_loss(p: float, y: int) -> float:
    return -math.log(max(p if y else 1.0 - p, P_CLIP))


def held_out_gain(
    p_raw: list[float], outcomes: list[int], bias: bool, folds: int, seed: int
) -> tuple[float, float] | None:
    """Mean and standard error of the per-pair held-out log-loss gain (nats) of the shrunk fit
    over `null_fit`: each pair's loss under a fit on the other folds, subtracted from its loss
    under the null fit of the same folds (a paired difference, so pair-to-pair noise in
    difficulty cancels). None below 2 pairs.

    The baseline is a = 0 (0.5 without bias), not the raw judge, because those are the two
    labellings `calibrate` chooses between: the raw p is never kept, and a fit that merely
    beats a wildly overconfident raw judge (by pulling it towards 0.5) has shown nothing about
    the judge's signal. The standard error treats the n differences as independent; they are
    not quite (the folds' fits share training pairs), which makes it somewhat too small
    (Bengio & Grandvalet 2004; Bates, Hastie & Tibshirani 2023). For a judge at chance that
    is more than made up for by the gain's negative mean (a fit of noise costs held-out
    loss): with the one-sided 95% bound, benchmarks/calibration_noise.py measures fits
    applied to chance judges in about 1% of reference sets or fewer, not 5%."""
    n = len(p_raw)
    if n < 2:
        return None
    k = min(folds, n)
    fold = folds_of(n, k, seed)
    gains = []
    for f in range(k):
        train = [i for i in range(n) if fold[i] != f]
        tp, ty = [p_raw[i] for i in train], [outcomes[i] for i in train]
        fit, null = shrunk(fit_platt(tp, ty, bias=bias)), null_fit(tp, ty, bias)
        for i in range(n):
            if fold[i] == f:
                p, y = p_raw[i], outcomes[i]
                gains.append(_pair_loss(null.apply(p), y) - _pair_loss(fit.apply(p), y))
    mean = sum(gains) / n
    variance = sum((g - mean) ** 2 for g in gains) / (n - 1)
    return mean, math.sqrt(variance / n)


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` decided, and why."""

    fit: PlattFit  # maximum likelihood on every reference pair
    p_value: float  # likelihood-ratio test of a = 0, reported, not the gate
    gain: tuple[float, float] | None  # held-out log-loss gain over a = 0: (mean, SE), nats/pair
    folds: int  # folds behind `gain`
    shrink: float  # `shrink_factor` of the fit
    applied: PlattFit  # the shrunk fit when the gate passes, else `null_fit`

    @property
    def gain_lower(self) -> float | None:
        return None if self.gain is None else self.gain[0] - GAIN_Z * self.gain[1]

    @property
    def passed(self) -> bool:
        return self.gain_lower is not None and self.gain_lower > 0.0

    def reason(self) -> str:
        """Why the fit is, or is not, applied (a phrase for `verdict`)."""
        if self.gain is None:
            return "too few pairs to hold any out"
        mean, se = self.gain
        bound = "above" if self.passed else "not above"
        return (
            f"held-out gain {mean:+.3f} ± {se:.3f} nats per pair over a = 0, lower 95% bound"
            f" {self.gain_lower:+.3f} {bound} 0"
        )


def calibrate(
    p_raw: list[float], outcomes: list[int], bias: bool, *, folds: int = 5, seed: int = 0
) -> Calibration:
    """The maximum-likelihood fit, and the fit to apply: that fit with a shrunk by its standard
    error (`shrink_factor`) when it predicts held-out reference pairs better than a = 0 by
    more than its own uncertainty — the lower bound mean − 1.645·SE of the per-pair gain
    (`held_out_gain`, `folds`-fold, seeded) is above 0 — else `null_fit`, which pulls every
    label to 0.5.

    Why the gate is held out: a judge at chance has log-odds that vary little, so its a is
    barely determined, and an in-sample test passes on noise at its nominal rate. Under the
    earlier rule (likelihood-ratio p < 0.05) the embedded judge on 30 XSTest pairs got
    a = 5.13 ± 2.23, p = 0.010, and every label stretched about 5×, while the held-out log loss
    moved by 0.002 nats. Labels are made no more confident than held-out pairs support.
    """
    fit = fit_platt(p_raw, outcomes, bias=bias)
    p_value = signal_p_value(p_raw, outcomes, fit, bias)
    gain = held_out_gain(p_raw, outcomes, bias, folds, seed)
    null = null_fit(p_raw, outcomes, bias)
    result = Calibration(fit, p_value, gain, min(folds, len(p_raw)), shrink_factor(fit), null)
    return replace(result, applied=shrunk(fit)) if result.passed else result


def ece(probs: list[float], outcomes: list[int], bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of binary predictions, over the confidence max(p, 1 − p).

    `probs[i]` is P(outcome i = 1). Each prediction falls in one of `bins` equal-width bins of
    its confidence over [0.5, 1] (confidence is never below 0.5); ECE is the count-weighted
    mean |mean confidence − accuracy| over the bins. A prediction of exactly 0.5 picks
    neither side and counts as half right, so a coin flip that says 0.5 is calibrated.
    None for no predictions.
    """
    if not probs:
        return None
    confidence = [max(p, 1.0 - p) for p in probs]
    right = [
        0.5 if p == 0.5 else float((p > 0.5) == bool(y))
        for p, y in zip(probs, outcomes, strict=True)
    ]
    return expected_calibration_error(calibration_bins(confidence, right, bins, low=0.5, high=1.0))


def log_loss(probs: list[float], outcomes: list[int]) -> float | None:
    """Mean negative log-likelihood (nats): a proper score, unlike ECE, so it also penalises
    calibrated labels that say nothing."""
    if not probs:
        return None
    pairs = zip(probs, outcomes, strict=True)
    return -sum(math.log(max(p if y else 1.0 - p, P_CLIP)) for p, y in pairs) / len(probs)


def folds_of(n: int, k: int, seed: int) -> list[int]:
    """The fold (0..k−1) of each of n items: a seeded shuffle dealt round-robin, so fold sizes
    differ by at most one."""
    order = list(range(n))
    random.Random(derived_seed(seed, "calibration-folds")).shuffle(order)
    fold = [0] * n
    for position, i in enumerate(order):
        fold[i] = position % k
    return fold


def held_out(p_raw: list[float], outcomes: list[int], k: int, seed: int, bias: bool):
    """Each pair's calibrated p from `calibrate` on the other k − 1 folds (the whole procedure,
    gate and shrinkage included, so the figure measures what is applied)."""
    fold = folds_of(len(p_raw), k, seed)
    out = [0.0] * len(p_raw)
    for f in range(k):
        train = [i for i in range(len(p_raw)) if fold[i] != f]
        applied = calibrate(
            [p_raw[i] for i in train], [outcomes[i] for i in train], bias, folds=k, seed=seed
        ).applied
        for i in range(len(p_raw)):
            if fold[i] == f:
                out[i] = applied.apply(p_raw[i])
    return out


def calibration_report(
    p_raw: list[float], outcomes: list[int], folds: int, seed: int, *, bias: bool = True
) -> dict:
    """The fit on all reference pairs (maximum likelihood, and the one applied, with the gate
    and shrinkage behind it), and held-out figures from `folds`-fold cross-validation: ECE and
    log loss of the raw p and of the calibrated p on the same pairs."""
    n = len(p_raw)
    if n < max(folds, 2):
        raise ValueError(f"{n} reference pairs: need at least {max(folds, 2)} for {folds} folds")
    cal = calibrate(p_raw, outcomes, bias, folds=folds, seed=seed)
    calibrated = held_out(p_raw, outcomes, folds, seed, bias)
    gain, gain_se = cal.gain if cal.gain is not None else (None, None)
    report = {
        "fit": asdict(cal.fit),
        "applied": {"a": cal.applied.a, "b": cal.applied.b},
        "bias": bias,
        "signal_p_value": cal.p_value,
        # the rule: apply the (shrunk) fit only when its held-out gain over a = 0 is real
        "gate": {
            "gain": gain,
            "gain_se": gain_se,
            "gain_lower": cal.gain_lower,
            "z": GAIN_Z,
            "folds": cal.folds,
            "passed": cal.passed,
            "reason": cal.reason(),
        },
        # raw (maximum-likelihood) and shrunk a; the shrunk one is applied when the gate passes
        "shrinkage": {"a_raw": cal.fit.a, "factor": cal.shrink, "a_shrunk": cal.fit.a * cal.shrink},
        "pairs": n,
        "folds": folds,
        "ece_bins": ECE_BINS,
        "ece_before": ece(p_raw, outcomes),
        # held out: each pair calibrated by a fit that did not see it
        "ece_after": ece(calibrated, outcomes),
        "log_loss_before": log_loss(p_raw, outcomes),
        "log_loss_after": log_loss(calibrated, outcomes),
    }
    return report | {"verdict": verdict(report)}


def verdict(report: dict, where: str = "the reference") -> str:
    """What the applied fit means for the labels, in one line. Read from the report, so that
    manifests written before the held-out gate (no "gate" key) still read as they were made."""
    gate, a = report.get("gate"), report["applied"]["a"]
    why = gate["reason"] if gate else f"likelihood-ratio p = {report['signal_p_value']:.2f}"
    if a == 0.0:
        return (
            f"the judge carries little signal on {where} ({why}; {report['pairs']} pairs);"
            " labels pulled to 0.5"
        )
    if a < 0:
        return f"the judge is reliably wrong on {where} ({why}): calibration reverses its labels"
    return f"the judge carries signal on {where} ({why}); labels rescaled to match it"


def calibrate_row(row: dict, fit: PlattFit) -> dict:
    """An `rlaif label` row with its p calibrated: `p_raw` keeps the judge's, `p`, `p_chosen`
    and chosen/rejected follow the calibrated one (what train-rm and dpo read). The per-order
    judgements stay the judge's own."""
    p = fit.apply(row["p"])
    first, second = row["responses"]
    chosen, rejected = (first, second) if p >= 0.5 else (second, first)
    out = {}
    for key, value in row.items():
        if key == "p":
            out["p_raw"] = value
        out[key] = value
    out.update(
        p=p,
        p_chosen=p if p >= 0.5 else 1.0 - p,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )
    return out


def reference_outcomes(rows: list[dict]) -> tuple[list[float], list[int]]:
    """From judged reference rows: each row's raw p (P(responses[0])) and whether
    responses[0] is the reference's preferred response."""
    return [r["p"] for r in rows], [1 if r["reference"] == 0 else 0 for r in rows]


def _figure(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_calibration(report: dict, reference: str) -> str:
    """The calibration block printed by `rlaif label --calibrate-on REF`."""
    fit, applied, gate = report["fit"], report["applied"], report.get("gate")
    se = "" if fit["a_se"] is None else f" ± {fit['a_se']:.2f}"
    b = f"b = {fit['b']:.3f}" + ("" if fit["b_se"] is None else f" ± {fit['b_se']:.2f}")
    if not report["bias"]:
        b = "b = 0 (held)"
    lines = [
        f"Calibration on {reference} ({report['pairs']} pairs, {report['folds']}-fold held out)",
        f"  fit of p = σ(a·logit(p_raw) + b): a = {fit['a']:.3f}{se}, {b} (± 1 standard error)",
        f"  signal (likelihood-ratio test of a = 0): p = {report['signal_p_value']:.3f}",
    ]
    shown = f"  applied: a = {applied['a']:.3f}, b = {applied['b']:.3f}"
    if gate:  # absent from manifests written when the likelihood-ratio test was the rule
        lines.append(
            f"  held-out gain over a = 0 ({gate['folds']}-fold, paired):"
            + (" n/a" if gate["gain"] is None else f" {gate['gain']:+.3f} ± {gate['gain_se']:.3f}")
            + f" nats per pair (applied only when gain − {gate['z']:g}·SE > 0)"
        )
        shrink = report["shrinkage"]
        shown += (
            f"  (shrunk a = {shrink['a_raw']:.3f} × {shrink['factor']:.2f} ="
            f" {shrink['a_shrunk']:.3f}, {'applied' if gate['passed'] else 'not applied'})"
        )
    lines += [
        shown,
        f"  held-out ECE ({report['ece_bins']} bins)  before {_figure(report['ece_before'])}"
        f"  after {_figure(report['ece_after'])}",
        f"  held-out log loss      before {_figure(report['log_loss_before'])}"
        f"  after {_figure(report['log_loss_after'])}  (nats; 0.693 = always 0.5)",
        f"calibration: {verdict(report, reference)}",
    ]
    return "\n".join(lines) + "\n"
