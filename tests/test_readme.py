"""The stage reference (docs/stages.md) stays in step with the options the code declares."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from rlaif.cli import app

STAGES = Path(__file__).resolve().parent.parent / "docs" / "stages.md"
SECTION = re.compile(r"^### `rlaif ([a-z -]+?)(?: [A-Z\[.-].*)?`", re.M)
FLAG = re.compile(r"`(--?[a-z][a-z-]*)")
# "`--flag` (default 2e-5)", "`--flag X`, default 64", "`--flag` (TRL's β, default 0.05)"
FLAG_DEFAULT = re.compile(r"`(--[a-z-]+)[^`]{0,3}`[^`.;]{0,24}?\bdefault:? `?([^\s,;)`]+)")


def reference_sections() -> list[tuple[str, str]]:
    text = STAGES.read_text()
    heads = list(SECTION.finditer(text))
    return [
        (m.group(1).strip(), text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else None])
        for i, m in enumerate(heads)
    ]


def command(path: str) -> click.Command:
    cmd = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def section_flags(name: str) -> dict[str, click.Parameter]:
    """The flags of the section's command (both commands of `constitution validate / show`)."""
    if name.startswith("constitution"):
        return {
            **options(command("constitution validate")),
            **options(command("constitution show")),
        }
    return options(command(name))


def options(cmd: click.Command) -> dict[str, click.Parameter]:
    found = {}
    for param in cmd.params:
        for flag in [*param.opts, *param.secondary_opts]:
            found[flag] = param
    return found


def same_default(written: str, actual) -> bool:
    if isinstance(actual, bool):
        return written in (("on", "true") if actual else ("off", "false"))
    if isinstance(actual, (int, float)):
        try:
            return float(written) == float(actual)
        except ValueError:
            return False
    return written == str(actual)


SECTIONS = reference_sections()
# Flags a section names on purpose although its command does not take them: merge describes the
# `--shard` runs it joins; eval rm, how the reward model it measured was trained.
OTHER_COMMANDS_FLAGS = {
    "merge": {"--shard", "--force"},
    "eval rm": {"--label-mode", "--epochs", "--batch-size", "--max-length", "--lr"},
}
VALUE = re.compile(r"^(-?[0-9][0-9.e+-]*|on|off|true|false)$")


def test_the_reference_covers_every_command():
    documented = {name for name, _ in SECTIONS}
    assert {"generate", "label", "sample", "train-rm", "sft", "dpo", "rl", "merge"} <= documented
    assert {"eval winrate", "eval rm", "score"} <= documented


@pytest.mark.parametrize(("name", "text"), SECTIONS, ids=[name for name, _ in SECTIONS])
def test_flags_and_defaults_in_the_reference_exist(name, text):
    flags = section_flags(name)
    for flag in FLAG.findall(text):
        if flag in ("-", "--") or flag in OTHER_COMMANDS_FLAGS.get(name, ()):
            continue
        assert flag in flags, f"docs/stages.md `rlaif {name}` mentions {flag}; it does not take it"
    for flag, written in FLAG_DEFAULT.findall(text):
        if not VALUE.match(written) or flag not in flags:
            continue  # prose ("the starting model"), a range, or another command's flag
        actual = flags[flag].default
        assert same_default(written, actual), (
            f"docs/stages.md `rlaif {name}`: {flag} defaults to {written}; the code: {actual}"
        )
