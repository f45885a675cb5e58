"""`rlaif label`: soft AI preference labels from constitution principles, judged in both orders.

The judging itself (principles, both orders, option probabilities) is `rlaif.judging`; this
stage reads the pairs, judges them chunk by chunk and reports the judge diagnostics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rlaif.constitution import constitution_option
from rlaif.diagnostics import format_diagnostics, judge_diagnostics
from rlaif.errors import UserError
from rlaif.judging import JudgingSettings, judge_chunk
from rlaif.models import EMBEDDED_ALIAS
from rlaif.options import group, option
from rlaif.pairs import parse_pair_records
from rlaif.stage import RecordStage, ShardedRecordSettings


@dataclass(kw_only=True)
class LabelConfig(ShardedRecordSettings):
    """Label pairs of responses with the judge's preference (soft labels, both orders).

    For each pair and sampled principle the judge sees the pair as (A, B) and swapped; the
    probabilities of the letters are averaged into p (first response preferred). Rows are in
    TRL preference format (prompt, chosen, rejected) plus p_chosen, per-principle and per-order
    probabilities and position_consistent. Judge diagnostics are printed at the end and stored
    in the manifest. Any preference already in the input is kept as `reference`, used only
    for agreement figures.

    Examples:

      rlaif label pairs.jsonl -o prefs.jsonl

      rlaif label hh.jsonl -o prefs.jsonl -k all --engine hf

      rlaif label revisions.jsonl -o check.jsonl --method generate

      rlaif label pairs.jsonl -o prefs-3.jsonl --shard 3/8
    """

    pairs: str = option(
        help="JSONL of pairs: prompt+responses, prompt+chosen/rejected, HH-RLHF"
        " chosen/rejected dialogues, or `rlaif generate` output ('-' for stdin).",
        argument=True,
    )
    constitution: str = constitution_option()
    judge_model: str = option(
        EMBEDDED_ALIAS,
        help="Judge: HF folder, hub id, .gguf or alias.",
        flags=("-m", "--judge-model"),
    )
    judging: JudgingSettings = group(JudgingSettings)


def run(cfg: LabelConfig) -> dict:
    """Label every pair; returns the manifest (with judge diagnostics) and prints the report."""
    with RecordStage(
        "label",
        cfg,
        input_field="pairs",
        parse=parse_pair_records,
        models={"judge": cfg.judge_model},
        constitution=cfg.constitution,
    ) as stage:
        # Checked on the whole input, so that every shard of it fails or none does; a shard
        # that happens to own no pair to judge writes an empty output, and merges like any other.
        if all(r.identical for r in stage.parsed):
            raise UserError(
                f"{cfg.pairs}: every pair has two identical responses; nothing to judge"
            )
        records = [r for r in stage.records if not r.identical]
        skipped = len(stage.records) - len(records)  # per shard, so the shards' counts add up
        if skipped:
            print(f"skipping {skipped} pairs whose two responses are identical", file=sys.stderr)

        def process(chunk, advance):
            judge = stage.engine("judge")
            return judge_chunk(
                chunk, judge, cfg.judging, cfg.seed, stage.constitution, stage.tokens, advance
            )

        result = stage.run_chunks(records, process)
        diagnostics = judge_diagnostics(result.rows)
        manifest = stage.publish(
            result.rows,
            counts={
                "records": len(result.rows),
                "skipped_identical": skipped,
                "resumed": result.resumed,
                "labelled": len(result.rows) - result.resumed,
                "judgements": sum(len(r["judgements"]) for r in result.rows),
            },
            input_lines=[r.line for r in records],
            diagnostics=diagnostics,
        )
    print(format_diagnostics(diagnostics), file=sys.stderr)
    return manifest
