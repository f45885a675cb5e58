"""The file contract shared by every stage.

- JSONL in and out through `jsonlines`; `-` means stdin/stdout.
- An output appears only when complete: written to a temporary file in the same folder, then
  renamed, so a Makefile never sees half a file.
- Interrupted runs leave `OUT.partial.jsonl` (see `outputs.PartialRun`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import jsonlines

from rlaif.plumbing.errors import UserError, at, lone_surrogate
from rlaif.plumbing.options import option

STDIO = "-"  # stdin or stdout, wherever a path is taken


def read_input_bytes(path: str) -> bytes:
    """The bytes of an input file (or stdin for `-`), a `.gz` file's decompressed (HH-RLHF
    ships as test.jsonl.gz); one-line errors for the usual mistakes."""
    if path == STDIO:
        if sys.stdin is None:
            raise at(path, None, "standard input is closed; give a file, or pipe one in")
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise at(path, None, "no such file")
    if p.is_dir():
        raise at(path, None, "is a folder, expected a JSONL file")
    data = p.read_bytes()
    if path.endswith(".gz"):
        import gzip
        import zlib

        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise at(path, None, f"not a complete gzip file ({e})") from None
    return data


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
    for number, obj in rows:
        if b"\\u" in lines[number - 1] and not is_text(obj):
            raise lone_surrogate(path, number)
    return rows


def is_text(obj: Any) -> bool:
    """Whether every string in a parsed row (or YAML document) can be written back as UTF-8
    (JSON's or YAML's \\ud800 alone parses into a string that cannot)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(kw_only=True)
class DatasetSettings:
    """Which part of a dataset input to read (a hub dataset, or a `datasets` folder holding
    several splits), with the names TRL's command lines give these options."""

    dataset_config: str | None = option(
        None, help="The hub dataset's configuration (subset), as `load_dataset`'s name."
    )
    dataset_train_split: str = option(
        "train",
        help="The split of a hub dataset (unless `hf:NAME:SPLIT` names one) or of a datasets"
        " folder to read.",
    )


def read_jsonl(
    path: str, dataset: DatasetSettings | None = None
) -> tuple[list[tuple[int, dict]], str]:
    """Records with their line numbers, and the sha256 of the input's bytes. Besides JSONL
    (plain or .gz): a parquet file, a `datasets` folder, or a hub dataset (`is_dataset`),
    the split and configuration `dataset` says."""
    if is_dataset(path):
        return read_dataset(path, dataset or DatasetSettings())
    data = read_input_bytes(path)
    return parse_jsonl(path, data), sha256_bytes(data)


HUB_DATASET = "hf:"  # hf:trl-lib/ultrafeedback_binarized, or hf:NAME:SPLIT (default: train)


def is_dataset(path: str) -> bool:
    """Preference data as TRL users keep it: parquet, a `save_to_disk` folder, the hub."""
    p = Path(path)
    saved = p.is_dir() and any(
        (p / f).is_file() for f in ("dataset_info.json", "dataset_dict.json")
    )
    return path.startswith(HUB_DATASET) or path.endswith(".parquet") or saved


def read_dataset(
    path: str, settings: DatasetSettings | None = None
) -> tuple[list[tuple[int, dict]], str]:
    """The rows of a dataset, numbered from 1 as lines are (errors name `FILE:ROW`). The hash
    is that of the rows as JSON lines, so it identifies what was read, wherever it came from."""
    import datasets

    settings = settings or DatasetSettings()
    wanted = settings.dataset_train_split
    try:
        if path.startswith(HUB_DATASET):
            name, _, split = path[len(HUB_DATASET) :].partition(":")
            _check_hub_reachable(path)
            data = datasets.load_dataset(name, settings.dataset_config, split=split or wanted)
        elif path.endswith(".parquet"):
            if not Path(path).is_file():
                raise at(path, None, "no such file")
            import pyarrow.parquet

            # pyarrow directly: the rows without datasets' cache copy or progress bars
            return _numbered(pyarrow.parquet.read_table(path).to_pylist(), path)
        else:
            data = datasets.load_from_disk(path)
            if isinstance(data, datasets.DatasetDict):
                if wanted not in data:
                    raise at(
                        path,
                        None,
                        f"no {wanted!r} split (splits: {', '.join(data)});"
                        " choose one with --dataset-train-split",
                    )
                data = data[wanted]
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        message = " ".join(str(e).split())[:200]
        raise at(
            path, None, f"cannot be read as a dataset ({type(e).__name__}: {message})"
        ) from None
    return _numbered(data.to_list(), path)


def _numbered(records: list[dict], path: str) -> tuple[list[tuple[int, dict]], str]:
    rows = [(i, dict(row)) for i, row in enumerate(records, 1)]
    if not rows:
        raise at(path, None, "empty dataset: no records")
    digest = hashlib.sha256()
    for number, row in rows:
        try:
            line = json_line(row)
        except TypeError:
            raise _not_json(path, number, row) from None
        digest.update((line + "\n").encode("utf-8"))
    return rows, digest.hexdigest()


def _not_json(path: str, number: int, row: dict) -> UserError:
    """A dataset's column that no JSONL row could hold (a timestamp, bytes), named: a stage
    writes its rows back as JSON."""
    for column, value in row.items():
        try:
            json_line(value)
        except TypeError as e:
            return at(
                path,
                number,
                f"column {column!r} holds what JSON cannot ({e}); convert it to text or drop it",
            )
    return at(path, number, "holds a value JSON cannot hold")


def unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """The hub's host when it cannot be reached now (HF_ENDPOINT, else huggingface.co), else
    None. Offline, the hub clients retry for about a minute: this answers in seconds."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return host
    return None


def _check_hub_reachable(path: str) -> None:
    if os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "")).lower() in (
        "1", "true", "yes", "on",
    ):  # fmt: skip
        return  # the cache answers, or datasets says it is not there
    host = unreachable_hub()
    if host:
        raise at(
            path,
            None,
            f"the hub ({host}) cannot be reached (no network?); download the dataset where"
            " there is one (datasets' save_to_disk) and give its folder",
        ) from None


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
    except OSError as e:
        if e.filename is not None:
            raise
        # a write error (a full disk) names no file: name the output, and what is left
        raise _write_error(str(path), e) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(path: str, e: OSError):
    """A write error that names no file (a full disk): the output named, and the space left."""
    free = _free_space(Path(path).parent)
    return at(path, None, f"{e.strerror or e} while writing it; nothing was written ({free})")


# How libraries that write a model say the disk is full: safetensors raises its own
# SafetensorError ("I/O error: No space left on device (os error 28)"), torch.save a RuntimeError
# that carries the system's message; neither is an OSError with an errno to look at.
_DISK_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(e: BaseException) -> bool:
    """Whether an error, of whatever type, says the disk (or the user's quota) is full."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(e) for words in _DISK_FULL)


def disk_full_error(path: str | Path, what: str) -> UserError:
    """The one line for a full disk while writing `what` at `path`, with the space left there."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    free = _free_space(folder)
    return at(str(path), None, f"no space left on device while writing {what} ({free})")


def _free_space(folder: Path) -> str:
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:,.1f} MiB free there"


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for a block of renames that must happen all or not at all;
    a signal sent meanwhile is delivered (and handled as usual) when the block ends.

    Python runs a signal's handler in the main thread whichever thread the kernel hands the
    signal to, so a mask on this thread alone (pthread_sigmask) holds nothing back once a
    library has started threads of its own (torch, tokenizers, vLLM): the kernel delivers to
    one of those instead. The handlers themselves are swapped for the block."""
    import signal
    import threading

    held = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread only: nothing here for a signal to interrupt
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])  # handled now, as it would have been


def write_with_manifest(
    path: str,
    rows: Iterable[dict],
    manifest_file: Path,
    manifest: dict,
    leftovers: Iterable[Path] = (),
):
    """Publish a JSONL output and its manifest together, or neither.

    Both are written to temporary files first, and the manifest records the output's size and
    sha256 (`file_identity`, to notice an edit by hand later). Then both are renamed into
    place with SIGINT and SIGTERM held back, so a signal cannot land between the two renames;
    a failure before them (a full disk, a signal) leaves neither, nor any temporary file.
    `leftovers` (the run's partial file, its OUT.work/) are removed in the same held block: a
    signal delivered just after the renames would leave them for good, since the rerun finds
    the output up to date and never looks at them."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = [target.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (target, manifest_file)]
    try:
        with open(staged[0], "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json_line(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(staged[1], "w", encoding="utf-8") as f:
            json.dump(
                {**manifest, "output": file_identity(staged[0])},
                f,
                indent=2,
                ensure_ascii=False,
                default=str,
            )
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        with signals_held():
            os.replace(staged[0], target)
            os.replace(staged[1], manifest_file)
            for leftover in leftovers:
                _remove(leftover)
    except OSError as e:
        if e.filename is not None:
            raise
        raise _write_error(path, e) from None
    finally:
        for p in staged:
            p.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def file_identity(path: str | Path) -> dict:
    """What a manifest records of the output it describes, to notice an edit by hand."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """Write rows atomically to `path`, or to stdout for `-`."""
    if path == STDIO:
        if sys.stdout is None:
            raise at(path, None, "standard output is closed; give -o a file path")
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


def folder_digest(path: str | Path, leave_out: Collection[str] = ()) -> str:
    """A cheap identity for a model folder: names, sizes and modification times of its files
    (but those named in `leave_out`, such as the manifest that records the digest).

    Hashing gigabytes of weights on every run would cost more than the check is worth; a
    retrained model rewrites its files, and a file edited by hand is written again: either
    changes their times.
    """
    root = Path(path)
    entries = sorted(
        f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in root.rglob("*")
        if p.is_file() and str(p.relative_to(root)) not in leave_out
    )
    return sha256_bytes("\n".join(entries).encode())
