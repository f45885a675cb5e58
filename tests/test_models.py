"""Model resolution: the embedded alias, GGUF files, folders, hub ids, and racing conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import EMBEDDED_ALIAS, embedded_gguf_path, resolve_model


def test_embedded_alias_converts_into_rlaif_home_and_loads(embedded_model, session_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(embedded_model)
    assert folder.parent == session_home / "models"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


def test_alias_is_cached_not_reconverted(home_with_model, embedded_model):
    first = resolve_model(EMBEDDED_ALIAS)
    assert first.path.endswith(Path(embedded_model).name)
    assert first.kind == "embedded" and len(first.source_sha256) == 64


@pytest.mark.slow
def test_two_processes_racing_produce_one_complete_folder(isolated_home):
    script = (
        "from rlaif.plumbing.models import resolve_model, EMBEDDED_ALIAS; "
        "print(resolve_model(EMBEDDED_ALIAS).path)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = {p.communicate(timeout=600)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    models = isolated_home / "models"
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == [
        Path(paths.pop()).name
    ]
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]


def test_gguf_path_uses_the_same_conversion(home_with_model, tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.symlink_to(embedded_gguf_path())
    resolved = resolve_model(str(gguf))
    assert resolved.kind == "gguf" and Path(resolved.path, "model.safetensors").is_file()


def test_folder_and_hub_ids(tmp_path, embedded_model, monkeypatch):
    assert resolve_model(embedded_model).kind == "folder"
    # A hub id resolves when the model is in the local hub cache ...
    cache = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("abc")
    (cache / "snapshots" / "abc").mkdir(parents=True)
    (cache / "snapshots" / "abc" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    # ... and fails in one line, at once, when it is not and there is no network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="not a model folder"):
        resolve_model("./no/such/folder")
