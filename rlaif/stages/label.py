"""`rlaif label`: soft AI preference labels from constitution principles, judged in both orders.

The judging itself (principles, both orders, option probabilities) is `rlaif.judging.judge`; this
stage reads the pairs, judges them chunk by chunk and reports the judge diagnostics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

from rlaif.judging import jury
from rlaif.judging.calibration import (
    PlattFit,
    calibrate_row,
    calibration_report,
    format_calibration,
    reference_outcomes,
)
from rlaif.judging.constitution import constitution_option
from rlaif.judging.diagnostics import format_diagnostics, judge_diagnostics
from rlaif.judging.judge import JudgingSettings
from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import STDIO
from rlaif.plumbing.options import group, option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.pairs import parse_pair_records
from rlaif.plumbing.progress import TokenCounter
from rlaif.stages.judge_runs import judge_chunk_of, too_long_for_judges
from rlaif.stages.runner import RecordStage, ShardedRecordSettings, StageInput, work_dir


@dataclass(kw_only=True)
class LabelConfig(ShardedRecordSettings):
    """Label pairs of responses with the judge's preference (soft labels, both orders).

    For each pair and sampled principle the judge sees the pair as (A, B) and swapped; the
    probabilities of the letters are averaged into p (first response preferred). Rows are in
    TRL preference format (prompt, chosen, rejected) plus p_chosen, per-principle and per-order
    probabilities and position_consistent. The judge card is printed at the end and stored
    in the manifest. Any preference already in the input is kept as `reference`, used only
    for agreement figures. With --calibrate-on, the labels are calibrated on reference pairs
    (Platt scaling, cross-validated; a judge at chance gets labels of 0.5).

    Examples:

      rlaif label pairs.jsonl -o prefs.jsonl

      rlaif label hh.jsonl -o prefs.jsonl -k all --engine hf

      rlaif label revisions.jsonl -o check.jsonl --method generate

      rlaif label pairs.jsonl -o prefs-3.jsonl --shard 3/8

      rlaif label pairs.jsonl -o prefs.jsonl --calibrate-on reference.jsonl

      rlaif label samples.jsonl -o prefs.jsonl --method rating

      rlaif label pairs.jsonl -o prefs.jsonl -m judge-a/ -m judge-b/
    """

    pairs: str = option(
        help="JSONL of pairs: prompt+responses, prompt+chosen/rejected, HH-RLHF"
        " chosen/rejected dialogues, or `rlaif generate` output ('-' for stdin).",
        argument=True,
    )
    constitution: str = constitution_option()
    # several: a jury (see rlaif/judging/jury.py for the line format and the combination)
    judge_model: list[str] = jury.judge_model_option()
    judging: JudgingSettings = group(JudgingSettings)
    # decides whether to publish, not what any row holds
    max_skipped: str | None = option(
        None,
        help="Fail when more pairs than this cannot be judged (identical, or too long): a"
        " count (0: none may be) or a share such as 5%. Default: skip and count them.",
        fingerprint=False,
    )
    calibrate_on: str | None = option(
        None,
        help="JSONL of pairs with a known preference (any shape PAIRS takes): judge them first,"
        " fit Platt scaling of the judge's log-odds on them and calibrate every label"
        " (p_raw keeps the judge's p).",
    )
    calibration_folds: int = option(
        5, help="--calibrate-on: cross-validation folds for the held-out ECE before and after."
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_skipped is not None:
            skip_limit(self.max_skipped, 1)  # checks the spelling
        if self.calibrate_on == STDIO:
            raise UserError("--calibrate-on -: give a file (standard input is for the pairs)")
        if self.calibration_folds < 2:
            raise UserError(f"--calibration-folds {self.calibration_folds}: must be at least 2")
        self.judges = jury.judge_roles(self.judge_model)


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


def _report_skipped(
    unjudgeable: dict[str, str], total: int, max_skipped: str | None, where: str = ""
) -> None:
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
        f"warning: {where}skipping {len(unjudgeable)} of {total} pairs: {'; '.join(parts)}",
        file=sys.stderr,
    )


def parse_reference_pairs(path: str, rows: list) -> list:
    """The --calibrate-on pairs: each must state its preference."""
    records = parse_pair_records(path, rows)
    for r in records:
        if r.reference is None:
            raise at(
                path,
                r.line,
                "--calibrate-on needs a known preference per pair (chosen/rejected, or"
                " 'preferred' with 'responses')",
            )
    return records


def _unjudgeable(stage: RecordStage, records: list) -> dict[str, str]:
    """Well-formed pairs the judge cannot compare, by id, with the reason. They are skipped,
    counted and named, not fatal: real data has them (identical replies; pairs longer than
    the judge's context)."""
    unjudgeable = {r.id: "identical responses" for r in records if r.identical}
    for record_id in too_long_for_judges(stage, [r for r in records if not r.identical]):
        unjudgeable[record_id] = f"longer than --max-model-len {stage.cfg.engine.max_model_len}"
    return unjudgeable


def _calibrate(stage: RecordStage, references: list) -> dict:
    """Judge the reference pairs as the run judges its own (same judge, engine, settings and
    seed), fit the calibration and print it, before the long run: a useless fit shows at once.
    Resumable: the judged references are saved in OUT.work/ like the labels themselves."""
    cfg = stage.cfg
    unjudgeable = _unjudgeable(stage, references)
    kept = [r for r in references if r.id not in unjudgeable]
    if unjudgeable:
        _report_skipped(unjudgeable, len(references), None, f"--calibrate-on {cfg.calibrate_on}: ")
    if len(kept) < cfg.calibration_folds:
        raise UserError(
            f"--calibrate-on {cfg.calibrate_on}: {len(kept)} reference pairs to judge, fewer"
            f" than --calibration-folds {cfg.calibration_folds}"
        )
    tokens = TokenCounter()  # kept apart: the manifest's tokens measure the labelling itself
    process = judge_chunk_of(stage, tokens)
    output = STDIO if cfg.output == STDIO else str(work_dir(cfg.output) / "reference.jsonl")
    result = stage.run_chunks(
        kept,
        process,
        unit="pair",
        output=output,
        description="judge reference",
        phase="calibration",
    )
    p_raw, outcomes = reference_outcomes(result.rows)
    # No bias term: a row's p is for the response a seeded coin flip put first, so a bias would
    # only make the same pair's label depend on that flip.
    report = calibration_report(p_raw, outcomes, cfg.calibration_folds, cfg.seed, bias=False)
    report |= {
        "reference": {"path": cfg.calibrate_on, "sha256": stage.inputs["calibrate_on"].sha256},
        "skipped": len(unjudgeable),
        "tokens": tokens.tokens,
    }
    print(format_calibration(report, cfg.calibrate_on), file=sys.stderr)
    return report


@one_run
def run(cfg: LabelConfig) -> dict:
    """Label every pair; returns the manifest (with judge diagnostics) and prints the report."""
    # more than two responses a row only for pointwise judging
    pairs = StageInput(
        "pairs", cfg.pairs, partial(parse_pair_records, many=cfg.judging.method == "rating")
    )
    # read and checked with the pairs, before any model loads: a bad file fails at once
    reference = [StageInput("calibrate_on", cfg.calibrate_on, parse_reference_pairs)]
    with RecordStage(
        "label",
        cfg,
        pairs,
        more_inputs=reference if cfg.calibrate_on else (),
        constitution=cfg.constitution,
        **jury.stage_judges(cfg.judges, cfg.engine),
    ) as stage:
        if stage.up_to_date:
            return stage.up_to_date
        unjudgeable = _unjudgeable(stage, stage.records)
        records = [r for r in stage.records if r.id not in unjudgeable]
        if unjudgeable:
            _report_skipped(unjudgeable, len(stage.records), cfg.max_skipped)
        if not records and stage.records:
            raise UserError(f"{cfg.pairs}: no pair left to judge ({len(unjudgeable)} skipped)")

        references = stage.inputs.get("calibrate_on")
        calibration = _calibrate(stage, references.records) if references else None
        result = stage.run_chunks(records, judge_chunk_of(stage, stage.tokens), unit="pair")
        rows = result.rows
        if calibration:
            # Applied when publishing, so rows resumed from a partial file get it too.
            applied = calibration["applied"]
            fit = PlattFit(applied["a"], applied["b"], None, None, calibration["pairs"])
            rows = [calibrate_row(row, fit) for row in rows]
        diagnostics = jury.add_jury_figures(judge_diagnostics(rows), rows)
        manifest = stage.publish(
            rows,
            work=bool(calibration),  # the judged references in OUT.work/
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
            **({"calibration": calibration} if calibration else {}),
        )
    print(format_diagnostics(diagnostics), file=sys.stderr)
    if "jury" in diagnostics:
        print(jury.format_jury(diagnostics["jury"]), file=sys.stderr)
    if calibration:
        print(format_calibration(calibration, cfg.calibrate_on), file=sys.stderr)
    return manifest
