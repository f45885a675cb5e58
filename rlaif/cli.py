"""The `rlaif` command: a thin layer over the stages.

Each stage command is made from its Config dataclass by `rlaif.plumbing.commands.stage_command` (the
options are the Config's fields; the help is its docstring). The few commands that only read
and print are written out here. Heavy libraries (torch, transformers, vLLM) are imported inside
the stages, so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from rlaif.plumbing.commands import OneLineErrors, run_cli, stage_command
from rlaif.plumbing.errors import UserError
from rlaif.stages import dpo, generate, label, merge, rl, sample, score, sft, train_rm
from rlaif.stages import eval_judge as judge_card
from rlaif.stages import eval_refusals as refusals
from rlaif.stages import eval_winrate as winrate

app = typer.Typer(
    cls=OneLineErrors,
    help="RLAIF and Constitutional AI: generate → sft → sample → label → train-rm / dpo → rl.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Plain help: rich mode keeps docstring line breaks and reads [a, b] as markup.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from rlaif import __version__

        typer.echo(f"rlaif {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print rlaif's version and exit."
        ),
    ] = False,
) -> None:
    """RLAIF and Constitutional AI: generate → sft → sample → label → train-rm / dpo → rl."""


constitution_app = typer.Typer(help="Check and inspect constitution files.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
eval_app = typer.Typer(help="Evaluate labels, reward models and policies.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _wrote(what: str):
    """The closing line of a stage that writes a JSONL file (none for stdout)."""

    def done(cfg, manifest: dict) -> str | None:
        if cfg.output == "-" or manifest.get("up_to_date"):
            return None
        count = manifest["counts"]["records"]
        return f"wrote {count} {what} to {cfg.output} ({manifest['wall_time_s']:.1f} s)"

    return done


def _trained(what: str):
    """The closing line of a training stage (only the main process of a data-parallel run)."""

    def done(cfg, manifest: dict) -> str | None:
        if manifest.get("up_to_date"):
            return None
        return f"wrote the {what} to {cfg.output_dir} ({manifest['wall_time_s']:.1f} s)"

    return done


def _merged(cfg, manifest: dict) -> str | None:
    if cfg.output == "-":
        return None
    records = manifest["counts"].get("records", 0)
    return f"merged {len(cfg.shards)} shards: {records} records to {cfg.output}"


stage_command(app, "generate", generate.GenerateConfig, generate.run, _wrote("records"))
stage_command(app, "label", label.LabelConfig, label.run, _wrote("labelled pairs"))
stage_command(app, "merge", merge.MergeConfig, merge.run, _merged)
stage_command(app, "sample", sample.SampleConfig, sample.run, _wrote("pairs"))
stage_command(app, "train-rm", train_rm.TrainRMConfig, train_rm.run, _trained("reward model"))
stage_command(app, "sft", sft.SFTConfig, sft.run, _trained("fine-tuned model"))
stage_command(app, "dpo", dpo.DPOConfig, dpo.run, _trained("DPO model"))
stage_command(app, "rl", rl.RLConfig, rl.run, _trained("policy"))
stage_command(app, "score", score.ScoreConfig, score.score_file)
stage_command(eval_app, "rm", score.EvalRMConfig, score.evaluate_rm)
stage_command(eval_app, "winrate", winrate.WinrateConfig, winrate.run)
stage_command(eval_app, "agreement", judge_card.EvalAgreementConfig, judge_card.evaluate_agreement)
stage_command(eval_app, "judge", judge_card.EvalJudgeConfig, judge_card.evaluate_judge)
stage_command(eval_app, "refusals", refusals.RefusalsConfig, refusals.run)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="An experiment's output folder.")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="HTML file to write.")
    ] = None,
):
    """One self-contained HTML page for an experiment, from its manifests and metrics.

    Finds every stage's output in RUN_DIR by its manifest: judge diagnostics with the
    per-principle table, reward-model curves and accuracy, SFT/DPO/RL curves and reward trend,
    win rates, refusal rates (eval refusals), and a few prompts with their critiques and
    revisions. Prints a short summary.

    Examples:

      rlaif report runs/exp1 -o runs/exp1/report.html
    """

    def work():
        from rlaif.stages.report import summary, write_report

        if not output:
            raise UserError("missing -o/--output (the HTML file to write)")
        run = write_report(run_dir, output)
        text = summary(run)
        if text:
            typer.echo(text)
        typer.echo(f"wrote the report to {output}", err=True)

    run_cli(work)


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Output of `rlaif generate` ('-' for stdin).")],
    record_id: Annotated[
        str | None, typer.Option("--id", help="Record to show (default: the first).")
    ] = None,
):
    """Print a record of `rlaif generate` output: prompt, first answer, critiques and revisions.

    Examples:

      rlaif show revisions.jsonl

      rlaif show revisions.jsonl --id p03
    """

    def work():
        from rlaif.plumbing.files import read_jsonl
        from rlaif.stages.show import check_revision_row, format_revision_record

        rows = read_jsonl(file)[0]
        matches = [(n, r) for n, r in rows if record_id is None or str(r.get("id")) == record_id]
        if not matches:
            raise UserError(f"{file}: no record with id {record_id!r}")
        typer.echo(format_revision_record(check_revision_row(file, *matches[0])))

    run_cli(work)


@constitution_app.command("validate")
def constitution_validate(
    files: Annotated[list[str], typer.Argument(help="Constitution YAML files or bundled names.")],
):
    """Check constitutions: required fields, unique ids, and every prompt rendered.

    Examples:

      rlaif constitution validate constitutions/harmless.yaml
    """

    def work():
        from rlaif.judging.constitution import (
            load_constitution,
            render_all,
            resolve_constitution_path,
        )

        for name in files:
            c = load_constitution(resolve_constitution_path(name))
            rendered = render_all(c)
            n_prompts = sum(len(v) for v in rendered.values())
            typer.echo(
                f"{c.path}: ok — {c.name} v{c.version}, {len(c.principles)} principles,"
                f" {len(c.examples)} examples, {n_prompts} prompts rendered"
            )

    run_cli(work)


@constitution_app.command("show")
def constitution_show(
    file: Annotated[str, typer.Argument(help="Constitution YAML file or bundled name.")],
    principle: Annotated[
        str | None,
        typer.Option("-p", "--principle", help="Show the prompts this principle renders."),
    ] = None,
):
    """Print a constitution's principles (or one principle's rendered prompts).

    Examples:

      rlaif constitution show harmless

      rlaif constitution show harmless -p privacy
    """

    def work():
        from rlaif.judging.constitution import (
            load_constitution,
            render_all,
            resolve_constitution_path,
        )

        c = load_constitution(resolve_constitution_path(file))
        if principle is not None:
            if principle not in c.by_id:
                raise UserError(f"{c.path}: no principle '{principle}' (ids: {', '.join(c.by_id)})")
            for kind, chat in render_all(c)[principle].items():
                typer.echo(f"=== {kind} prompt")
                for m in chat:
                    typer.echo(f"[{m['role']}]\n{m['content']}\n")
            return
        typer.echo(f"{c.name} v{c.version} ({c.path}, sha256 {c.sha256[:12]})")
        if c.description:
            typer.echo(c.description)
        for pr in c.principles:
            typer.echo(
                f"\n[{pr.id}]\n  critique:   {pr.critique}\n  revision:   {pr.revision}"
                f"\n  preference: {pr.preference}"
            )

    run_cli(work)


def _quiet_libraries() -> None:
    # vLLM and transformers log at INFO by default, and vLLM on a CPU repeats a harmless
    # thread-binding warning on every call; our progress bar says what matters. Env wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # TRL 1.16 warns five times per import that it was tested with vLLM <= 0.31; the CPU build
    # is 0.32 and TRL only uses vLLM here with `rl --use-vllm` (documented as untested).
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    # vLLM's own import-time deprecation notices about torch APIs: nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*is deprecated")


def main() -> None:
    _quiet_libraries()
    app(prog_name="rlaif")


if __name__ == "__main__":
    sys.exit(main())
