"""The small statistics every quality figure goes through: intervals, "too few", ECE, kappa.

One rule for printing a rate anywhere (summaries, the report, stage lines): the figure comes
with its count and its 95% interval, and a figure whose interval is too wide to say anything
is printed as "too few pairs (k/n)" instead of a number that would be read as a result.

Pure standard library, so the report and the diagnostics run wherever the files are.
"""

from __future__ import annotations

import math

# A 95% interval wider than half of [0, 1] cannot tell a judge at chance (50%) from a useful
# one (75%), nor from one that is wrong three times in four (25%): at a rate near 50% that is
# fewer than 12 pairs (Wilson width 0.51 at 11, 0.49 at 12); at 0/n, fewer than 4. Showing
# such a figure as a number invites reading 0% or 100% off two pairs.
TOO_WIDE = 0.5
# Probabilities are clipped into [P_CLIP, 1 − P_CLIP] before a logit: `--method generate` and
# some servers give exact 0s and 1s, whose log-odds are infinite.
P_CLIP = 1e-6


def sigmoid(x: float) -> float:
    """σ(x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def logit(p: float) -> float:
    """log(p / (1 − p)) of p clipped into [P_CLIP, 1 − P_CLIP]."""
    p = min(max(p, P_CLIP), 1.0 - P_CLIP)
    return math.log(p / (1.0 - p))


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


def too_few(ci95: tuple[float, float] | list[float], span: float = 1.0) -> bool:
    """The interval covers more than TOO_WIDE of the figure's range (`span`: 1 for a rate,
    2 for a correlation)."""
    low, high = ci95
    return (high - low) > TOO_WIDE * span


def rate(successes: float, n: int) -> dict:
    """A rate with its count, Wilson 95% interval and the too-few verdict (JSON-ready)."""
    ci95 = list(wilson_interval(successes, n))
    return {
        "k": successes,
        "n": n,
        "rate": successes / n if n else None,
        "ci95": ci95,
        "too_few": too_few(ci95),
    }


def _count(k: float) -> str:
    return f"{k:g}"  # 3, or 4.5 for a win rate with ties as half


def format_rate(
    successes: float, n: int, unit: str = "pairs", ci95: tuple[float, float] | None = None
) -> str:
    """`61.0% (72/118; 95% CI 52.0–69.3%)`, or `too few pairs (1/3)`, or `n/a (no pairs)`.

    `ci95`: the interval a stage wrote in its manifest, printed as written (else Wilson's)."""
    if n == 0:
        return f"n/a (no {unit})"
    low, high = ci95 if ci95 is not None else wilson_interval(successes, n)
    if too_few((low, high)):
        return f"too few {unit} ({_count(successes)}/{n})"
    return (
        f"{successes / n:.1%} ({_count(successes)}/{n}; 95% CI {100 * low:.1f}–{100 * high:.1f}%)"
    )


def format_share(share: float, n: int, unit: str = "pairs") -> str:
    """`format_rate` of a share reported as a mean over `n` items (e.g. TRL's accuracy): the
    count is share · n, rounded (TRL 1.16 averages per-batch means, equal to k/n for equal
    batches)."""
    return format_rate(round(share * n), n, unit)


def pearson_interval(r: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% interval of a Pearson r by Fisher's z-transform; None below 4 points (its standard
    error 1/√(n−3) needs n > 3)."""
    if n < 4:
        return None
    r = max(min(r, 1 - 1e-12), -1 + 1e-12)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return (math.tanh(centre - half), math.tanh(centre + half))


def calibration_bins(
    probs: list[float],
    outcomes: list[float],
    n_bins: int = 10,
    low: float = 0.0,
    high: float = 1.0,
) -> list[dict]:
    """Equal-width bins of predicted probability over [low, high], each with its count, mean
    prediction (`confidence`) and mean outcome (`accuracy`; an outcome may be 0.5, a tie)."""
    width = (high - low) / n_bins
    bins = [
        {
            "low": round(low + k * width, 10),
            "high": round(low + (k + 1) * width, 10),
            "count": 0,
            "confidence": 0.0,
            "accuracy": 0.0,
        }
        for k in range(n_bins)
    ]
    for p, y in zip(probs, outcomes, strict=True):
        # The epsilon keeps a value on an edge (0.6 with width 0.05) in the bin it opens,
        # which floating point would otherwise put in the bin below.
        b = bins[min(max(int((p - low) / width + 1e-9), 0), n_bins - 1)]
        b["count"] += 1
        b["confidence"] += p
        b["accuracy"] += y
    for b in bins:
        if b["count"]:
            b["confidence"] /= b["count"]
            b["accuracy"] /= b["count"]
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    """Σ_bins (count / total) · |mean prediction − mean outcome| (Guo et al. 2017)."""
    total = sum(b["count"] for b in bins)
    return sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / max(total, 1)


def bootstrap_ece_interval(
    probs: list[float],
    outcomes: list[float],
    n_bins: int,
    low: float = 0.0,
    high: float = 1.0,
    resamples: int = 200,
    seed: int = 0,
) -> list[float]:
    """Percentile-bootstrap 95% interval of the expected calibration error, binned as
    `calibration_bins` bins (seeded: the same pairs give the same interval).

    numpy, because 200 resamples of 100,000 labels is 2·10⁷ draws: seconds in Python loops,
    a fraction of a second in bincount. Σ_b count_b·|mean conf_b − mean outcome_b| / n is
    Σ_b |Σ conf − Σ outcome| / n, so a resample needs only three bincounts.
    """
    import numpy as np

    conf, y = np.asarray(probs, dtype=float), np.asarray(outcomes, dtype=float)
    n = len(conf)
    if n == 0:
        return [0.0, 1.0]
    width = (high - low) / n_bins
    index = np.clip(((conf - low) / width + 1e-9).astype(int), 0, n_bins - 1)
    rng = np.random.default_rng(seed)
    eces = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, n, n)
        bins = index[pick]
        gap = np.bincount(bins, conf[pick], n_bins) - np.bincount(bins, y[pick], n_bins)
        eces[r] = np.abs(gap).sum() / n
    lo, hi = np.quantile(eces, [0.025, 0.975])
    return [float(lo), float(hi)]


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' binary verdicts on the same items: agreement beyond what
    their own rates of saying True would give by chance. None when undefined: no items, or
    both raters always giving the same single verdict (chance agreement is then 1)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} verdicts against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    if chance == 1:
        return None
    return (observed - chance) / (1 - chance)


def kappa_interval(a: list[bool], b: list[bool], z: float = 1.96) -> tuple[float, float] | None:
    """Approximate 95% interval of Cohen's kappa: κ ± z·√(p_o(1 − p_o) / (n (1 − p_e)²))
    (Cohen 1960's large-sample standard error), clipped to [−1, 1]; None where kappa is."""
    kappa = cohen_kappa(a, b)
    if kappa is None:
        return None
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    half = z * math.sqrt(observed * (1 - observed) / n) / (1 - chance)
    return (max(-1.0, kappa - half), min(1.0, kappa + half))
