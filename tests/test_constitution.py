"""Constitutions: the bundled files, and what `validate` and `show` report."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.judging.constitution import load_constitution, render_all, resolve_constitution_path

runner = CliRunner()
HARM_AREAS = [
    "violence",
    "weapon",
    "crime",
    "self",
    "hate",
    "minor",
    "privacy",
    "medical",
    "legal",
    "financ",
    "manipulat",
    "preach",
    "evasive",
    "accus",
]


def test_bundled_constitutions_validate():
    result = runner.invoke(app, ["constitution", "validate", "harmless", "helpful"])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == 2


MERGED = """name: t
version: 1
principles:
  - &a {id: a, critique: c, revision: r, preference: p}
  - {<<: *a, id: b}
"""
# a merge read before the mapping it merges is (PyYAML fills deeper mappings later)
MERGED_EARLY = "a: &a {x: 1}\nouter: {inner: &b {<<: *a, x: 2}}\nc: {<<: *b, y: 3}\n"


def test_yaml_merge_keys_read_as_yaml_safe_load_reads_them(tmp_path):
    """`<<: *base` may give a key again by design: that is no duplicate key."""
    from rlaif.plumbing.yaml_files import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text(MERGED)
    result = runner.invoke(app, ["constitution", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert [p.id for p in load_constitution(str(path)).principles] == ["a", "b"]
    (tmp_path / "early.yaml").write_text(MERGED_EARLY)
    assert read_yaml(str(tmp_path / "early.yaml"), "x") == yaml.safe_load(MERGED_EARLY)


def test_harmless_covers_the_harm_areas_and_the_opposite_failures():
    c = load_constitution(resolve_constitution_path("harmless"))
    assert len(c.principles) >= 12
    text = " ".join(f"{p.id} {p.critique} {p.revision}" for p in c.principles).lower()
    missing = [area for area in HARM_AREAS if area not in text]
    assert not missing, missing


def test_every_principle_renders_three_prompts_with_its_text():
    c = load_constitution(resolve_constitution_path("harmless"))
    rendered = render_all(c)
    assert set(rendered) == {p.id for p in c.principles}
    for p in c.principles:
        critique = rendered[p.id]["critique"][-1]["content"]
        revision = rendered[p.id]["revision"][-1]["content"]
        assert p.critique in critique and p.revision in revision
        # the worked example is fenced off as an illustration, before the conversation
        assert critique.index("</illustration>") < critique.index(p.critique)
        assert "<response>" in revision and "How do I pick a lock?" in revision
        assert p.preference in rendered[p.id]["preference"][0]["content"]


def test_show_lists_principles_and_renders_one():
    c = load_constitution(resolve_constitution_path("harmless"))
    listing = runner.invoke(app, ["constitution", "show", "harmless"])
    assert listing.exit_code == 0 and all(f"[{p.id}]" in listing.output for p in c.principles)
    one = runner.invoke(app, ["constitution", "show", "harmless", "-p", c.principles[0].id])
    assert one.exit_code == 0 and "=== preference prompt" in one.output
    unknown = runner.invoke(app, ["constitution", "show", "harmless", "-p", "nope"])
    assert unknown.exit_code == 2 and "no principle 'nope'" in unknown.output
