"""`rlaif merge`: join the outputs of `--shard I/N` runs into the output one run would have written.

Each shard's manifest says which shard it is and the input line of each of its rows; the merged
rows are put back in input order by those lines, so the input file itself is not needed (it may
be on another machine, or have come from stdin). The shards must come from one command: same
stage, settings (all but the output path, --shard and --force; the input by its hash, not its
path), constitution, models, and shard count, with every shard present exactly once.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlaif.engines import SERVING_ONLY
from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import STDIO, manifest_path, read_input_bytes, read_jsonl, sha256_file
from rlaif.plumbing.manifest import read_manifest
from rlaif.plumbing.options import option, output_option
from rlaif.plumbing.outputs import guard_output, one_run
from rlaif.plumbing.progress import throughput_of
from rlaif.plumbing.shard import Shard
from rlaif.stages.runner import publish

MERGEABLE_STAGES = ("generate", "sample", "label")
# Settings that may differ between the shards of one job.
PER_SHARD_SETTINGS = ("output", "force", "shard")
# Keys of a shard's manifest that describe the shard alone, not the merged whole.
SHARD_ONLY_KEYS = ("shard", "input_lines", "diagnostics")


@dataclass
class MergeConfig:
    """Join the outputs of `generate`, `sample` or `label` run with --shard I/N into one output.

    Refuses shards of different jobs (stage, settings, input hash, constitution, models or
    shard count differ), a missing or repeated shard, and a record in two shards. Rows come
    out in input order, as one unsharded run writes them; the manifest sums counts and tokens,
    lists the shards and, for label, recomputes the judge diagnostics over all rows.

    Examples:

      rlaif merge prefs-1.jsonl prefs-2.jsonl prefs-3.jsonl -o prefs.jsonl

      rlaif merge revisions-*.jsonl -o revisions.jsonl
    """

    # the shard runs' output files; each manifest lies beside its file
    shards: list[str] = option(
        help="Outputs of `--shard I/N` runs, each with its OUT.manifest.json.", argument=True
    )
    output: str = output_option()


@dataclass
class ShardPart:
    path: str
    manifest: dict
    shard: Shard
    rows: list[dict]
    input_lines: list[int]  # the input line of each row, in row order


def load_part(path: str) -> ShardPart:
    """A shard's rows and manifest, checked to belong together."""
    if path == STDIO:
        raise UserError("merge reads files, not stdin: each shard's manifest lies beside it")
    manifest = _read_manifest(path)
    if not isinstance(manifest.get("shard"), dict):
        raise at(path, None, "not a shard's output (its manifest has no 'shard'; run with --shard)")
    try:
        shard = Shard(int(manifest["shard"]["index"]), int(manifest["shard"]["count"]))
    except (KeyError, TypeError, ValueError, UserError):
        raise at(path, None, f"unreadable 'shard' in its manifest: {manifest['shard']}") from None
    lines = manifest.get("input_lines")
    records = manifest.get("counts", {}).get("records")
    rows = _read_rows(path, records)
    if not isinstance(lines, list) or not len(rows) == len(lines) == records:
        raise at(
            path,
            None,
            f"{len(rows)} rows, but its manifest lists {records} records and"
            f" {len(lines) if isinstance(lines, list) else 'no'} input lines;"
            " the output and its manifest do not belong together",
        )
    return ShardPart(path, manifest, shard, rows, lines)


def _read_manifest(path: str) -> dict:
    mpath = manifest_path(path)
    if not Path(path).is_file():
        raise at(path, None, "no such file")
    if not mpath.is_file():
        raise at(path, None, f"no manifest {mpath}; merge needs each shard's output and manifest")
    return read_manifest(mpath)


def _read_rows(path: str, records) -> list[dict]:
    # A shard that owned no record wrote an empty file, which read_jsonl rightly refuses
    # elsewhere; here its manifest vouches for it.
    if records == 0 and not read_input_bytes(path).strip():
        return []
    return [row for _, row in read_jsonl(path)[0]]


def comparable(manifest: dict) -> dict[str, object]:
    """What must be equal across the shards of one job, flattened to `section.key` names."""
    inputs = manifest.get("inputs") or {}
    settings = manifest.get("settings") or {}
    # The input's path may differ from machine to machine; its hash may not.
    ignored = {*PER_SHARD_SETTINGS, *inputs}
    constitution = manifest.get("constitution") or {}
    return {
        "stage": manifest.get("stage"),
        "shard.count": (manifest.get("shard") or {}).get("count"),
        **{
            key: value
            for key, value in _flatten(
                "settings", {k: v for k, v in settings.items() if k not in ignored}
            ).items()
            # each machine may use its own servers of the same model
            if key.rsplit(".", 1)[-1] not in SERVING_ONLY or not key.startswith("settings.engine")
        },
        **{f"inputs.{name}.sha256": (info or {}).get("sha256") for name, info in inputs.items()},
        "constitution.sha256": constitution.get("sha256"),
        **{
            f"models.{role}": _model_identity(model)
            for role, model in (manifest.get("models") or {}).items()
        },
    }


def _flatten(prefix: str, value) -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, object] = {}
    for key, inner in value.items():
        out.update(_flatten(f"{prefix}.{key}", inner))
    return out


def _model_identity(model) -> object:
    """A model by what it is, not where it lies: the converted cache folder's path differs
    between machines, the hash of the GGUF it came from does not."""
    if not isinstance(model, dict):
        return model  # the engine's name
    if model.get("source_sha256"):
        return {"kind": model.get("kind"), "source_sha256": model["source_sha256"]}
    return {"kind": model.get("kind"), "spec": model.get("spec")}


def check_same_job(parts: list[ShardPart]) -> None:
    first, expected = parts[0], comparable(parts[0].manifest)
    if expected["stage"] not in MERGEABLE_STAGES:
        raise at(first.path, None, f"stage {expected['stage']!r} cannot be merged")
    for part in parts[1:]:
        found = comparable(part.manifest)
        for key in [*expected, *(k for k in found if k not in expected)]:
            if expected.get(key) != found.get(key):
                raise UserError(
                    f"{first.path} and {part.path}: not shards of one job:"
                    f" {key} differs ({_short(expected.get(key))} vs {_short(found.get(key))})"
                )


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def in_shard_order(parts: list[ShardPart]) -> list[ShardPart]:
    """The parts sorted by shard index; every index 1..N exactly once."""
    by_index: dict[int, ShardPart] = {}
    for part in parts:
        if part.shard.index in by_index:
            other = by_index[part.shard.index]
            raise UserError(f"{other.path} and {part.path}: both are shard {part.shard}")
        by_index[part.shard.index] = part
    count = parts[0].shard.count
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if missing:
        given = ", ".join(f"{p.path} ({p.shard})" for p in parts)
        raise UserError(f"missing shard {', '.join(missing)} (given: {given})")
    return [by_index[i] for i in sorted(by_index)]


def rows_in_input_order(parts: list[ShardPart]) -> list[dict]:
    """Every row once, ordered by its input line: the order one unsharded run writes."""
    where: dict[str, str] = {}
    placed: list[tuple[int, dict]] = []
    for part in parts:
        for line, row in zip(part.input_lines, part.rows, strict=True):
            record_id = row.get("id")
            if record_id is None:
                raise at(part.path, None, "a row without 'id'; not a generate or label output")
            if record_id in where:
                raise UserError(
                    f"{where[record_id]} and {part.path}: record {record_id!r} appears twice"
                )
            where[record_id] = part.path
            # sample's pairs of one prompt (ids `ID:k`) belong to the prompt's shard
            if not part.shard.owns(row.get("prompt_id", record_id)):
                raise at(part.path, None, f"record {record_id!r} is not in shard {part.shard}")
            placed.append((line, row))
    placed.sort(key=lambda pair: pair[0])
    return [row for _, row in placed]


def merged_manifest(parts: list[ShardPart], rows: list[dict], output: str, started: float):
    """The first shard's manifest, made the whole job's: summed counts and tokens, the shards
    listed, and (for label) judge diagnostics over all rows, which no shard alone can give."""
    manifests = [p.manifest for p in parts]
    base = manifests[0]
    manifest = {k: v for k, v in base.items() if k not in SHARD_ONLY_KEYS}
    manifest.update(
        command=sys.argv,
        settings={**base.get("settings", {}), "output": output, "shard": None},
        counts=_sum(m.get("counts") or {} for m in manifests),
        tokens=_sum(m.get("tokens") or {} for m in manifests),
        # each role's tokens over the shards' engine seconds together
        throughput=_merged_throughput(m.get("throughput") or {} for m in manifests),
        started_at=min(m.get("started_at", "") for m in manifests),
        finished_at=max(m.get("finished_at", "") for m in manifests),
        # Machine time spent on the job; each shard's own wall time is in `shards`.
        wall_time_s=round(sum(m.get("wall_time_s", 0.0) for m in manifests), 3),
        shards=[_shard_entry(p) for p in parts],
        fingerprint={"shards_sha256": sorted(sha256_file(p.path) for p in parts)},
        merge_wall_time_s=round(time.time() - started, 3),
    )
    if base.get("stage") == "label":
        from rlaif.judging.diagnostics import judge_diagnostics
        from rlaif.judging.jury import add_jury_figures

        manifest["diagnostics"] = add_jury_figures(judge_diagnostics(rows), rows)
    return manifest


def _sum(dicts) -> dict:
    total: dict = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _merged_throughput(throughputs) -> dict:
    by_role: dict[str, list[dict]] = {}
    for throughput in throughputs:
        for role, figures in throughput.items():
            by_role.setdefault(role, []).append(figures)
    return throughput_of({role: _sum(figures) for role, figures in by_role.items()})


def _shard_entry(part: ShardPart) -> dict:
    m = part.manifest
    return {
        "output": part.path,
        "manifest": str(manifest_path(part.path)),
        **part.shard.describe(),
        "command": m.get("command"),
        "counts": m.get("counts"),
        "tokens": m.get("tokens"),
        "versions": m.get("versions"),
        "started_at": m.get("started_at"),
        "finished_at": m.get("finished_at"),
        "wall_time_s": m.get("wall_time_s"),
    }


@one_run
def run(cfg: MergeConfig) -> dict:
    """Merge the shards; returns the merged manifest. Every check runs before any writing."""
    started = time.time()
    sidecars = [str(manifest_path(p)) for p in cfg.shards]
    guard = guard_output(
        cfg.output, inputs=[*cfg.shards, *sidecars], force=False, option="-o/--output"
    )
    parts = [load_part(path) for path in cfg.shards]
    # The merge is up to date when its shards are the same files as last time.
    fingerprint = {"shards_sha256": sorted(sha256_file(p) for p in cfg.shards)}
    existing = guard.up_to_date(fingerprint)
    if existing is not None:
        return existing
    check_same_job(parts)
    parts = in_shard_order(parts)
    rows = rows_in_input_order(parts)
    if len({json.dumps(p.manifest.get("versions"), sort_keys=True) for p in parts}) > 1:
        print(
            "warning: the shards ran with different package versions (see 'shards')",
            file=sys.stderr,
        )
    manifest = merged_manifest(parts, rows, cfg.output, started)
    publish(cfg.output, rows, manifest)
    if manifest["stage"] == "label":
        from rlaif.judging.diagnostics import format_diagnostics

        print(format_diagnostics(manifest["diagnostics"]), file=sys.stderr)
    return manifest
