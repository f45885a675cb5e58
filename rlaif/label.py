"""`rlaif label`: soft AI preference labels from constitution principles, judged in both orders.

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
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace

from rlaif import prompts
from rlaif.constitution import Constitution, load_constitution, resolve_constitution_path
from rlaif.diagnostics import Judgement, format_diagnostics, judge_diagnostics
from rlaif.engines import EngineSettings, Sampling, make_engine, resolve_engine_name
from rlaif.errors import UserError
from rlaif.files import read_jsonl
from rlaif.generate import derived_seed
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, resolve_model_for
from rlaif.pairs import PairRecord, parse_pair_records
from rlaif.shard import Shard, manifest_fields, select
from rlaif.stage import publish, run_in_chunks, settings_fingerprint

METHODS = ("probabilities", "generate")


@dataclass
class LabelConfig:
    pairs: str
    output: str
    constitution: str = "harmless"
    judge_model: str = EMBEDDED_ALIAS
    principles_per_pair: str = "1"  # a count, or "all"
    method: str = "probabilities"
    cot: bool = False
    clamp_low: float = 0.4
    clamp_high: float = 0.6
    max_new_tokens: int = 256  # rationale (--cot) or verdict (--method generate)
    seed: int = 0
    chunk_size: int = 256
    force: bool = False
    engine: EngineSettings = field(default_factory=EngineSettings)
    shard: Shard | None = None  # this machine's share of the pairs (--shard I/N)

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
        if self.chunk_size < 1 or self.max_new_tokens < 1:
            raise UserError("--chunk-size and --max-new-tokens must be at least 1")


def sample_principles(constitution: Constitution, cfg: LabelConfig, record_id: str):
    if cfg.principles_per_pair == "all":
        return list(constitution.principles)
    k = min(int(cfg.principles_per_pair), len(constitution.principles))
    rng = random.Random(derived_seed(cfg.seed, "label-principles", record_id))
    return rng.sample(constitution.principles, k)


def presented_order(seed: int, record: PairRecord) -> tuple[tuple[str, str], int | None]:
    """The pair in a seeded random order, and the reference's index in that order.

    Inputs often list the preferred response first (chosen, rejected); keeping that order would
    make the judge's position bias look like agreement in the label-balance figures.
    """
    swap = random.Random(derived_seed(seed, "label-order", record.id)).random() < 0.5
    a, b = record.responses
    reference = record.reference
    if swap:
        a, b = b, a
        reference = None if reference is None else 1 - reference
    return (a, b), reference


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


class _Counter:
    def __init__(self):
        self.tokens = {"judge_prompt_tokens": 0, "judge_completion_tokens": 0}

    def prompts(self, n: int):
        self.tokens["judge_prompt_tokens"] += n

    def completions(self, n: int):
        self.tokens["judge_completion_tokens"] += n


def judge_chunk(chunk, judge, cfg: LabelConfig, constitution, counter: _Counter, advance):
    # One entry per (record, principle, order): everything goes to the engine in one batch.
    jobs = []
    for record in chunk:
        (a, b), reference = presented_order(cfg.seed, record)
        for principle in sample_principles(constitution, cfg, record.id):
            for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
                chat = prompts.preference_chat(
                    record.prompt, principle.preference, first, second, cot=cfg.cot
                )
                jobs.append((record, (a, b), reference, principle, order, chat))
    chats = [job[-1] for job in jobs]
    p_option_a, rationales, abstained = _p_option_a(chats, jobs, judge, cfg, counter)
    advance(len(chunk))

    judgements: dict[str, dict] = {}
    for i, (record, pair, reference, principle, order, _) in enumerate(jobs):
        entry = judgements.setdefault(
            record.id, {"pair": pair, "reference": reference, "record": record, "by_principle": {}}
        )
        by = entry["by_principle"].setdefault(principle.id, {})
        by[order] = (p_option_a[i], rationales[i], abstained[i])
    return [_row(entry, judge.model_id, cfg) for entry in judgements.values()]


def _p_option_a(chats, jobs, judge, cfg: LabelConfig, counter: _Counter):
    """For each chat, P(option A) (None for an abstention), the rationale, and abstention."""
    n = len(chats)
    rationales: list[str | None] = [None] * n
    if cfg.method == "generate" or cfg.cot:
        greedy = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
        outs = judge.generate(chats, greedy, [0] * n)
        counter.prompts(sum(o.prompt_tokens for o in outs))
        counter.completions(sum(o.completion_tokens for o in outs))
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
    scores = judge.score_options(chats, prompts.PREFERENCE_OPTIONS, answer_prefix=prefix)
    counter.prompts(sum(s.prompt_tokens for s in scores))
    probs = [normalise(s.logprobs) for s in scores]
    if cfg.cot:
        probs = [min(max(p, cfg.clamp_low), cfg.clamp_high) for p in probs]
    return probs, rationales, [False] * n


def _row(entry: dict, judge_id: str, cfg: LabelConfig) -> dict:
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
    first_wins = p >= 0.5
    chosen, rejected = (a, b) if first_wins else (b, a)
    return {
        "id": record.id,
        "prompt": record.prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p if first_wins else 1.0 - p,
        "responses": [a, b],
        "p": p,
        "judgements": judgements,
        "position_consistent": all(j["consistent"] for j in judgements),
        "principle_ids": [j["principle_id"] for j in judgements],
        "reference": entry["reference"],
        "source": record.source,
        "method": cfg.method + ("+cot" if cfg.cot else ""),
        "judge_model": judge_id,
    }


def run(cfg: LabelConfig) -> dict:
    """Label every pair; returns the manifest (with judge diagnostics) and prints the report."""
    started = time.time()
    rows, input_sha = read_jsonl(cfg.pairs)
    parsed = parse_pair_records(cfg.pairs, rows)
    # Checked on the whole input, so that every shard of it fails or none does; a shard that
    # happens to own no pair to judge writes an empty output, and merges like any other.
    if all(r.identical for r in parsed):
        raise UserError(f"{cfg.pairs}: every pair has two identical responses; nothing to judge")
    mine = select(parsed, cfg.shard)
    if cfg.shard:
        print(f"shard {cfg.shard}: {len(mine)} of {len(parsed)} pairs", file=sys.stderr)
    records = [r for r in mine if not r.identical]
    skipped = len(mine) - len(records)  # per shard, so the shards' counts add up
    if skipped:
        print(f"skipping {skipped} pairs whose two responses are identical", file=sys.stderr)
    constitution = load_constitution(resolve_constitution_path(cfg.constitution))
    engine_name = resolve_engine_name(cfg.engine.engine)
    judge_model = resolve_model_for(cfg.judge_model, engine_name)
    settings = replace(cfg.engine, engine=engine_name)
    fingerprint = settings_fingerprint(
        cfg,
        "pairs",
        engine=asdict(settings),
        input_sha256=input_sha,
        constitution_sha256=constitution.sha256,
        judge_model_sha256=judge_model.source_sha256,
    )
    counter = _Counter()
    judge = None

    def process(chunk, advance):
        nonlocal judge
        if judge is None:  # not loaded at all when a resumed run has nothing left to do
            judge = make_engine(judge_model.path, settings, cfg.seed)
        return judge_chunk(chunk, judge, cfg, constitution, counter, advance)

    result = run_in_chunks(
        output=cfg.output,
        fingerprint=fingerprint,
        force=cfg.force,
        records=records,
        chunk_size=cfg.chunk_size,
        steps_per_record=1,
        process_chunk=process,
        description="label",
    )
    diagnostics = judge_diagnostics(result.rows)
    manifest = build_manifest(
        "label",
        cfg,
        inputs={"pairs": {"path": cfg.pairs, "sha256": input_sha}},
        models={"judge": judge_model.describe(), "engine": engine_name},
        constitution=constitution,
        counts={
            "records": len(result.rows),
            "skipped_identical": skipped,
            "resumed": result.resumed,
            "labelled": len(result.rows) - result.resumed,
            "judgements": sum(len(r["judgements"]) for r in result.rows),
        },
        tokens=counter.tokens,
        started=started,
        extra={"diagnostics": diagnostics, **manifest_fields(cfg.shard, records)},
    )
    publish(cfg.output, result.rows, manifest)
    print(format_diagnostics(diagnostics), file=sys.stderr)
    if judge is not None:
        judge.close()
    return manifest
