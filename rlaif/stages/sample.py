"""`rlaif sample`: several sampled responses per prompt, written as pairs for `rlaif label`.

As in Constitutional AI, the pairs a preference model learns from can come from any policy
(there, the SL-CAI model); this stage makes them with one batched engine call per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.engines import Sampling
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import EMBEDDED_ALIAS
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.progress import Progress, TokenCounter
from rlaif.plumbing.records import parse_prompt_records
from rlaif.plumbing.seeds import derived_seed
from rlaif.stages.runner import RecordStage, ShardedRecordSettings, StageInput


@dataclass(kw_only=True)
class SampleConfig(ShardedRecordSettings):
    """Sample responses per prompt, written as pairs (a prompt and two responses) for labelling,
    or with --one-row all of a prompt's responses in one row (for `label --method rating`).

    Examples:

      rlaif sample examples/prompts.jsonl -o pairs.jsonl --n 2

      rlaif sample prompts.jsonl -o pairs.jsonl -m ./sft-model --n 4 --temperature 0.9

      rlaif sample prompts.jsonl -o pairs-1.jsonl --shard 1/2

      rlaif sample prompts.jsonl -o samples.jsonl --n 4 --one-row
    """

    prompts: str = option(help="JSONL of prompts, as for generate ('-': stdin).", argument=True)
    model: str = option(
        EMBEDDED_ALIAS, help="Policy: HF folder, hub id, .gguf or alias.", flags=("-m", "--model")
    )
    # responses per prompt; each consecutive two make one pair
    n: int = option(
        2, help="Responses per prompt (even unless --one-row; written as pairs).", flags=("--n",)
    )
    # label --method rating rates each response alone and keeps the best-vs-worst pair
    one_row: bool = option(
        False,
        help="Write each prompt's --n responses as one row, for `label --method rating`.",
        flags=("--one-row",),
    )
    temperature: float = option(1.0, help="Sampling temperature (> 0).")
    top_p: float = option(0.95, help="Nucleus sampling mass.")
    max_new_tokens: int = option(256, help="Longest response.")

    def __post_init__(self):
        super().__post_init__()
        if self.n < 2 or (self.n % 2 and not self.one_row):
            raise UserError(
                f"--n {self.n}: an even number >= 2 (responses are written as pairs; any"
                " number >= 2 with --one-row)"
            )
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}: must be > 0 to sample")
        if not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise UserError("--top-p in (0, 1]; --max-new-tokens >= 1")


def sample_chunk(
    chunk, engine, cfg: SampleConfig, tokens: TokenCounter, progress: Progress
) -> list[dict]:
    chats = [r.messages for r in chunk for _ in range(cfg.n)]
    seeds = [derived_seed(cfg.seed, "sample", r.id, k) for r in chunk for k in range(cfg.n)]
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    with tokens.timed("", engine):
        outs = engine.generate(chats, sampling, seeds, on_done=progress.on_done(len(chats)))
    tokens.add_completions("", outs)  # one model: plain token counts
    rows = []
    for i, record in enumerate(chunk):
        texts = [o.text for o in outs[i * cfg.n : (i + 1) * cfg.n]]
        rows.append({"id": record.id, "prompt": record.messages, "samples": texts})
    return rows


def pairs_of(row: dict, one_row: bool = False) -> list[dict]:
    """The `responses` pair rows for `rlaif label` from one prompt's samples (one row of all
    of them with `one_row`)."""
    samples = row["samples"]
    if one_row:
        return [{"id": row["id"], "prompt": row["prompt"], "responses": samples}]
    n_pairs = len(samples) // 2
    if n_pairs == 1:
        return [{"id": row["id"], "prompt": row["prompt"], "responses": samples}]
    # `prompt_id` says which prompt (and so which shard) a pair comes from.
    return [
        {
            "id": f"{row['id']}:{k}",
            "prompt_id": row["id"],
            "prompt": row["prompt"],
            "responses": samples[2 * k : 2 * k + 2],
        }
        for k in range(n_pairs)
    ]


@one_run
def run(cfg: SampleConfig) -> dict:
    with RecordStage(
        "sample",
        cfg,
        StageInput("prompts", cfg.prompts, parse_prompt_records),
        models={"policy": cfg.model},
    ) as stage:
        if stage.up_to_date:
            return stage.up_to_date

        def process(chunk, progress):
            return sample_chunk(chunk, stage.engine("policy"), cfg, stage.tokens, progress)

        result = stage.run_chunks(stage.records, process, unit="prompt")
        pair_rows, lines = [], []
        for record, row in zip(stage.records, result.rows, strict=True):
            pairs = pairs_of(row, cfg.one_row)
            pair_rows += pairs
            lines += [record.line] * len(pairs)
        identical = sum(len(set(p["responses"])) == 1 for p in pair_rows)
        return stage.publish(
            pair_rows,
            counts={
                "prompts": len(result.rows),
                "pairs": len(pair_rows),
                "records": len(pair_rows),  # rows written, as in every record stage
                "resumed": result.resumed,
                "identical_pairs": identical,
            },
            input_lines=lines,
        )
