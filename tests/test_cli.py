"""The command line as a user meets it: help, bad input, config files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd
from typer.testing import CliRunner

from rlaif.cli import app

runner = CliRunner()
COMMANDS = [
    [],
    ["generate"],
    ["show"],
    ["label"],
    ["sample"],
    ["eval"],
    ["eval", "agreement"],
    ["eval", "judge"],
    ["eval", "rm"],
    ["train-rm"],
    ["score"],
    ["constitution"],
    ["constitution", "validate"],
    ["constitution", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rlaif")
def test_help_is_light(command):
    """`--help` must not import torch, transformers or vLLM (that is what makes it instant)."""
    probe = (
        "import sys; from rlaif.cli import app\n"
        "try:\n    app([*sys.argv[1:], '--help'], prog_name='rlaif')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage: rlaif" in out.stdout


def test_help_of_generate_has_examples():
    result = runner.invoke(app, ["generate", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--rounds" in result.output


def run_generate(tmp_path: Path, content: bytes | None, *extra: str, name="in.jsonl"):
    src = tmp_path / name
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["generate", str(src), "-o", str(out), "--engine", "hf", *extra])
    return result, src, out


def assert_nothing_written(tmp_path: Path, out: Path):
    leftovers = {p.name for p in tmp_path.iterdir()} - {"in.jsonl", "c.yaml", "cfg.yaml"}
    assert not out.exists() and not leftovers, leftovers


BAD_INPUTS = {
    "invalid-json": (
        b'{"prompt": "hi"}\n{"prompt": oops}\n',
        r"in.jsonl:2: line contains invalid json",
    ),
    "missing-field": (b'{"prompt": "hi"}\n{"text": "hi"}\n', r"in.jsonl:2: missing field 'prompt'"),
    "empty-file": (b"", r"in.jsonl: empty file"),
    "not-utf8": (
        b'{"prompt": "hi"}\n{"prompt": "caf\xe9"}\n',
        r"in.jsonl:2: line is not valid utf-8",
    ),
    "duplicate-ids": (
        b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n',
        r"in.jsonl:3: duplicate id 'a' \(first on line 1\)",
    ),
    "duplicate-content": (b'{"prompt": "x"}\n{"prompt": "x"}\n', r"in.jsonl:2: duplicate id"),
    "not-an-object": (b'"just text"\n', r"in.jsonl:1: expected a JSON object"),
    "bad-messages": (
        b'{"messages": [{"role": "robot", "content": "x"}]}\n',
        r"in.jsonl:1: 'messages' message #1",
    ),
    "ends-with-assistant": (
        b'{"messages": [{"role": "user", "content": "x"},'
        b' {"role": "assistant", "content": "y"}]}\n',
        r"in.jsonl:1: the conversation must end with a user message",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_cleanly(case, tmp_path):
    content, message = BAD_INPUTS[case]
    result, src, out = run_generate(tmp_path, content)
    assert result.exit_code == 2, result.output
    assert re.search(r"error: .*" + message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback
    assert_nothing_written(tmp_path, out)


def test_missing_input_file(tmp_path):
    result, _, out = run_generate(tmp_path, None)
    assert result.exit_code == 2 and "in.jsonl: no such file" in result.output
    assert_nothing_written(tmp_path, out)


BAD_CONSTITUTIONS = {
    "missing-revision": (
        "name: t\nversion: 1\nprinciples:\n"
        "  - id: kind\n    critique: Be kind?\n    preference: Which is kinder?\n",
        r"c.yaml: principle 'kind': 'revision' must be non-empty text",
    ),
    "duplicate-id": (
        "name: t\nversion: 1\nprinciples:\n"
        + "  - {id: a, critique: c, revision: r, preference: p}\n" * 2,
        r"c.yaml: principle 'a': duplicate id",
    ),
    "invalid-yaml": ("name: t\nprinciples: [\n", r"c.yaml:\d+: invalid YAML"),
    "placeholder": (
        "name: t\nversion: 1\nprinciples:\n"
        "  - {id: a, critique: 'Is {response} bad?', revision: r, preference: p}\n",
        r"c.yaml: principle 'a': 'critique' contains the placeholder \{response\}",
    ),
}


@pytest.mark.parametrize("case", BAD_CONSTITUTIONS, ids=list(BAD_CONSTITUTIONS))
def test_bad_constitution_fails_cleanly(case, tmp_path):
    import re

    text, message = BAD_CONSTITUTIONS[case]
    (tmp_path / "c.yaml").write_text(text)
    result, _, out = run_generate(tmp_path, b'{"prompt": "hi"}\n', "-c", str(tmp_path / "c.yaml"))
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output
    assert_nothing_written(tmp_path, out)
    validate = runner.invoke(app, ["constitution", "validate", str(tmp_path / "c.yaml")])
    assert validate.exit_code == 2 and re.search(message, validate.output)


def test_config_file_unknown_key_is_named(tmp_path):
    (tmp_path / "cfg.yaml").write_text("rounds: 1\nnumber-of-rounds: 3\n")
    result, _, out = run_generate(
        tmp_path, b'{"prompt": "hi"}\n', "--config", str(tmp_path / "cfg.yaml")
    )
    assert result.exit_code == 2
    assert "cfg.yaml: unknown key 'number-of-rounds'" in result.output
    assert_nothing_written(tmp_path, out)


def test_config_file_bad_value_is_named(tmp_path):
    (tmp_path / "cfg.yaml").write_text("rounds: many\n")
    result, _, out = run_generate(
        tmp_path, b'{"prompt": "hi"}\n', "--config", str(tmp_path / "cfg.yaml")
    )
    assert result.exit_code == 2 and "cfg.yaml: key 'rounds'" in result.output


def test_config_values_are_used_and_flags_override(tmp_path, home_with_model):
    (tmp_path / "cfg.yaml").write_text(
        "rounds: 1\nseed: 11\nmax-new-tokens: 6\nengine: hf\ntemperature: 0\n"
    )
    prompt = b'{"id": "q", "prompt": "Say hello."}\n'
    from_file, _, out = run_generate(tmp_path, prompt, "--config", str(tmp_path / "cfg.yaml"))
    assert from_file.exit_code == 0, from_file.output
    settings = json.loads(Path(f"{out}.manifest.json").read_text())["settings"]
    assert (settings["rounds"], settings["seed"], settings["max_new_tokens"]) == (1, 11, 6)
    assert len(json.loads(out.read_text())["revisions"]) == 1

    # Other settings into the same output: --force (without, the run is refused).
    overridden, _, out = run_generate(
        tmp_path, prompt, "--config", str(tmp_path / "cfg.yaml"), "--rounds", "2", "--force"
    )
    assert overridden.exit_code == 0, overridden.output
    settings = json.loads(Path(f"{out}.manifest.json").read_text())["settings"]
    assert (settings["rounds"], settings["seed"]) == (2, 11)
    assert len(json.loads(out.read_text())["revisions"]) == 2


def test_stdin_to_stdout(home_with_model):
    src = (DATA / "prompts.jsonl").read_bytes().splitlines()[0] + b"\n"
    out = subprocess.run(
        rlaif_cmd(
            "generate", "-", "-o", "-", "--engine", "hf", "--rounds", "1", "--max-new-tokens", "6"
        ),
        input=src,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    [row] = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert row["id"] == "capital"
    assert b"generate" in out.stderr  # the progress bar goes to stderr, not into the data
