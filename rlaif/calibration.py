"""Calibrated soft labels: Platt scaling of the judge's log-odds, fitted on reference pairs.

A judge's p is rarely the probability it claims: a small judge hedges near 0.5, a large one
with chain-of-thought is overconfident. On a reference set of pairs with a known preference we
fit two numbers by maximum likelihood,

    p_cal = σ(a · logit(p_raw) + b)

(a: an inverse temperature on the judge's log-odds; b: a bias), and apply them to every label.
`a` near 0 means the judge's p says nothing about the reference preference: the calibrated
labels then collapse towards 0.5, so soft-label reward-model and DPO training learn little
from noise. That is intended, and reported as such. Unless a likelihood-ratio test on the
reference shows the judge's p predicts the preference (5% level), the fit applied is a = 0
(`calibrate` says why), and the held-out figures measure that whole procedure.

Departures from Platt (1999), named where they are made: the fit uses Platt's smoothed targets
((N₊ + 1)/(N₊ + 2) and 1/(N₋ + 2)), as he did, so that a reference set the judge separates
perfectly still gives a finite fit; the optimiser is plain Newton with step halving on the
two parameters (no library needed), and the held-out figures come from k-fold
cross-validation with seeded folds.

Pure standard library, like `rlaif.diagnostics`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from rlaif.seeds import derived_seed
from rlaif.stats import P_CLIP, calibration_bins, expected_calibration_error, logit, sigmoid

ECE_BINS = 10
# Below this likelihood-ratio p-value the judge is said to carry signal on the reference.
SIGNAL_P_VALUE = 0.05


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


def calibrate(
    p_raw: list[float], outcomes: list[int], bias: bool
) -> tuple[PlattFit, float, PlattFit]:
    """The maximum-likelihood fit, the p-value of its signal, and the fit to apply: the ML fit
    when the reference shows (at the 5% level) that the judge's p predicts the preference,
    else `null_fit`, which pulls every label to 0.5.

    Why the gate: a judge at chance has log-odds that vary little, so its a is barely
    determined (e.g. −2.6 ± 4.4 on 8 pairs): applied as it is, it would stretch or even reverse
    noise. Labels are made no more confident than the reference can support.
    """
    fit = fit_platt(p_raw, outcomes, bias=bias)
    p_value = signal_p_value(p_raw, outcomes, fit, bias)
    applied = fit if p_value < SIGNAL_P_VALUE else null_fit(p_raw, outcomes, bias)
    return fit, p_value, applied


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
    gate included, so the figure measures what is applied)."""
    fold = folds_of(len(p_raw), k, seed)
    out = [0.0] * len(p_raw)
    for f in range(k):
        train = [i for i in range(len(p_raw)) if fold[i] != f]
        _, _, applied = calibrate([p_raw[i] for i in train], [outcomes[i] for i in train], bias)
        for i in range(len(p_raw)):
            if fold[i] == f:
                out[i] = applied.apply(p_raw[i])
    return out


def calibration_report(
    p_raw: list[float], outcomes: list[int], folds: int, seed: int, *, bias: bool = True
) -> dict:
    """The fit on all reference pairs (maximum likelihood, and the one applied), and held-out
    figures from `folds`-fold cross-validation: ECE and log loss of the raw p and of the
    calibrated p on the same pairs."""
    n = len(p_raw)
    if n < max(folds, 2):
        raise ValueError(f"{n} reference pairs: need at least {max(folds, 2)} for {folds} folds")
    fit, p_value, applied = calibrate(p_raw, outcomes, bias)
    calibrated = held_out(p_raw, outcomes, folds, seed, bias)
    return {
        "fit": asdict(fit),
        "applied": {"a": applied.a, "b": applied.b},
        "bias": bias,
        "signal_p_value": p_value,
        "pairs": n,
        "folds": folds,
        "ece_bins": ECE_BINS,
        "ece_before": ece(p_raw, outcomes),
        # held out: each pair calibrated by a fit that did not see it
        "ece_after": ece(calibrated, outcomes),
        "log_loss_before": log_loss(p_raw, outcomes),
        "log_loss_after": log_loss(calibrated, outcomes),
        "verdict": verdict(fit, p_value),
    }


def verdict(fit: PlattFit, p_value: float, where: str = "the reference") -> str:
    """What the fit means for the labels, in one line."""
    if p_value >= SIGNAL_P_VALUE:
        # Whatever a is: without a significant signal it is not applied (see `calibrate`).
        return (
            f"the judge carries little signal on {where} (likelihood-ratio p = {p_value:.2f},"
            f" {fit.n} pairs); labels pulled to 0.5"
        )
    if fit.a < 0:
        return f"the judge is reliably wrong on {where}: calibration reverses its labels"
    return f"the judge carries signal on {where}; labels rescaled to match it"


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
    fit, applied = report["fit"], report["applied"]
    se = "" if fit["a_se"] is None else f" ± {fit['a_se']:.2f}"
    b = f"b = {fit['b']:.3f}" + ("" if fit["b_se"] is None else f" ± {fit['b_se']:.2f}")
    if not report["bias"]:
        b = "b = 0 (held)"
    lines = [
        f"Calibration on {reference} ({report['pairs']} pairs, {report['folds']}-fold held out)",
        f"  fit of p = σ(a·logit(p_raw) + b): a = {fit['a']:.3f}{se}, {b} (± 1 standard error)",
        f"  signal (likelihood-ratio test of a = 0): p = {report['signal_p_value']:.3f}",
        f"  applied: a = {applied['a']:.3f}, b = {applied['b']:.3f}",
        f"  held-out ECE ({report['ece_bins']} bins)  before {_figure(report['ece_before'])}"
        f"  after {_figure(report['ece_after'])}",
        f"  held-out log loss      before {_figure(report['log_loss_before'])}"
        f"  after {_figure(report['log_loss_after'])}  (nats; 0.693 = always 0.5)",
        f"calibration: {verdict(PlattFit(**fit), report['signal_p_value'], reference)}",
    ]
    return "\n".join(lines) + "\n"
