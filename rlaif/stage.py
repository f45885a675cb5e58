"""What every record-by-record stage shares: resumable chunks, a progress bar, atomic output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from rlaif.files import STDIO, PartialRun, manifest_path, write_jsonl
from rlaif.manifest import write_manifest


def settings_fingerprint(cfg, input_field: str, **resolved) -> dict:
    """What must not change for an interrupted run to be resumed: the settings (not where the
    output goes, nor --force; the input by its hash, not its path) and `resolved` values."""
    ignored = ("output", "force", input_field)
    return {**{k: v for k, v in asdict(cfg).items() if k not in ignored}, **resolved}


@dataclass
class ChunkedRun:
    rows: list[dict]  # one per input record, in input order
    resumed: int  # records taken from an interrupted run's partial file


def run_in_chunks(
    *,
    output: str,
    fingerprint: dict,
    force: bool,
    records: Sequence,
    chunk_size: int,
    steps_per_record: int,
    process_chunk: Callable[[list, Callable[[int], None]], list[dict]],
    description: str,
) -> ChunkedRun:
    """Process `records` chunk by chunk, saving each finished chunk so a crash loses at most one.

    `process_chunk(chunk, advance)` returns one row (with the record's `id`) per record and
    calls `advance(n)` as engine work completes, for the progress bar.
    """
    from tqdm import tqdm

    partial = PartialRun(output, fingerprint, force) if output != STDIO else None
    done: dict[str, dict] = dict(partial.done) if partial else {}
    resumed = len(done)
    if resumed:
        print(f"resuming: {resumed} of {len(records)} records already done", file=sys.stderr)
    pending = [r for r in records if r.id not in done]
    with tqdm(
        total=len(pending) * steps_per_record,
        desc=description,
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(pending), chunk_size):
            rows = process_chunk(pending[start : start + chunk_size], bar.update)
            if partial:
                partial.append(rows)
            done.update((row["id"], row) for row in rows)
    return ChunkedRun([done[r.id] for r in records], resumed)


def publish(output: str, rows: list[dict], manifest: dict) -> None:
    """Write the manifest, then the output (atomically), then drop the partial file.

    The manifest goes first so that whenever the output exists its provenance does too.
    """
    if output == STDIO:
        write_jsonl(output, rows)
        return
    write_manifest(manifest_path(output), manifest)
    write_jsonl(output, rows)
    PartialRun.discard(output)
