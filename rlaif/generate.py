"""`rlaif generate`: answer prompts, then critique and revise the answers against a constitution.

For each prompt the policy model answers; then, for each of `rounds` rounds, the judge critiques
the current answer against a principle sampled for that round and rewrites it. All prompts of a
chunk go through each step together, so the engine always sees full batches.

Departure from Constitutional AI: the paper prompts a pretrained model with a few-shot text
transcript; we use the chat template of an instruction-tuned judge, with the critique and revision
requests as user turns (few-shot examples, when the constitution has them, as earlier turns).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace

from rlaif import prompts
from rlaif.constitution import Constitution, load_constitution, resolve_constitution_path
from rlaif.engines import EngineSettings, Sampling, make_engine, resolve_engine_name
from rlaif.errors import UserError
from rlaif.files import read_jsonl
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, resolve_model_for
from rlaif.records import PromptRecord, parse_prompt_records
from rlaif.shard import Shard, manifest_fields, select
from rlaif.stage import publish, run_in_chunks, settings_fingerprint


@dataclass
class GenerateConfig:
    prompts: str
    output: str
    constitution: str = "harmless"
    policy_model: str = EMBEDDED_ALIAS
    judge_model: str | None = None  # None: the policy model judges itself, as in the CAI paper
    rounds: int = 2
    seed: int = 0
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    chunk_size: int = 256  # the engine sees every prompt of a chunk at once; resume granularity
    force: bool = False
    engine: EngineSettings = field(default_factory=EngineSettings)
    shard: Shard | None = None  # this machine's share of the prompts (--shard I/N)

    def __post_init__(self):
        if self.rounds < 1:
            raise UserError(f"--rounds {self.rounds}: must be at least 1")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.chunk_size < 1:
            raise UserError(f"--chunk-size {self.chunk_size}: must be at least 1")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p)


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one decision (a record's step), independent of batching, chunking and resumes."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def sample_principle(constitution: Constitution, seed: int, record_id: str, round_: int):
    rng = random.Random(derived_seed(seed, "principle", record_id, round_))
    return rng.choice(constitution.principles)


class _TokenCounter:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, role: str, completions) -> None:
        for c in completions:
            for kind, n in (("prompt", c.prompt_tokens), ("completion", c.completion_tokens)):
                key = f"{role}_{kind}_tokens"
                self.counts[key] = self.counts.get(key, 0) + n


def revise_chunk(
    chunk: list[PromptRecord],
    policy,
    judge,
    cfg: GenerateConfig,
    constitution: Constitution,
    tokens: _TokenCounter,
    advance,
) -> list[dict]:
    sampling = cfg.sampling
    initial = policy.generate(
        [r.messages for r in chunk],
        sampling,
        [derived_seed(cfg.seed, "initial", r.id) for r in chunk],
    )
    tokens.add("policy", initial)
    advance(len(chunk))
    current = [c.text for c in initial]
    steps: list[list[dict]] = [[] for _ in chunk]
    examples = constitution.examples
    for round_ in range(1, cfg.rounds + 1):
        chosen = [sample_principle(constitution, cfg.seed, r.id, round_) for r in chunk]
        critiques = judge.generate(
            [
                prompts.critique_chat(r.messages, cur, p.critique, examples)
                for r, cur, p in zip(chunk, current, chosen, strict=True)
            ],
            sampling,
            [derived_seed(cfg.seed, "critique", r.id, round_) for r in chunk],
        )
        tokens.add("judge", critiques)
        advance(len(chunk))
        revisions = judge.generate(
            [
                prompts.revision_chat(r.messages, cur, p.critique, c.text, p.revision, examples)
                for r, cur, p, c in zip(chunk, current, chosen, critiques, strict=True)
            ],
            sampling,
            [derived_seed(cfg.seed, "revision", r.id, round_) for r in chunk],
        )
        tokens.add("judge", revisions)
        advance(len(chunk))
        for i, (p, c, rev) in enumerate(zip(chosen, critiques, revisions, strict=True)):
            # An empty revision would erase the answer; keep the previous one and say so.
            steps[i].append(
                {
                    "round": round_,
                    "principle_id": p.id,
                    "critique": c.text,
                    "revision": rev.text,
                    "empty_revision": not rev.text,
                }
            )
            if rev.text:
                current[i] = rev.text
    return [
        _output_row(r, init.text, final, record_steps, policy.model_id, judge.model_id)
        for r, init, final, record_steps in zip(chunk, initial, current, steps, strict=True)
    ]


def _output_row(record, initial: str, final: str, steps, policy_id, judge_id) -> dict:
    return {
        "id": record.id,
        "prompt": record.messages,
        "initial_response": initial,
        "revisions": steps,
        "final_response": final,
        # TRL conversational preference format: the revision is preferred to the first answer.
        "chosen": [{"role": "assistant", "content": final}],
        "rejected": [{"role": "assistant", "content": initial}],
        # TRL conversational SFT format (SL-CAI trains on prompt + final revision).
        "messages": [*record.messages, {"role": "assistant", "content": final}],
        "policy_model": policy_id,
        "judge_model": judge_id,
    }


def _check_distinct_served_models(engines: dict) -> None:
    """Two model names that one server answers with its single model would make the policy
    judge itself without anyone asking for it."""
    served = [getattr(e, "model_id", None) for e in engines.values()]
    if len(served) == 2 and served[0] is not None and served[0] == served[1]:
        raise UserError(
            f"--policy-model and --judge-model both reach the server's one model {served[0]!r};"
            " serve both models (or drop --judge-model to let the policy judge itself)"
        )


def run(cfg: GenerateConfig) -> dict:
    """Run the stage; returns its manifest. Input problems raise UserError before any work."""
    started = time.time()
    rows, input_sha = read_jsonl(cfg.prompts)
    parsed = parse_prompt_records(cfg.prompts, rows)
    records = select(parsed, cfg.shard)
    if cfg.shard:
        print(f"shard {cfg.shard}: {len(records)} of {len(parsed)} prompts", file=sys.stderr)
    constitution = load_constitution(resolve_constitution_path(cfg.constitution))
    engine_name = resolve_engine_name(cfg.engine.engine)
    policy_model = resolve_model_for(cfg.policy_model, engine_name)
    judge_model = (
        resolve_model_for(cfg.judge_model, engine_name) if cfg.judge_model else policy_model
    )
    settings = replace(cfg.engine, engine=engine_name)
    fingerprint = settings_fingerprint(
        cfg,
        "prompts",
        engine=asdict(settings),
        input_sha256=input_sha,
        constitution_sha256=constitution.sha256,
        policy_model_sha256=policy_model.source_sha256,
        judge_model_sha256=judge_model.source_sha256,
    )
    engines: dict[str, object] = {}
    tokens = _TokenCounter()

    def engine_for(model) -> object:
        # One engine per distinct model: when the policy judges itself, it is loaded once.
        if model.path not in engines:
            share = 1.0 if policy_model.path == judge_model.path else 0.5
            engines[model.path] = make_engine(model.path, settings, cfg.seed, share)
            _check_distinct_served_models(engines)
        return engines[model.path]

    def process(chunk, advance):
        return revise_chunk(
            chunk,
            engine_for(policy_model),
            engine_for(judge_model),
            cfg,
            constitution,
            tokens,
            advance,
        )

    result = run_in_chunks(
        output=cfg.output,
        fingerprint=fingerprint,
        force=cfg.force,
        records=records,
        chunk_size=cfg.chunk_size,
        steps_per_record=1 + 2 * cfg.rounds,
        process_chunk=process,
        description="generate",
    )
    empty = sum(s["empty_revision"] for row in result.rows for s in row["revisions"])
    manifest = build_manifest(
        "generate",
        cfg,
        inputs={"prompts": {"path": cfg.prompts, "sha256": input_sha}},
        models={
            "policy": policy_model.describe(),
            "judge": judge_model.describe(),
            "engine": engine_name,
        },
        constitution=constitution,
        counts={
            "records": len(result.rows),
            "resumed": result.resumed,
            "generated": len(result.rows) - result.resumed,
            "empty_revisions": empty,
        },
        tokens=tokens.counts,
        started=started,
        extra=manifest_fields(cfg.shard, records),
    )
    publish(cfg.output, result.rows, manifest)
    for engine in engines.values():
        engine.close()
    return manifest
