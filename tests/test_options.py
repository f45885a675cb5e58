"""Options declared once on the Config dataclasses, and the commands made from them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from rlaif.plumbing.commands import stage_command
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.options import build_config, cli_fields, group, option


@dataclass(frozen=True)
class Knobs:
    size: int = option(3, help="How big.")
    colour: str = option("red", help="Which colour.", flags=("-k", "--colour"))


@dataclass(frozen=True)
class Brush:
    width: int = option(1, help="Brush width.")
    hardness: float = option(0.5, help="Brush hardness.")


@dataclass(kw_only=True)
class Base:
    out: str = option(help="Where it goes.", flags=("-o", "--out"))
    steps: int = option(10, help="How many steps.")
    knobs: Knobs = group(Knobs)


@dataclass(kw_only=True)
class Child(Base):
    """Do a thing.

    Examples:

      demo data.jsonl -o out
    """

    data: str = option(help="The input.", argument=True)
    steps: int = 20  # a new default keeps the base declaration's help
    brush: Brush = group(
        Brush,
        only=("width",),
        help={"width": "How wide a stroke."},
        default_factory=lambda: Brush(width=4, hardness=0.9),
    )
    note: str = "not an option"  # no help: set by code, not by users

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"--steps {self.steps}: must be at least 1")


def by_name(cls) -> dict:
    return {f.name: f for f in cli_fields(cls)}


def test_fields_flatten_groups_and_inherit_declarations():
    fields = by_name(Child)
    # The stage's own fields first, then the shared ones; `note` is not an option.
    assert list(fields) == ["data", "width", "out", "steps", "size", "colour"]
    assert fields["steps"].default == 20 and fields["steps"].help == "How many steps."
    assert fields["colour"].flags == ("-k", "--colour") and fields["colour"].path == (
        "knobs",
        "colour",
    )
    # A group restricted with `only`, reworded, with its own defaults.
    assert fields["width"].help == "How wide a stroke." and fields["width"].default == 4
    assert fields["out"].required and fields["data"].argument


def test_a_name_declared_twice_is_a_programming_error():
    @dataclass(kw_only=True)
    class Twice(Base):
        more: Knobs = group(Knobs)

    with pytest.raises(ValueError, match="size"):
        cli_fields(Twice)


def test_build_config_fills_groups_and_names_what_is_missing():
    cfg = build_config(Child, {"data": "d", "out": "o", "size": 5, "width": 7})
    assert cfg.knobs == Knobs(size=5, colour="red")
    assert cfg.brush == Brush(width=7, hardness=0.9)  # the group's default for what is not shown
    assert cfg.steps == 20 and cfg.note == "not an option"
    with pytest.raises(UserError, match="missing -o/--out: Where it goes."):
        build_config(Child, {"data": "d", "out": None})
    with pytest.raises(UserError, match="--steps 0"):
        build_config(Child, {"data": "d", "out": "o", "steps": 0})


def demo_app(seen: list):
    app = typer.Typer(rich_markup_mode=None)
    stage_command(app, "demo", Child, lambda cfg: seen.append(cfg) or {"ok": 1})

    @app.command("other")  # a second command, so typer keeps the command's name
    def other():
        pass

    return app


def test_a_config_becomes_a_typer_command(tmp_path):
    seen: list = []
    app = demo_app(seen)
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    assert "Do a thing." in result.output and "Examples:" in result.output
    for flag in ("-o, --out", "--steps", "--size", "-k, --colour", "--width", "--config"):
        assert flag in result.output, flag
    assert "[default: 20]" in result.output

    config = tmp_path / "c.yaml"
    config.write_text("steps: 5\nsize: 7\nwidth: 2\nout: from-file\n")
    result = CliRunner().invoke(app, ["demo", "in", "--config", str(config), "--steps", "6"])
    assert result.exit_code == 0, result.output
    [cfg] = seen
    assert (cfg.data, cfg.out, cfg.steps) == ("in", "from-file", 6)  # the command line wins
    assert cfg.knobs.size == 7 and cfg.brush.width == 2


def test_a_missing_required_option_is_one_line(tmp_path):
    result = CliRunner().invoke(demo_app([]), ["demo", "in"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: missing -o/--out: Where it goes."


def test_every_stage_config_is_a_command_with_help_for_each_field():
    """Each Config field that is an option has help; no flag is declared twice in a command."""
    from rlaif import cli

    for group_app in (cli.app, cli.eval_app):
        for command in group_app.registered_commands:
            params = typer.main.get_command_from_info(
                command, pretty_exceptions_short=True, rich_markup_mode=None
            ).params
            flags = [opt for p in params for opt in p.opts]
            assert len(flags) == len(set(flags)), command.name
            assert all(p.help for p in params if p.name != "help"), command.name


def test_stage_configs_flatten_to_the_names_their_manifests_use():
    """`--config` keys are the field names, as in the manifest's settings."""
    from rlaif.stages import generate

    fields = {f.name: f for f in cli_fields(generate.GenerateConfig)}
    assert {"max_new_tokens", "batch_size", "shard", "output", "prompts"} <= set(fields)
    assert fields["batch_size"].path == ("engine", "batch_size")
    cfg = build_config(generate.GenerateConfig, {"prompts": "p", "output": "o", "shard": "2/4"})
    settings = dataclasses.asdict(cfg)
    assert settings["engine"]["batch_size"] == 16 and settings["shard"] == {"index": 2, "count": 4}
    assert json.dumps(settings)  # what the manifest stores
