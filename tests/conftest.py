"""Shared fixtures: an isolated RLAIF_HOME per test, and one converted embedded model per session.

Real-model tests share one loaded engine per session (loading costs seconds to tens of seconds).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
ENGINES = ["hf", "vllm"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own cache folder, so none reads what another wrote."""
    home = tmp_path_factory.mktemp("rlaif-home")
    monkeypatch.setenv("RLAIF_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session-rlaif-home")


@pytest.fixture(scope="session")
def embedded_model(session_home) -> str:
    """The embedded model converted once for the whole session; returns its folder."""
    from rlaif.models import EMBEDDED_ALIAS, resolve_model

    old = os.environ.get("RLAIF_HOME")
    os.environ["RLAIF_HOME"] = str(session_home)
    try:
        return resolve_model(EMBEDDED_ALIAS).path
    finally:
        if old is None:
            os.environ.pop("RLAIF_HOME", None)
        else:
            os.environ["RLAIF_HOME"] = old


@pytest.fixture
def home_with_model(isolated_home, embedded_model) -> Path:
    """An isolated RLAIF_HOME that already holds the converted embedded model."""
    (isolated_home / "models").symlink_to(Path(embedded_model).parent, target_is_directory=True)
    return isolated_home


_engines: dict[str, object] = {}


@pytest.fixture(scope="session", params=ENGINES)
def engine(request, embedded_model):
    """Each real engine on the embedded model, built once per session."""
    return _engine(request.param, embedded_model)


def _engine(name: str, model_path: str):
    if name == "vllm":
        pytest.importorskip("vllm")
    if name not in _engines:
        from rlaif.engines import EngineSettings, make_engine

        _engines[name] = make_engine(model_path, EngineSettings(engine=name, max_model_len=2048))
    return _engines[name]


@pytest.fixture(scope="session")
def engine_by_name(embedded_model):
    return lambda name: _engine(name, embedded_model)


def rlaif_cmd(*args: str) -> list[str]:
    """The real CLI, as a user runs it (a subprocess of this interpreter)."""
    return [sys.executable, "-m", "rlaif", *args]


def labelled_copy(tmp_path: Path, n: int = 16) -> Path:
    """HH pairs in `rlaif label`'s output format, with made-up judge probabilities."""
    from rlaif.files import read_jsonl
    from rlaif.pairs import parse_pair_records

    hh = DATA / "hh-harmless-64.jsonl"
    rows, _ = read_jsonl(str(hh))
    out = tmp_path / "labelled.jsonl"
    lines = []
    for i, r in enumerate(parse_pair_records(str(hh), rows)[:n]):
        p = [0.95, 0.55, 0.8, 0.52][i % 4]
        a, b = r.responses
        lines.append(
            json.dumps(
                {
                    "id": r.id,
                    "prompt": r.prompt,
                    "chosen": [{"role": "assistant", "content": a}],
                    "rejected": [{"role": "assistant", "content": b}],
                    "p_chosen": p,
                    "responses": [a, b],
                    "p": p,
                    "judgements": [],
                    "reference": 0,
                }
            )
        )
    out.write_text("\n".join(lines) + "\n")
    return out
