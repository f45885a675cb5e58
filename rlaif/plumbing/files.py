"""The file contract shared by every stage.

- JSONL in and out through `jsonlines`; `-` means stdin/stdout.
- An output appears only when complete: written to a temporary file in the same folder, then
  renamed, so a Makefile never sees half a file.
- Interrupted runs leave `OUT.partial.jsonl` (see `outputs.PartialRun`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from rlaif.plumbing.errors import at

STDIO = "-"  # stdin or stdout, wherever a path is taken


def read_input_bytes(path: str) -> bytes:
    """The bytes of an input file (or stdin for `-`); one-line errors for the usual mistakes."""
    if path == STDIO:
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise at(path, None, "no such file")
    if p.is_dir():
        raise at(path, None, "is a folder, expected a JSONL file")
    return p.read_bytes()


def parse_jsonl(path: str, data: bytes) -> list[tuple[int, dict]]:
    """Parse JSONL bytes into (line number, object) pairs; blank lines are skipped.

    Raises a UserError naming file and line for non-UTF-8 bytes, invalid JSON, non-object lines
    and an input without any record.
    """
    lines = data.split(b"\n")
    current_line = 0

    def numbered_lines() -> Iterator[bytes]:
        # jsonlines pulls one line per record, so the counter names the line being parsed.
        nonlocal current_line
        for current_line, line in enumerate(lines, 1):  # noqa: B007 (read by the closure's caller)
            yield line

    rows: list[tuple[int, dict]] = []
    reader = jsonlines.Reader(numbered_lines())
    try:
        for obj in reader.iter(type=dict, skip_empty=True):
            rows.append((current_line, obj))
    except RecursionError:
        raise at(path, current_line, "JSON nested too deeply to be a record") from None
    except jsonlines.InvalidLineError as e:
        problem = str(e).rsplit(" (line", 1)[0]
        if "requested type" in problem:
            problem = "expected a JSON object ({...}) on each line"
        elif e.__cause__ is not None:
            problem = f"{problem.split(':')[0]}: {e.__cause__}"
        raise at(path, current_line, problem) from None
    if not rows:
        raise at(path, None, "empty file: no JSON records found")
    return rows


def read_jsonl(path: str) -> tuple[list[tuple[int, dict]], str]:
    """Records with their line numbers, and the sha256 of the input's bytes."""
    data = read_input_bytes(path)
    return parse_jsonl(path, data), sha256_bytes(data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def content_id(obj: Any) -> str:
    """A stable id for a record's content: 16 hex digits of its canonical JSON's sha256."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return sha256_bytes(canonical.encode())[:16]


def json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """Write rows atomically to `path`, or to stdout for `-`."""
    if path == STDIO:
        with jsonlines.Writer(sys.stdout, dumps=json_line, flush=True) as writer:
            writer.write_all(rows)
        return
    with atomic_output(path) as f, jsonlines.Writer(f, dumps=json_line) as writer:
        writer.write_all(rows)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_output(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def manifest_path(output: str) -> Path:
    return Path(f"{output}.manifest.json")


def partial_path(output: str) -> Path:
    return Path(f"{output}.partial.jsonl")


def folder_digest(path: str | Path) -> str:
    """A cheap identity for a model folder: names, sizes and modification times of its files.

    Hashing gigabytes of weights on every run would cost more than the check is worth; a
    retrained model rewrites its files, which changes their times.
    """
    root = Path(path)
    entries = sorted(
        f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in root.rglob("*")
        if p.is_file()
    )
    return sha256_bytes("\n".join(entries).encode())
