"""`rlaif generate`: answer prompts, then critique and revise the answers against a constitution.

For each prompt the policy model answers; then, for each of `rounds` rounds, the judge critiques
the current answer against a principle sampled for that round and rewrites it. All prompts of a
chunk go through each step together, so the engine always sees full batches.

Departure from Constitutional AI: the paper prompts a pretrained model with a few-shot text
transcript; we use the chat template of an instruction-tuned judge, with the critique and the
revision request each as one user turn quoting the conversation, and the constitution's worked
examples fenced off as illustrations (`rlaif.judging.prompts`). A revision that is empty or
repeats a worked example's words is not taken: the previous answer stays, and the step says why.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlaif.engines import Sampling
from rlaif.judging import prompts
from rlaif.judging.constitution import Constitution, constitution_option
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import EMBEDDED_ALIAS
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.progress import Progress, TokenCounter
from rlaif.plumbing.records import PromptRecord, parse_prompt_records
from rlaif.plumbing.seeds import derived_seed
from rlaif.stages.runner import RecordStage, ShardedRecordSettings, StageInput


@dataclass(kw_only=True)
class GenerateConfig(ShardedRecordSettings):
    """Answer prompts, then critique and revise each answer against a constitution.

    Each output row keeps every step (principle, critique, revision) and TRL-ready fields:
    prompt/chosen/rejected (revision preferred to the first answer) and messages (for SFT).
    An interrupted run resumes from OUT.partial.jsonl when run again.

    Examples:

      rlaif generate examples/prompts.jsonl -o revisions.jsonl

      rlaif generate prompts.jsonl -o out.jsonl -c constitutions/helpful.yaml --rounds 3 --engine hf

      rlaif generate prompts.jsonl -o part-2.jsonl --shard 2/4
    """

    prompts: str = option(
        help='JSONL of {"prompt": ...} or {"messages": [...]} rows (\'-\' for stdin).',
        argument=True,
    )
    constitution: str = constitution_option()
    policy_model: str = option(
        EMBEDDED_ALIAS,
        help="Model that answers: HF folder, hub id, .gguf or alias.",
        flags=("-m", "--policy-model"),
    )
    # None: the policy model judges itself, as in the CAI paper
    judge_model: str | None = option(
        None, help="Model that critiques and revises (default: the policy model)."
    )
    rounds: int = option(2, help="Critique→revision rounds per prompt.")
    max_new_tokens: int = option(256, help="Longest answer, critique or revision.")
    temperature: float = option(0.7, help="Sampling temperature (0: greedy).")
    top_p: float = option(0.95, help="Nucleus sampling mass.")

    def __post_init__(self):
        super().__post_init__()
        if self.rounds < 1:
            raise UserError(f"--rounds {self.rounds}: must be at least 1")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1]")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p)


def sample_principle(constitution: Constitution, seed: int, record_id: str, round_: int):
    rng = random.Random(derived_seed(seed, "principle", record_id, round_))
    return rng.choice(constitution.principles)


def revise_chunk(
    chunk: list[PromptRecord],
    policy,
    judge,
    cfg: GenerateConfig,
    constitution: Constitution,
    tokens: TokenCounter,
    progress: Progress,
) -> list[dict]:
    sampling = cfg.sampling
    # The bar's share of the chunk in equal steps: the answers, then each round's critiques
    # and revisions (one request per prompt each).
    calls = iter(progress.split(1 + 2 * cfg.rounds))
    with tokens.timed("policy", policy):
        initial = policy.generate(
            [r.messages for r in chunk],
            sampling,
            [derived_seed(cfg.seed, "initial", r.id) for r in chunk],
            on_done=next(calls).on_done(len(chunk)),
        )
    tokens.add_completions("policy", initial)
    current = [c.text for c in initial]
    steps: list[list[dict]] = [[] for _ in chunk]
    examples = constitution.examples
    for round_ in range(1, cfg.rounds + 1):
        chosen = [sample_principle(constitution, cfg.seed, r.id, round_) for r in chunk]
        with tokens.timed("judge", judge):
            critiques = judge.generate(
                [
                    prompts.critique_chat(r.messages, cur, p.critique, examples)
                    for r, cur, p in zip(chunk, current, chosen, strict=True)
                ],
                sampling,
                [derived_seed(cfg.seed, "critique", r.id, round_) for r in chunk],
                on_done=next(calls).on_done(len(chunk)),
            )
        tokens.add_completions("judge", critiques)
        with tokens.timed("judge", judge):
            revisions = judge.generate(
                [
                    prompts.revision_chat(r.messages, cur, p.critique, c.text, p.revision, examples)
                    for r, cur, p, c in zip(chunk, current, chosen, critiques, strict=True)
                ],
                sampling,
                [derived_seed(cfg.seed, "revision", r.id, round_) for r in chunk],
                on_done=next(calls).on_done(len(chunk)),
            )
        tokens.add_completions("judge", revisions)
        for i, (p, c, rev) in enumerate(zip(chosen, critiques, revisions, strict=True)):
            revision = prompts.clean_revision(rev.text)
            # An empty revision would erase the answer, and one that repeats the constitution's
            # worked example answers another conversation: keep the previous answer, say so.
            copied = prompts.copies_example(revision, examples)
            steps[i].append(
                {
                    "round": round_,
                    "principle_id": p.id,
                    "critique": c.text,
                    "revision": revision,
                    "empty_revision": not revision,
                    "copied_example": copied,
                }
            )
            if revision and not copied:
                current[i] = revision
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


@one_run
def run(cfg: GenerateConfig) -> dict:
    """Run the stage; returns its manifest. Input problems raise UserError before any work."""
    with RecordStage(
        "generate",
        cfg,
        StageInput("prompts", cfg.prompts, parse_prompt_records),
        # One engine per distinct model: when the policy judges itself, it is loaded once.
        models={"policy": cfg.policy_model, "judge": cfg.judge_model},
        constitution=cfg.constitution,
    ) as stage:
        if stage.up_to_date:
            return stage.up_to_date

        def process(chunk, progress):
            policy, judge = stage.engine("policy"), stage.engine("judge")
            return revise_chunk(
                chunk, policy, judge, cfg, stage.constitution, stage.tokens, progress
            )

        result = stage.run_chunks(stage.records, process, unit="prompt")
        steps = [s for row in result.rows for s in row["revisions"]]
        return stage.publish(
            result.rows,
            counts={
                "records": len(result.rows),
                "resumed": result.resumed,
                "generated": len(result.rows) - result.resumed,
                "empty_revisions": sum(s["empty_revision"] for s in steps),
                # .get: rows resumed from a run before this check have no such field
                "copied_examples": sum(s.get("copied_example", False) for s in steps),
            },
            input_lines=[r.line for r in stage.records],
        )
