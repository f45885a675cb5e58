"""The layers stay layers: no import circle, no import from a layer above (tools/import_floors.py,
which anyone can run for the figures)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from import_floors import LAYERS, analyse  # noqa: E402


def test_no_import_circle_and_no_upward_import():
    result = analyse(REPO / "rlaif")
    assert result["circles"] == []
    assert result["upward"] == []


def test_every_module_lives_in_a_layer():
    """Besides the package's entry points (rlaif, rlaif.cli, rlaif.__main__), every module is in
    one of the layer packages, so the check above sees all of them."""
    loose = [
        p.name
        for p in (REPO / "rlaif").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py", "cli.py")
    ]
    assert loose == []
    folders = {p.name for p in (REPO / "rlaif").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
