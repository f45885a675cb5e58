"""Judging a pair against constitution principles, in both orders: the core of `rlaif label`,
shared with `rlaif eval winrate`.

For each pair, `principles_per_pair` principles are sampled; for each, the judge sees the pair
as (A, B) and again swapped, and we read the next-token probabilities of the option letters
(soft labels, as in Constitutional AI and RLAIF) instead of parsing generated text. Averaging
the two orders cancels position bias; how often the two orders disagree is reported, so the
user learns how far to trust the judge.

Departures from the papers, named where they are made:
- Probabilities are normalised over the two option letters (both papers do the same), summed
  over the tokenizer's variants of each letter (`A`, ` A`).
- With `--cot`, each order's probability is clamped into [clamp_low, clamp_high] (CAI used
  40–60%, since chain-of-thought makes the judge overconfident).

`--method rating` is pointwise instead (see `rlaif.judging.rating`): each response is rated alone
against each sampled principle, so n responses cost n judge passes per principle, no order
exists to be biased by, and a row of more than two responses becomes its best-vs-worst pair.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rlaif.engines import Sampling
from rlaif.judging import prompts, rating
from rlaif.judging.constitution import Constitution
from rlaif.judging.diagnostics import Judgement
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.options import option
from rlaif.plumbing.pairs import PairRecord
from rlaif.plumbing.progress import Progress, TokenCounter
from rlaif.plumbing.seeds import derived_seed

METHODS = ("probabilities", "generate", "rating")


@dataclass(frozen=True)
class JudgingSettings:
    """How the judge compares two responses (label, eval winrate)."""

    principles_per_pair: str = option(
        "1",
        help="Principles sampled per pair (averaged), or 'all'.",
        flags=("-k", "--principles-per-pair"),
    )
    method: str = option(
        "probabilities",
        help="probabilities: read the option letters' probabilities; generate: parse a"
        " generated verdict (for engines without log-probabilities); rating: rate each"
        " response alone, 1-9 (no position bias; rows may hold more than two responses).",
    )
    cot: bool = option(
        False, help="Generate a rationale first, then score the answer.", flags=("--cot",)
    )
    clamp_low: float = option(0.4, help="--cot: lowest probability kept.")
    clamp_high: float = option(0.6, help="--cot: highest probability kept.")
    max_new_tokens: int = option(
        256, help="Longest rationale (--cot) or verdict (--method generate)."
    )
    # s is the expected rating on the 1-9 scale: with tau 1, one point better gives p = 0.73
    tau: float = option(
        1.0,
        help="--method rating: p = sigmoid((s_a - s_b) / tau), s the expected 1-9 rating.",
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        if self.principles_per_pair != "all":
            try:
                if int(self.principles_per_pair) < 1:
                    raise ValueError
            except ValueError:
                raise UserError(
                    f"--principles-per-pair {self.principles_per_pair}: a count >= 1, or 'all'"
                ) from None
        if not 0 <= self.clamp_low <= 0.5 <= self.clamp_high <= 1:
            raise UserError(
                f"--clamp-low/--clamp-high {self.clamp_low}/{self.clamp_high}:"
                " need 0 <= low <= 0.5 <= high <= 1"
            )
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if not self.tau > 0:
            raise UserError(f"--tau {self.tau}: must be > 0")
        if self.method == "rating" and self.cot:
            raise UserError("--cot: not with --method rating (it reads a digit, not a verdict)")


def sample_principles(constitution: Constitution, cfg: JudgingSettings, seed: int, record_id: str):
    if cfg.principles_per_pair == "all":
        return list(constitution.principles)
    k = min(int(cfg.principles_per_pair), len(constitution.principles))
    rng = random.Random(derived_seed(seed, "label-principles", record_id))
    return rng.sample(constitution.principles, k)


def presented_order(seed: int, record: PairRecord) -> tuple[tuple[str, str], int | None]:
    """The pair in a seeded random order, and the reference's index in that order.

    Inputs often list the preferred response first (chosen, rejected); keeping that order would
    make the judge's position bias look like agreement in the label-balance figures.
    """
    swap = seeded_swap(seed, record.id)
    a, b = record.responses
    reference = record.reference
    if swap:
        a, b = b, a
        reference = None if reference is None else 1 - reference
    return (a, b), reference


def seeded_swap(seed: int, record_id: str) -> bool:
    return random.Random(derived_seed(seed, "label-order", record_id)).random() < 0.5


def normalise(logprobs: list[float]) -> float:
    """P(first option) from the two options' log-probabilities, renormalised over the pair."""
    first, second = logprobs
    top = max(first, second)
    if top == -math.inf:
        return 0.5
    ea, eb = math.exp(first - top), math.exp(second - top)
    return ea / (ea + eb)


def combine_orders(p_first_in_ab: float | None, p_first_in_ba: float | None):
    """P(responses[0] preferred) from both presentations.

    In order (a, b) the judge's P(option A) is P(a preferred); in order (b, a) P(a preferred)
    is its P(option B) = 1 − P(option A). Missing orders (abstentions) are left out.
    """
    p_ab = p_first_in_ab
    p_ba = None if p_first_in_ba is None else 1.0 - p_first_in_ba
    present = [p for p in (p_ab, p_ba) if p is not None]
    return p_ab, p_ba, (sum(present) / len(present) if present else 0.5)


def judge_jobs(record: PairRecord, cfg: JudgingSettings, seed: int, constitution) -> list[tuple]:
    """(record, pair, reference, principle, order, chat) for each question the judge is asked
    about one pair: each sampled principle, in both orders. With --method rating, one
    (record, principle, index, chat) per principle and response instead."""
    if cfg.method == "rating":
        return [
            (record, principle, i, prompts.rating_chat(record.prompt, text, principle.preference))
            for principle in sample_principles(constitution, cfg, seed, record.id)
            for i, text in enumerate(record.responses)
        ]
    (a, b), reference = presented_order(seed, record)
    jobs = []
    for principle in sample_principles(constitution, cfg, seed, record.id):
        for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
            chat = prompts.preference_chat(
                record.prompt, principle.preference, first, second, cot=cfg.cot
            )
            jobs.append((record, (a, b), reference, principle, order, chat))
    return jobs


def too_long(
    records: list[PairRecord], cfg: JudgingSettings, seed: int, constitution, tokenizer, limit: int
) -> list[str]:
    """Ids of the pairs whose judge prompts (plus the tokens the judge writes) do not fit a
    context window of `limit` tokens."""
    from rlaif.engines.base import render_prompt_ids

    writes = cfg.max_new_tokens if cfg.cot or cfg.method == "generate" else 1
    # --cot scores after its rationale: the longest such prompt adds the rationale and prefix.
    prefix = {"generate": "", "rating": prompts.RATING_ANSWER_PREFIX}.get(
        cfg.method, prompts.PREFERENCE_ANSWER_PREFIX
    )
    out = []
    for record in records:
        for job in judge_jobs(record, cfg, seed, constitution):
            if len(render_prompt_ids(tokenizer, job[-1], prefix)) + writes > limit:
                out.append(record.id)
                break
    return out


def judge_chunk(
    chunk,
    judge,
    cfg: JudgingSettings,
    seed: int,
    constitution,
    tokens: TokenCounter,
    progress: Progress | None = None,
) -> list[dict]:
    """One labelled row per pair record of `chunk` (see the module's docstring); `progress`:
    the chunk's share of the stage's bar, filled as the judge's requests finish."""
    progress = progress or Progress()
    if cfg.method == "rating":
        scores = rating_scores(chunk, judge, cfg, seed, constitution, tokens, progress)
        return [rating_row(r, scores[r.id], judge.model_id, cfg, seed) for r in chunk]
    # One entry per (record, principle, order): everything goes to the engine in one batch.
    jobs = [job for record in chunk for job in judge_jobs(record, cfg, seed, constitution)]
    chats = [job[-1] for job in jobs]
    p_option_a, rationales, abstained = _p_option_a(chats, judge, cfg, tokens, progress)

    judgements: dict[str, dict] = {}
    for i, (record, pair, reference, principle, order, _) in enumerate(jobs):
        entry = judgements.setdefault(
            record.id, {"pair": pair, "reference": reference, "record": record, "by_principle": {}}
        )
        by = entry["by_principle"].setdefault(principle.id, {})
        by[order] = (p_option_a[i], rationales[i], abstained[i])
    return [_row(entry, judge.model_id, cfg) for entry in judgements.values()]


def _p_option_a(chats, judge, cfg: JudgingSettings, tokens: TokenCounter, progress: Progress):
    """For each chat, P(option A) (None for an abstention), the rationale, and abstention."""
    n = len(chats)
    rationales: list[str | None] = [None] * n
    # --cot: the rationales, then the scores, each half of the bar's share
    steps = iter(progress.split(2 if cfg.cot else 1))
    if cfg.method == "generate" or cfg.cot:
        greedy = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
        with tokens.timed("judge", judge):
            outs = judge.generate(chats, greedy, [0] * n, on_done=next(steps).on_done(n))
        tokens.add_completions("judge", outs)
        rationales = [o.text for o in outs]
    if cfg.method == "generate":
        verdicts = [prompts.parse_verdict(text) for text in rationales]
        # An unparseable verdict is an abstention (p = 0.5, flagged), never a crash.
        return (
            [None if v is None else 1.0 - v for v in verdicts],
            rationales,
            [v is None for v in verdicts],
        )
    prefix = (
        [prompts.cot_answer_prefix(r) for r in rationales]
        if cfg.cot
        else prompts.PREFERENCE_ANSWER_PREFIX
    )
    with tokens.timed("judge", judge):
        scores = judge.score_options(
            chats, prompts.PREFERENCE_OPTIONS, answer_prefix=prefix, on_done=next(steps).on_done(n)
        )
    tokens.add("judge", prompt_tokens=sum(s.prompt_tokens for s in scores))
    probs = [normalise(s.logprobs) for s in scores]
    if cfg.cot:
        probs = [min(max(p, cfg.clamp_low), cfg.clamp_high) for p in probs]
    return probs, rationales, [False] * n


def _row(entry: dict, judge_id: str, cfg: JudgingSettings) -> dict:
    record: PairRecord = entry["record"]
    a, b = entry["pair"]
    judgements = []
    for principle_id, orders in entry["by_principle"].items():
        p_ab_raw, rationale_ab, abst_ab = orders["ab"]
        p_ba_raw, rationale_ba, abst_ba = orders["ba"]
        p_ab, p_ba, p = combine_orders(p_ab_raw, p_ba_raw)
        verdict = Judgement(principle_id, p_ab, p_ba, abst_ab or abst_ba)
        judgements.append(
            {
                "principle_id": principle_id,
                "p_ab": p_ab,
                "p_ba": p_ba,
                "p": p,
                "consistent": verdict.paired and verdict.consistent(),
                "abstained": verdict.abstained,
                "rationale_ab": rationale_ab,
                "rationale_ba": rationale_ba,
            }
        )
    p = sum(j["p"] for j in judgements) / len(judgements)  # ensemble over principles
    return label_row(
        record,
        (a, b),
        p,
        judgements,
        position_consistent=all(j["consistent"] for j in judgements),
        reference=entry["reference"],
        method=cfg.method + ("+cot" if cfg.cot else ""),
        judge_model=judge_id,
    )


def label_row(record: PairRecord, pair: tuple[str, str], p: float, judgements, **extra) -> dict:
    """A label row in TRL's preference format: p is P(pair[0] preferred), averaged over the
    principles' `judgements`; `extra` adds the method's own fields."""
    a, b = pair
    first_wins = p >= 0.5
    chosen, rejected = (a, b) if first_wins else (b, a)
    row = {
        "id": record.id,
        "prompt": record.prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p if first_wins else 1.0 - p,
        "responses": [a, b],
        "p": p,
        "judgements": judgements,
        "principle_ids": [j["principle_id"] for j in judgements],
        "source": record.source,
        **extra,
    }
    # The input's own fields (groups such as XSTest's `type`) never replace a label field.
    return row | {k: v for k, v in record.fields.items() if k not in row}


def rating_scores(
    chunk,
    judge,
    cfg: JudgingSettings,
    seed: int,
    constitution,
    tokens: TokenCounter,
    progress: Progress | None = None,
) -> dict[str, dict[str, list[float]]]:
    """--method rating: {record id: {principle id: each response's score (1..9)}}, the whole
    chunk rated in one batch, so the digit prior is removed over all of it."""
    jobs = [job for record in chunk for job in judge_jobs(record, cfg, seed, constitution)]
    on_done = (progress or Progress()).on_done(len(jobs))
    ratings = rating.rate(judge, [job[-1] for job in jobs], tokens, on_done=on_done)
    out: dict[str, dict[str, list[float]]] = {}
    for (record, principle, i, _), r in zip(jobs, ratings, strict=True):
        by = out.setdefault(record.id, {}).setdefault(
            principle.id, [math.nan] * len(record.responses)
        )
        by[i] = r.score
    return out


def mean_scores(by_principle: dict[str, list[float]]) -> list[float]:
    """Each response's score averaged over the principles."""
    columns = zip(*by_principle.values(), strict=True)
    return [sum(c) / len(c) for c in columns]


def rating_row(
    record: PairRecord,
    by_principle: dict[str, list[float]],
    judge_id: str,
    cfg: JudgingSettings,
    seed: int,
    pick: tuple[int, int] | None = None,
) -> dict:
    """The label row of a rated record: its best-vs-worst pair (any two responses are that
    pair), shown in the same seeded order as the pairwise methods use, so label balance
    means the same thing. `pick`: the (best, worst) indices chosen elsewhere (by a jury)."""
    texts = list(record.responses)
    scores = mean_scores(by_principle)
    best, worst = pick or rating.best_and_worst(scores, texts)
    first, second = (worst, best) if seeded_swap(seed, record.id) else (best, worst)
    judgements = [
        {
            "principle_id": principle_id,
            # No order exists: position consistency does not apply (None, not "consistent").
            "p_ab": None,
            "p_ba": None,
            "p": rating.preference(s[first], s[second], cfg.tau),
            "scores": [s[first], s[second]],
            "consistent": None,
            "abstained": False,
        }
        for principle_id, s in by_principle.items()
    ]
    p = sum(j["p"] for j in judgements) / len(judgements)
    reference = record.reference
    mapped = {first: 0, second: 1}.get(reference) if reference is not None else None
    return label_row(
        record,
        (texts[first], texts[second]),
        p,
        judgements,
        position_consistent=None,
        reference=mapped,
        method="rating",
        judge_model=judge_id,
        # every input response's score (input order) and which two the pair holds
        scores=scores,
        picked=[first, second],
    )
