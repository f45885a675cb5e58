"""What `label` and `eval judge` share: judging a RecordStage's pairs with its judge, or with
every judge of its jury (`cfg.judges`, `cfg.judging`, `cfg.seed`)."""

from __future__ import annotations

from rlaif.judging import jury
from rlaif.plumbing.progress import TokenCounter
from rlaif.stages.runner import RecordStage


def judge_chunk_of(stage: RecordStage, tokens: TokenCounter):
    """The `process_chunk` that labels pairs with the stage's judge (or jury)."""
    cfg = stage.cfg

    def process(chunk, progress):
        return jury.judge_records(
            chunk, list(cfg.judges), stage.engine, cfg.judging, cfg.seed, stage.constitution,
            tokens, progress,
        )  # fmt: skip

    return process


def too_long_for_judges(stage: RecordStage, records: list) -> list[str]:
    judges = [(stage.models[r].path, stage.engine_settings(r)) for r in stage.cfg.judges]
    return jury.too_long_pairs(
        records, judges, stage.cfg.judging, stage.cfg.seed, stage.constitution
    )
