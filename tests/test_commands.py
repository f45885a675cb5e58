"""The command layer: data-parallel relaunch exactly once, one-line errors of every kind."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from rlaif.plumbing import commands
from rlaif.plumbing.commands import OneLineErrors, stage_command
from rlaif.plumbing.options import option
from rlaif.training.job import TrainingSettings


@dataclass(kw_only=True)
class ToyTraining(TrainingSettings):
    """Train a toy."""

    data: str = option(help="The data.", argument=True)


def toy_app(runs: list):
    app = typer.Typer(cls=OneLineErrors, rich_markup_mode=None)
    stage_command(app, "toy", ToyTraining, lambda cfg: runs.append(cfg) or {})

    @app.command("other")
    def other():
        pass

    return app


@pytest.fixture
def launches(monkeypatch):
    calls: list = []
    monkeypatch.setattr(commands.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


@pytest.mark.parametrize("source", ["flag", "config"])
def test_num_processes_launches_the_workers_once(tmp_path, launches, source):
    runs: list = []
    config = tmp_path / "c.yaml"
    config.write_text("num_processes: 2\n")
    extra = ["--num-processes", "2"] if source == "flag" else ["--config", str(config)]
    result = CliRunner().invoke(toy_app(runs), ["toy", "d", "-o", "out", *extra])
    assert result.exit_code == 0, result.output
    [launch] = launches
    assert launch[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in launch
    assert runs == []  # the launcher's own process only waits for the workers


def test_workers_never_relaunch(tmp_path, launches, monkeypatch):
    """torch.distributed.run sets WORLD_SIZE in each worker; a worker runs the stage itself,
    even though its command line (or config file) still says --num-processes 2."""
    runs: list = []
    config = tmp_path / "c.yaml"
    config.write_text("num_processes: 2\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(toy_app(runs), ["toy", "d", "-o", "out", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert launches == [] and len(runs) == 1 and runs[0].num_processes == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["toy", "d", "-o", "o", "--nope"], "No such option: --nope"),
        (["toy", "d", "-o", "o", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["toy"], "Missing argument"),
        (["toy", "d"], "missing -o/--output-dir"),
        (["toy", "d", "-o", "o", "--batch-size", "0"], "--batch-size and"),
        (["nothing"], "No such command 'nothing'"),
    ],
)
def test_usage_errors_are_one_line(argv, message):
    result = CliRunner().invoke(toy_app([]), argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch):
    def broken(cfg):
        raise KeyError("deep inside a library")

    app = typer.Typer(cls=OneLineErrors, rich_markup_mode=None)
    stage_command(app, "toy", ToyTraining, broken)
    app.command("other")(lambda: None)
    monkeypatch.delenv("RLAIF_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["toy", "d", "-o", "o"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert "unexpected KeyError" in line and "RLAIF_DEBUG=1" in line


def test_a_system_error_on_a_path_names_the_path(tmp_path):
    def unwritable(cfg):
        open(tmp_path / "no-such-folder" / "x", "w")  # noqa: SIM115

    app = typer.Typer(cls=OneLineErrors, rich_markup_mode=None)
    stage_command(app, "toy", ToyTraining, unwritable)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["toy", "d", "-o", "o"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert f"{tmp_path}/no-such-folder/x: No such file or directory" in line
