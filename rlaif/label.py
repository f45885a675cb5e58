"""`rlaif label`: soft AI preference labels from constitution principles, judged in both orders.

The judging itself (principles, both orders, option probabilities) is `rlaif.judging`; this
stage reads the pairs, judges them chunk by chunk and reports the judge diagnostics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

from rlaif import jury
from rlaif.constitution import constitution_option
from rlaif.diagnostics import format_diagnostics, judge_diagnostics
from rlaif.errors import UserError
from rlaif.judging import JudgingSettings, judge_chunk, too_long
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

      rlaif label samples.jsonl -o prefs.jsonl --method rating

      rlaif label pairs.jsonl -o prefs.jsonl -m judge-a/ -m judge-b/
    """

    pairs: str = option(
        help="JSONL of pairs: prompt+responses, prompt+chosen/rejected, HH-RLHF"
        " chosen/rejected dialogues, or `rlaif generate` output ('-' for stdin).",
        argument=True,
    )
    constitution: str = constitution_option()
    # several: a jury (see rlaif/jury.py for the line format and the combination)
    judge_model: list[str] = option(
        default_factory=lambda: [EMBEDDED_ALIAS],
        help="Judge: HF folder, hub id, .gguf or alias; give it several times, or a file listing"
        " one judge a line ('MODEL [engine=E] [base-url=URL]'), for a jury.",
        flags=("-m", "--judge-model"),
    )
    judging: JudgingSettings = group(JudgingSettings)
    max_skipped: str | None = option(
        None,
        help="Fail when more pairs than this cannot be judged (identical, or too long): a"
        " count (0: none may be) or a share such as 5%. Default: skip and count them.",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_skipped is not None:
            skip_limit(self.max_skipped, 1)  # checks the spelling
        if isinstance(self.judge_model, str):  # a Python caller's single judge
            self.judge_model = [self.judge_model]
        self.judges = jury.roles(jury.parse_judges(list(self.judge_model)))


def skip_limit(spec: str, total: int) -> int:
    """`--max-skipped` as a count of pairs out of `total`."""
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return int(share / 100 * total)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise UserError(
            f"--max-skipped {spec}: a count of pairs (e.g. 0) or a share (e.g. 5%)"
        ) from None


def _too_long(stage: RecordStage, records) -> list[str]:
    """Pairs whose judge prompts do not fit the judge's context window (local engines; a
    server says so itself)."""
    from transformers import AutoTokenizer

    cfg = stage.cfg
    found: list[str] = []
    for role in cfg.judges:  # each local judge's own tokenizer and window
        settings = stage.role_settings.get(role, stage.settings)
        if settings.engine == "openai" or not records:
            continue
        tokenizer = AutoTokenizer.from_pretrained(
            stage.models[role].path, trust_remote_code=settings.trust_remote_code
        )
        ids = too_long(
            records, cfg.judging, cfg.seed, stage.constitution, tokenizer, settings.max_model_len
        )
        found += [i for i in ids if i not in found]
    return found


def _report_skipped(unjudgeable: dict[str, str], total: int, max_skipped: str | None) -> None:
    reasons: dict[str, list[str]] = {}
    for record_id, reason in unjudgeable.items():
        reasons.setdefault(reason, []).append(record_id)
    parts = [
        f"{len(ids)} {reason} ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
        for reason, ids in reasons.items()
    ]
    if max_skipped is not None and len(unjudgeable) > skip_limit(max_skipped, total):
        raise UserError(
            f"--max-skipped {max_skipped}: {len(unjudgeable)} of {total} pairs cannot be"
            f" judged ({'; '.join(parts)})"
        )
    print(
        f"warning: skipping {len(unjudgeable)} of {total} pairs: {'; '.join(parts)}",
        file=sys.stderr,
    )


def run(cfg: LabelConfig) -> dict:
    """Label every pair; returns the manifest (with judge diagnostics) and prints the report."""
    with RecordStage(
        "label",
        cfg,
        input_field="pairs",
        # more than two responses a row only for pointwise judging
        parse=partial(parse_pair_records, many=cfg.judging.method == "rating"),
        models={role: judge.model for role, judge in cfg.judges.items()},
        constitution=cfg.constitution,
        engines={
            role: settings
            for role, judge in cfg.judges.items()
            if (settings := judge.settings(cfg.engine)) is not None
        },
    ) as stage:
        if stage.up_to_date:
            return stage.up_to_date
        # Well-formed pairs the judge cannot compare are skipped, counted and named, not fatal:
        # real data has them (identical replies; pairs longer than the judge's context).
        unjudgeable = {r.id: "identical responses" for r in stage.records if r.identical}
        for record_id in _too_long(stage, [r for r in stage.records if not r.identical]):
            unjudgeable[record_id] = f"longer than --max-model-len {cfg.engine.max_model_len}"
        records = [r for r in stage.records if r.id not in unjudgeable]
        if unjudgeable:
            _report_skipped(unjudgeable, len(stage.records), cfg.max_skipped)
        if not records and stage.records:
            raise UserError(f"{cfg.pairs}: no pair left to judge ({len(unjudgeable)} skipped)")

        def process(chunk, advance):
            if len(cfg.judges) > 1:
                judges = [(role, stage.engine(role)) for role in cfg.judges]
                return jury.judge_chunk_jury(
                    chunk, judges, cfg.judging, cfg.seed, stage.constitution, stage.tokens, advance
                )
            judge = stage.engine("judge")
            return judge_chunk(
                chunk, judge, cfg.judging, cfg.seed, stage.constitution, stage.tokens, advance
            )

        result = stage.run_chunks(records, process)
        diagnostics = judge_diagnostics(result.rows)
        if len(cfg.judges) > 1:
            diagnostics["jury"] = jury.jury_diagnostics(result.rows)
        manifest = stage.publish(
            result.rows,
            counts={
                "records": len(result.rows),
                "skipped": len(unjudgeable),
                "skipped_identical": sum(v == "identical responses" for v in unjudgeable.values()),
                "skipped_too_long": sum(v.startswith("longer") for v in unjudgeable.values()),
                "resumed": result.resumed,
                "labelled": len(result.rows) - result.resumed,
                "judgements": sum(len(r["judgements"]) for r in result.rows),
            },
            input_lines=[r.line for r in records],
            diagnostics=diagnostics,
            skipped=unjudgeable,
        )
    print(format_diagnostics(diagnostics), file=sys.stderr)
    if "jury" in diagnostics:
        print(jury.format_jury(diagnostics["jury"]), file=sys.stderr)
    return manifest
