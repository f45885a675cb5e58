"""Pointwise judging: the judge rates one response at a time, 1 to 9, against one principle.

The one scorer behind `rlaif label --method rating`, `rlaif eval winrate --method rating` and
`rlaif rl --reward judge`. For each chat (built by `prompts.rating_chat`) the judge's next-token
log-probabilities of the digits 1–9 after `Rating: ` are read and turned into a score

    s = Σ d · P̂(d),  d = 1..9,

the expected rating, on the judge's own 1–9 scale (5 is the middle, 1 and 9 the ends).

P̂ is the digit distribution with the batch's digit prior removed ("batch calibration", Zhou
et al. 2024): each distribution is divided, digit by digit, by the mean distribution over the
batch, and renormalised. Why: a judge's habit for some digit is shared by every response it
rates and says nothing about any of them; dividing by the batch mean keeps what distinguishes
one response from the others in the batch and drops what they all share. Measured on 24 XSTest
responses (12 pairs, one principle): the embedded 135M judge's most likely digit was 9 for
every one of them (35% of the mass on average), so its raw scores all sat at 5.3–6.3, above
the middle whatever the response; with the prior removed they sit at 4.6–5.5 around the scale's
middle, with about the same spread (sd 0.27 before, 0.23 after). Removing a habit re-centres a
judge; it cannot create a signal the judge does not have. Departures and consequences, named:

- The prior is the mean *probability* per digit, not the mean log-probability (a digit that one
  response makes impossible would send a log-mean to −∞ for the whole batch).
- A response's score depends on the batch it was rated in (a `label` chunk, an RL reward call),
  so scores are comparable within a batch, which is where they are compared; a batch of one has
  no prior to remove and keeps its raw score.

Two responses become a preference probability p = σ((s_a − s_b) / τ): with the default τ = 1, a
response rated one point higher is preferred with p = 0.73, two points 0.88. There is no order
in which the pair is shown, so position bias is impossible by construction.
"""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from dataclasses import dataclass

from rlaif.judging import prompts
from rlaif.plumbing.stats import sigmoid

LOWEST, HIGHEST = 1, len(prompts.RATING_OPTIONS)  # the scale: digits 1..9


def digit_distribution(logprobs: list[float]) -> list[float]:
    """P(digit) renormalised over the nine digits (the judge's other tokens left out)."""
    top = max(logprobs)
    if top == -math.inf:
        return [1 / len(logprobs)] * len(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def remove_batch_prior(distributions: list[list[float]]) -> list[list[float]]:
    """Each distribution divided by the batch's mean distribution, renormalised (see module)."""
    if len(distributions) < 2:
        return [list(d) for d in distributions]
    prior = [statistics.fmean(column) for column in zip(*distributions, strict=True)]
    out = []
    for dist in distributions:
        weights = [p / q if q > 0 else 0.0 for p, q in zip(dist, prior, strict=True)]
        total = sum(weights)  # > 0: a digit this distribution gives mass has a prior above 0
        out.append([w / total for w in weights])
    return out


def expected_digit(distribution: list[float]) -> float:
    """Σ d·P(d): the expected rating on the 1..9 scale."""
    return sum((d + LOWEST) * p for d, p in enumerate(distribution))


def to_unit(score: float) -> float:
    """A 1..9 score mapped to [0, 1] (RL rewards)."""
    return (score - LOWEST) / (HIGHEST - LOWEST)


@dataclass(frozen=True)
class Rating:
    raw: float  # expected rating from the judge's own distribution, 1..9
    score: float  # expected rating with the batch's digit prior removed, 1..9


def rate(judge, chats: list, tokens=None, role: str = "judge", on_done=None) -> list[Rating]:
    """Rate every chat (from `prompts.rating_chat`) in one engine call; the prior is removed
    over all of them. `tokens`: a `TokenCounter` to count the judge's prompt tokens and engine
    time in; `on_done`: the engine's progress callback (`base.Engine`)."""
    if not chats:
        return []
    with tokens.timed(role, judge) if tokens is not None else nullcontext():
        scored = judge.score_options(
            chats, prompts.RATING_OPTIONS, prompts.RATING_ANSWER_PREFIX, on_done=on_done
        )
    if tokens is not None:
        tokens.add(role, prompt_tokens=sum(s.prompt_tokens for s in scored))
    raw = [digit_distribution(s.logprobs) for s in scored]
    calibrated = remove_batch_prior(raw)
    return [
        Rating(expected_digit(r), expected_digit(c)) for r, c in zip(raw, calibrated, strict=True)
    ]


def preference(score_a: float, score_b: float, tau: float) -> float:
    """P(a preferred over b) = σ((s_a − s_b) / τ), computed without overflow."""
    return sigmoid((score_a - score_b) / tau)


def best_and_worst(scores: list[float], texts: list[str]) -> tuple[int, int]:
    """Indices of the best- and worst-rated responses (UltraFeedback's best-vs-worst pair).

    Ties go to the earlier response; the worst is sought among responses whose text differs
    from the best's, so the pair is never a response against its own copy.
    """
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    others = [i for i in range(len(scores)) if texts[i].strip() != texts[best].strip()]
    worst = min(others, key=lambda i: (scores[i], i))
    return best, worst
