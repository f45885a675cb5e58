"""Does `label --calibrate-on` amplify noise? Synthetic judges, many seeded reference sets.

Each judge gives the log-odds x = logit(p_raw) that responses[0] is preferred, for reference
pairs whose preferred slot y is a fair coin (as in `rlaif label`, where a seeded coin flip
puts one response first). Chance judges draw x independent of y; judges with signal draw
x = ±c + noise, the sign following y. For each judge, each reference-set size n and each seed,
the calibration is fitted as `rlaif label` fits it
(rlaif.judging.calibration.calibrate, no bias term, 5 folds) and judged two ways:

  old   the rule before the held-out gate: the maximum-likelihood fit when the in-sample
        likelihood-ratio test of a = 0 gives p < 0.05, else a = 0
  new   `calibrate`'s applied fit: the fit, its a shrunk by its standard error, only when its
        held-out log-loss gain over a = 0 is above 1.96 standard errors, else a = 0

The table gives, per judge and n, the share of seeds where each rule applies a fit (a ≠ 0),
and where it STRETCHES the labels: mean |p_cal − 0.5| > 1.05 × mean |p_raw − 0.5| over the
reference pairs' own p_raw (a reversed label counts by its distance from 0.5 too). For a chance
judge a stretch is noise made confident: the target is ≤ 5% of seeds at every n. For a judge
with signal, applying the fit is right (the underconfident one ought to be stretched), so the
column to read there is "applied", with the median applied a beside the true one.

Pure Python, 6 fits per reference set (the fit and its 5 held-out folds). The default 300
seeds per cell are a third of README.md's table, which is --seeds 1000 (a few minutes on one
shared CPU core; a 5% share is then known to about ±0.7 points).

Usage: python benchmarks/calibration_noise.py [--seeds 300] [--n 20,30,50,100] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rlaif.judging.calibration import PlattFit, calibrate, null_fit  # noqa: E402
from rlaif.plumbing.seeds import derived_seed  # noqa: E402
from rlaif.plumbing.stats import sigmoid  # noqa: E402

FOLDS = 5
OLD_P_VALUE = 0.05  # the likelihood-ratio level of the rule before the held-out gate
STRETCH = 1.05

# name: (mean log-odds when y = 1 (minus it when y = 0), offset whatever y, noise sd, true a)
# The true a of a signal judge: x | y ~ N(±c, s²) gives P(y = 1 | x) = σ(2c·x / s²).
JUDGES = {
    "chance, s = 0.1 (hedges, like the embedded judge)": (0.0, 0.0, 0.1, 0.0),
    "chance, s = 0.5": (0.0, 0.0, 0.5, 0.0),
    "chance, s = 2 (confident)": (0.0, 0.0, 2.0, 0.0),
    "chance, position-biased (x ~ N(-0.4, 0.1))": (0.0, -0.4, 0.1, 0.0),
    "signal, c = 0.5, s = 1 (calibrated, 69% right)": (0.5, 0.0, 1.0, 1.0),
    "signal, c = 0.7, s = 1 (calibrated, 76% right)": (0.7, 0.0, 1.0, 1.4),
    "signal, c = 0.1, s = 0.2 (hedges, 69% right)": (0.1, 0.0, 0.2, 5.0),
}
CHANCE = [name for name, judge in JUDGES.items() if judge[0] == 0.0]
SIGNAL = [name for name, judge in JUDGES.items() if judge[0] != 0.0]


def reference_set(judge: tuple, n: int, rng: random.Random) -> tuple[list[float], list[int]]:
    """n reference pairs from a judge: each pair's p_raw for responses[0], and whether
    responses[0] is the preferred one."""
    c, offset, s, _ = judge
    outcomes = [rng.randrange(2) for _ in range(n)]
    xs = [offset + (c if y else -c) + rng.gauss(0.0, s) for y in outcomes]
    return [sigmoid(x) for x in xs], outcomes


def stretched(fit: PlattFit, p_raw: list[float]) -> bool:
    """Whether the fit moves the labels, on average, more than 5% further from 0.5."""
    before = sum(abs(p - 0.5) for p in p_raw)
    return sum(abs(fit.apply(p) - 0.5) for p in p_raw) > STRETCH * before


def cell(name: str, n: int, seeds: int) -> dict:
    """Both rules on `seeds` seeded reference sets of n pairs from one judge."""
    old_applied = new_applied = new_positive = old_stretched = new_stretched = 0
    applied_a = []
    for seed in range(seeds):
        rng = random.Random(derived_seed(seed, "calibration-noise", name, n))
        p_raw, outcomes = reference_set(JUDGES[name], n, rng)
        cal = calibrate(p_raw, outcomes, bias=False, folds=FOLDS, seed=seed)
        old = cal.fit if cal.p_value < OLD_P_VALUE else null_fit(p_raw, outcomes, False)
        old_applied += old.a != 0.0
        new_applied += cal.applied.a != 0.0
        new_positive += cal.applied.a > 0.0
        old_stretched += stretched(old, p_raw)
        new_stretched += stretched(cal.applied, p_raw)
        if cal.applied.a != 0.0:
            applied_a.append(cal.applied.a)
    return {
        "judge": name,
        "n": n,
        "seeds": seeds,
        "true_a": JUDGES[name][3],
        "old_applied": old_applied / seeds,
        "new_applied": new_applied / seeds,
        "new_positive": new_positive / seeds,  # applied with a > 0: the judge's side kept
        "old_stretched": old_stretched / seeds,
        "new_stretched": new_stretched / seeds,
        "new_median_a": statistics.median(applied_a) if applied_a else None,
    }


def study(names: list[str], ns: list[int], seeds: int, progress: bool = False) -> list[dict]:
    """One `cell` per judge and n."""
    rows = []
    for name in names:
        for n in ns:
            rows.append(cell(name, n, seeds))
            if progress:
                print(f"done: {name}, n = {n}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'judge':<50} {'n':>4}  {'applied old':>11} {'new':>6}  {'stretched old':>13}"
        f" {'new':>6}  {'median a (new) / true':>21}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        a = "-" if r["new_median_a"] is None else f"{r['new_median_a']:.2f}"
        lines.append(
            f"{r['judge']:<50} {r['n']:>4}  {r['old_applied']:>11.1%} {r['new_applied']:>6.1%}"
            f"  {r['old_stretched']:>13.1%} {r['new_stretched']:>6.1%}"
            f"  {a + ' / ' + format(r['true_a'], 'g'):>21}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=300, help="reference sets per cell")
    parser.add_argument("--n", default="20,30,50,100", help="reference-set sizes")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    ns = [int(n) for n in args.n.split(",")]
    rows = study(list(JUDGES), ns, args.seeds, progress=True)
    print(f"{args.seeds} seeds per row; stretched: mean |p_cal - 0.5| > 1.05 x mean |p_raw - 0.5|")
    print(format_table(rows))
    worst = max(r["new_stretched"] for r in rows if r["judge"] in CHANCE)
    print(f"\nchance judges, new rule: at most {worst:.1%} of seeds stretched (target <= 5%)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
