"""`rlaif eval agreement` and `rlaif eval judge`: a judge's card, and a gate on it.

The card (`rlaif.judging.diagnostics.judge_diagnostics`) sets the judge's agreement with reference
labels beside trivial rules on the same pairs (prefer the first, second, shorter, longer
response), with calibration, position bias and, with `--group-by`, the same per group, each
rate with its count and 95% interval. `eval agreement` reads it off `rlaif label` output;
`eval judge` judges reference pairs itself, as `rlaif label` would, and writes no label file,
so a judge can be sized up in minutes before hours of labelling. `--min-agreement` turns the
card into a gate for Make: exit code 3 when the judge agrees less often than asked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rlaif.judging import jury
from rlaif.judging.constitution import constitution_option
from rlaif.judging.diagnostics import (
    CALIBRATION_BINS,
    CARD_KIND,
    check_label_rows,
    format_diagnostics,
    judge_diagnostics,
)
from rlaif.judging.judge import JudgingSettings
from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import STDIO, read_jsonl
from rlaif.plumbing.options import group, option
from rlaif.plumbing.outputs import guard_output, one_run, png_written_by_rlaif
from rlaif.plumbing.pairs import parse_pair_records
from rlaif.stages.runner import RunSettings

GATE_EXIT_CODE = 3  # 2 is a user's error; 3 says the judge is not good enough, for Make


class BelowGate(UserError):
    """The judge agrees with the references less often than `--min-agreement` asks."""

    exit_code = GATE_EXIT_CODE


@dataclass(kw_only=True)
class CardSettings:
    """What the card shows and where it goes (eval agreement, eval judge)."""

    group_by: str | None = option(
        None, help="Also give the figures per value of this field of the rows (e.g. unsafe, type)."
    )
    min_agreement: float | None = option(
        None,
        help="Exit with code 3 when the agreement with the references is below this (its point"
        " estimate, ties counting as disagreement), e.g. 0.6: a gate for Make.",
    )
    n_bins: int = option(
        CALIBRATION_BINS,
        help="Calibration: equal-width bins of the judge's confidence max(p, 1-p) over [0.5, 1].",
        flags=("--bins",),
    )
    plot: str | None = option(None, help="Write a reliability diagram (PNG) here.")
    json_out: str | None = option(
        None,
        help="Write the card as JSON here ('-': stdout, and the text card to stderr).",
        flags=("--json",),
    )

    def __post_init__(self):
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise UserError(f"--min-agreement {self.min_agreement}: a rate in [0, 1], e.g. 0.6")
        if self.n_bins < 1:
            raise UserError(f"--bins {self.n_bins}: must be at least 1")
        if self.plot == STDIO:
            raise UserError("--plot -: a PNG needs a file path")
        if self.plot and self.json_out and Path(self.plot).resolve() == _resolved(self.json_out):
            raise UserError(f"--plot and --json are the same file ({self.plot})")

    @property
    def needs_references(self) -> str | None:
        """The option that cannot work without reference labels, if one was given."""
        if self.min_agreement is not None:
            return "--min-agreement"
        return "--plot" if self.plot else None

    def check_outputs(self, inputs: list[str | None]) -> None:
        """The output policy for the card's files, before any work: replace only what rlaif
        wrote, and never an input."""
        for path, name, ours in (
            (self.plot, "--plot", png_written_by_rlaif),
            (self.json_out, "--json", card_written_by_rlaif),
        ):
            if path:
                guard_output(path, inputs=inputs, force=False, option=name, kind=ours)


def _resolved(path: str) -> Path | None:
    return None if path == STDIO else Path(path).resolve()


def card_written_by_rlaif(path: Path) -> bool:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and data.get("kind") == CARD_KIND


@dataclass(kw_only=True)
class EvalAgreementConfig(CardSettings):
    """The judge card of `rlaif label` output: agreement with the references beside trivial
    baselines, calibration, position bias; per group with --group-by.

    Every rate comes with its count and 95% interval; one whose interval spans more than half
    of [0, 1] is shown as "too few pairs". With --min-agreement the command exits with code 3
    when the judge agrees less often than that, so a Makefile stops before a long run.

    Examples:

      rlaif eval agreement prefs.jsonl

      rlaif eval agreement xstest-labels.jsonl --group-by type --plot reliability.png

      rlaif eval agreement ref-labels.jsonl --min-agreement 0.6 --json card.json
    """

    labels: str = option(help="Output of `rlaif label` ('-' for stdin).", argument=True)


@one_run
def evaluate_agreement(cfg: EvalAgreementConfig) -> dict:
    cfg.check_outputs([cfg.labels])
    rows = check_label_rows(cfg.labels, read_jsonl(cfg.labels)[0])
    _check_group_field(cfg.group_by, rows, cfg.labels)
    _check_references(cfg, sum(r.get("reference") is not None for r in rows), cfg.labels)
    return publish_card(cfg, rows, cfg.labels)


@dataclass(kw_only=True)
class EvalJudgeConfig(CardSettings, RunSettings):
    """Judge reference pairs as `rlaif label` would and print the judge card; no label file.

    The pairs' own preference (chosen/rejected, or a label) is the reference. The judge, its
    engine and the judging options are those of `rlaif label`, so the card describes the
    labels that command would make. Add --min-agreement to gate a Makefile on it (exit 3).

    Examples:

      rlaif eval judge tests/data/xstest-dev.jsonl --group-by unsafe

      rlaif eval judge ref.jsonl -m Qwen/Qwen2.5-7B-Instruct --engine vllm --min-agreement 0.65

      rlaif eval judge ref.jsonl --engine openai --base-url http://gpu1:8000/v1 -m judge
    """

    pairs: str = option(
        help="Reference pairs with a preference: prompt+chosen/rejected, HH-RLHF dialogues, or"
        " prompt+responses with a label ('-' for stdin).",
        argument=True,
    )
    constitution: str = constitution_option()
    judge_model: list[str] = jury.judge_model_option()
    judging: JudgingSettings = group(JudgingSettings)
    # RunSettings: seed, chunk size and engine, as `label` takes them; no label file is
    # written, so nothing is resumed.

    def __post_init__(self):
        CardSettings.__post_init__(self)
        RunSettings.__post_init__(self)
        self.judges = jury.judge_roles(self.judge_model)


@one_run
def evaluate_judge(cfg: EvalJudgeConfig) -> dict:
    from rlaif.judging.constitution import resolve_constitution_path
    from rlaif.stages.judge_runs import judge_chunk_of, too_long_for_judges
    from rlaif.stages.runner import RecordStage, StageInput

    cfg.check_outputs(
        [cfg.pairs, resolve_constitution_path(cfg.constitution)]
        + [judge.model for judge in cfg.judges.values()]
    )

    def parse(path: str, rows: list) -> list:
        # Checked as the pairs are read, before the judge is resolved (a GGUF converted) or
        # loaded: a misspelt field fails in a second, not after minutes.
        records = parse_pair_records(path, rows)
        judgeable = [r for r in records if not r.identical]
        _check_group_field(cfg.group_by, [r.fields for r in judgeable], path)
        _check_references(cfg, sum(r.reference is not None for r in judgeable), path)
        return records

    with RecordStage(
        "eval-judge",
        cfg,
        StageInput("pairs", cfg.pairs, parse),
        constitution=cfg.constitution,
        **jury.stage_judges(cfg.judges, cfg.engine),
    ) as stage:
        records = [r for r in stage.records if not r.identical]
        unfit = set(too_long_for_judges(stage, records))
        skipped = len(stage.records) - len(records) + len(unfit)
        if skipped:
            print(
                f"warning: {skipped} of {len(stage.records)} pairs cannot be judged (identical"
                f" responses, or longer than --max-model-len {cfg.engine.max_model_len}); the"
                " card leaves them out",
                file=sys.stderr,
            )
        records = [r for r in records if r.id not in unfit]
        if not records:
            raise at(cfg.pairs, None, "no pair left to judge")

        process = judge_chunk_of(stage, stage.tokens)
        result = stage.run_chunks(records, process, unit="pair", description="judge")
    return publish_card(cfg, result.rows, cfg.pairs)


def _check_group_field(field: str | None, rows: list[dict], path: str) -> None:
    if field is None or any(field in r for r in rows):
        return
    scalars = sorted({k for r in rows for k, v in r.items() if isinstance(v, (str, int, float))})
    raise UserError(
        f"--group-by {field}: no row of {path} has that field"
        f" (fields: {', '.join(scalars) or 'none'})"
    )


def _check_references(cfg: CardSettings, with_reference: int, path: str) -> None:
    option_name = cfg.needs_references
    if option_name and not with_reference:
        raise UserError(
            f"{option_name}: {path} has no pair with a reference preference to measure the"
            " judge against"
        )


def publish_card(cfg: CardSettings, rows: list[dict], source: str) -> dict:
    """Print the card (stdout; stderr when the JSON goes to stdout), write its JSON and plot,
    then apply the gate. Returns the card."""
    diag = judge_diagnostics(rows, cfg.group_by, cfg.n_bins)
    text = format_diagnostics(diag, title=f"Judge card: {source}")
    if jury.add_jury_figures(diag, rows).get("jury"):  # a jury's labels: each judge, kappa
        text += "\n" + jury.format_jury(diag["jury"])
    card = {"kind": CARD_KIND, "source": source, **diag}
    print(text, end="", file=sys.stderr if cfg.json_out == STDIO else sys.stdout)
    if cfg.plot:
        from rlaif.plumbing.plots import plot_reliability

        plot_reliability(
            diag["calibration"]["bins"],
            cfg.plot,
            f"judge calibration ({diag['calibration']['pairs']} pairs)",
            xlabel="judge's confidence max(p, 1 − p)",
            ylabel="share agreeing with the reference",
        )
    if cfg.json_out:
        import json

        from rlaif.plumbing.files import write_json

        if cfg.json_out == STDIO:
            print(json.dumps(card, indent=2, ensure_ascii=False))
        else:
            write_json(cfg.json_out, card)
    gate(diag, cfg.min_agreement)
    return card


def gate(diag: dict, min_agreement: float | None) -> None:
    """Exit code 3 when the agreement's point estimate is below `min_agreement`."""
    agreement = diag["agreement"]
    if min_agreement is None or agreement is None:
        return
    if agreement["rate"] < min_agreement:
        lo, hi = agreement["ci95"]
        raise BelowGate(
            f"agreement {agreement['agree']}/{agreement['n']} = {agreement['rate']:.1%}"
            f" (95% CI {lo:.1%}–{hi:.1%}) is below --min-agreement {min_agreement:g}"
        )
