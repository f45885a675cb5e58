"""The one output policy: what a run may do with what already lies where it writes.

Before any work, for a JSONL output `OUT` (manifest `OUT.manifest.json`) or a model folder
`DIR` (manifest `DIR/manifest.json`):

- an output that is also one of the run's inputs (however spelled: relative, absolute,
  symlink, hard link; or a folder holding one) is refused;
- a file or non-empty folder that rlaif did not write (no manifest beside or in it) is never
  overwritten: a file only with `--force`, a folder never (`--force` does not delete what rlaif
  did not write; neither does replacing a model folder holding files its manifest does not list);
- an output written with the same settings and the same inputs is up to date: nothing is
  rewritten, as Make expects;
- an output written from other inputs (a changed input file, model or constitution) with the
  same settings is simply made again: that is what Make asks for when a prerequisite changes;
- an output written with other settings is refused, naming what changed, unless `--force`.

Unfinished work lives beside the output with the fingerprint of the settings and inputs that
made it: `OUT.partial.jsonl` (eval winrate's phases in `OUT.work/`), `DIR.partial/`. A rerun
resumes it when the fingerprint matches, refuses it otherwise unless `--force`, and discards
it silently when it holds no finished record or checkpoint, since then nothing would be lost.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import (
    STDIO,
    disk_full_error,
    folder_digest,
    is_disk_full,
    json_line,
    manifest_path,
    partial_path,
    sha256_file,
)
from rlaif.plumbing.manifest import read_manifest

PARTIAL_HEADER_KEY = "__rlaif_partial__"


def resume_or_refuse(work: Path, recorded: dict | None, fingerprint: dict, force: bool) -> bool:
    """True: resume the work at `work` (made with the `recorded` fingerprint). False: start
    afresh (nothing there, or `--force` given); the caller discards what is there."""
    if not work.exists():
        return False
    if recorded == fingerprint:
        return True
    if force:
        return False
    changed = changed_keys(recorded, fingerprint)
    raise UserError(
        f"{work}: an interrupted run with different settings exists"
        f" (changed: {', '.join(changed) or 'unreadable settings'});"
        " rerun with the same settings to resume, or add --force to start over"
    )


def changed_keys(old: dict | None, new: dict) -> list[str]:
    if not isinstance(old, dict):
        return []
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def is_input_identity(key: str) -> bool:
    """Fingerprint keys that identify inputs (files, models, constitution) rather than settings."""
    return key.endswith("sha256") or key == "inputs"


def refuse_output_as_input(output: str, inputs: Iterable[str | None], option: str) -> None:
    """Refuse an output that is one of the inputs, or a folder that holds one."""
    if output == STDIO:
        return
    out = Path(output)
    for given in inputs:
        if not given or given == STDIO:
            continue
        source = Path(given)
        if _same(out, source) or (out.is_dir() and _inside(source, out)):
            raise UserError(
                f"{option} {output}: is also an input ({given}); write the output elsewhere"
            )


def _refuse_stdout_as_input(inputs: Iterable[str | None], option: str) -> None:
    """`rlaif generate in.jsonl -o - >> in.jsonl` would read its own rows as they are written;
    refused like GNU cat's "input file is output file"."""
    try:
        out = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return  # not a real file (a test's capture, a pipe object)
    for given in inputs:
        if not given or given == STDIO:
            continue
        try:
            source = os.stat(given)
        except OSError:
            continue
        if (source.st_dev, source.st_ino) == (out.st_dev, out.st_ino):
            raise UserError(f"{option} -: standard output is the input {given}; write elsewhere")


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # symlinks and hard links too
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def existing_output(output: str, force: bool, *, folder: bool, option: str) -> dict | None:
    """What rlaif wrote at `output` before: its manifest, or None when there is nothing there
    (or an empty folder, or a file `--force` may replace). Refuses what rlaif did not write.
    Cheap: runs before any model is resolved."""

    if output == STDIO:
        return None
    path = Path(output)
    if not path.exists() and not path.is_symlink():
        return None
    if folder:
        if not path.is_dir():
            raise UserError(f"{option} {output}: exists and is not a folder")
        if not any(path.iterdir()):
            return None
        manifest_file = path / "manifest.json"
    else:
        if path.is_dir():
            raise UserError(f"{option} {output}: is a folder; give a file path")
        manifest_file = manifest_path(output)
    try:
        manifest = read_manifest(manifest_file)
    except UserError:
        manifest = None
    if manifest is None:
        if folder:
            raise UserError(
                f"{option} {output}: a folder rlaif did not write (no manifest.json); give a"
                " new or empty folder (rlaif never deletes files it did not write)"
            )
        if not force:
            raise UserError(
                f"{option} {output}: exists and rlaif did not write it (no {manifest_file.name});"
                " choose another path, or add --force to replace it"
            )
        return None
    if folder:
        _refuse_foreign_files(path, manifest, option)
    if _folder_edited(path, manifest) if folder else _edited(path, manifest):
        if not force:
            what = "a file's size or time" if folder else "its size or sha256"
            raise UserError(
                f"{option} {output}: changed since rlaif wrote it ({what} is not what"
                f" {manifest_file.name} records); move it away to keep it, or add --force to"
                " make it again"
            )
        return None
    return manifest


def _edited(path: Path, manifest: dict) -> bool:
    """Whether a JSONL output is no longer what its manifest says rlaif wrote (a row removed
    or edited by hand, a file cut short). Manifests from before they recorded it: trusted."""
    recorded = manifest.get("output")
    if not isinstance(recorded, dict):
        return False
    if path.stat().st_size != recorded.get("size"):
        return True
    return sha256_file(path) != recorded.get("sha256")


def _folder_edited(folder: Path, manifest: dict) -> bool:
    """Whether a model folder's files are no longer those rlaif wrote (a weights file replaced
    or edited by hand), by `folder_digest`. Manifests from before they recorded it: trusted."""
    recorded = manifest.get("output")
    if not isinstance(recorded, dict) or "digest" not in recorded:
        return False
    return folder_digest(folder, leave_out={"manifest.json"}) != recorded["digest"]


def up_to_date(
    output: str, manifest: dict | None, fingerprint: dict, force: bool, option: str
) -> dict | None:
    """The existing manifest (marked `up_to_date`) when `output` was written with the same
    settings and inputs: nothing to do. None: go ahead. Other settings: refused."""
    if manifest is None or force:
        return None
    recorded = manifest.get("fingerprint")
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded == fingerprint:
        print(
            f"up to date: {output} (same settings and inputs; --force redoes it)", file=sys.stderr
        )
        _touch(Path(output))
        return {**manifest, "up_to_date": True}
    changed = [k for k in changed_keys(recorded, fingerprint) if not is_input_identity(k)]
    if changed:
        raise UserError(
            f"{option} {output}: was written with other settings (changed:"
            f" {', '.join(changed)}); use the same settings, another path, or --force to"
            " replace it"
        )
    return None  # the same settings on changed inputs: make it again, as Make asks


def _touch(output: Path) -> None:
    """Newer than its inputs again, contents untouched: Make, which asked for it because an
    input's time changed, then sees it up to date too."""
    for path in (output, manifest_path(str(output)), output / "manifest.json"):
        if path.is_file():
            os.utime(path)


@dataclass
class OutputGuard:
    """A run's output, checked: what `guard_output` found there, and the check still to come
    once the run's fingerprint is known (models resolved, inputs hashed)."""

    output: str
    option: str
    force: bool
    previous: dict | None  # the manifest of what rlaif wrote there before

    def refuse_inputs(self, inputs: Iterable[str | None]) -> None:
        """Inputs known only later (a resolved model folder, a second input file) must not be
        the output either."""
        refuse_output_as_input(self.output, inputs, self.option)

    def up_to_date(self, fingerprint: dict) -> dict | None:
        """The previous manifest, marked `up_to_date`, when the run would make the same output:
        nothing to do. None: go ahead. Other settings on an existing output: refused."""
        return up_to_date(self.output, self.previous, fingerprint, self.force, self.option)


def guard_output(
    output: str,
    *,
    inputs: Iterable[str | None],
    force: bool,
    option: str,
    kind: str | Callable[[Path], bool] = "file",
    stdout_ok: bool = True,
) -> OutputGuard:
    """The one check of what a run writes, before any work: the output is none of the inputs
    (nor a folder holding one), and whatever lies there was written by rlaif.

    `kind`: "file" (a JSONL output with OUT.manifest.json beside it), "folder" (a model folder
    with manifest.json inside), or, for a file that carries no manifest (a report, a plot),
    the function that tells whether rlaif wrote it. Standard output (`-`) passes every check
    where the output can be streamed; `stdout_ok=False` refuses it (a folder, a PNG, a page)."""
    if output == STDIO:
        if kind == "folder" or not stdout_ok:
            raise UserError(f"{option} -: this output cannot go to standard output; give a path")
        if sys.stdout is None:  # `>&-` in a shell: nothing could be written
            raise UserError(f"{option} -: standard output is closed; give a file path")
        _refuse_stdout_as_input(inputs, option)
        return OutputGuard(output, option, force, None)
    if callable(kind):
        check_overwrite(output, kind, option)
        refuse_output_as_input(output, inputs, option)
        return OutputGuard(output, option, force, None)
    refuse_output_as_input(output, inputs, option)
    lock_output(output, option)
    previous = existing_output(output, force, folder=kind == "folder", option=option)
    return OutputGuard(output, option, force, previous)


# --- one writer per output ----------------------------------------------------------------------
# The lock is an flock on `.OUT.lock` beside the output: the kernel drops it when the process
# ends however it ends, so a killed run never blocks a rerun. This process's locks, by lock
# file: (descriptor, a folder made for it that is removed again if left empty).
_HELD: dict[str, tuple[int, Path | None]] = {}


def lock_output(output: str, option: str) -> None:
    """Take the output's lock for the rest of this command (`release_output_locks`), or refuse
    in one line while another run holds it. Two runs writing one output (make -j with two
    targets naming one file) would otherwise share its partial file and publish rows of both
    settings under one manifest."""
    import fcntl

    if int(os.environ.get("RANK", "0")) != 0:
        return  # a data-parallel worker: the main process (rank 0) holds the lock for them
    target = Path(output)
    lock = target.with_name(f".{target.name}.lock")
    key = str(lock.absolute())
    if key in _HELD:
        return  # this process holds it already (a Python caller running a second stage)
    made = None
    if not target.parent.exists():
        made = next(p for p in [target.parent, *target.parent.parents] if p.parent.exists())
        target.parent.mkdir(parents=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            _remove_empty(made)
            raise UserError(
                f"{option} {output}: another rlaif run (pid {holder}) is writing it; wait for it"
                " to finish, or give another path"
            ) from None
        # the holder before us may have removed the file as we opened it: lock the live one
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = (fd, made)


def one_run(run):
    """A stage's entry point, called from Python as from the CLI: the output locks it took are
    dropped when it returns or fails (the CLI drops them too, at the end of the command)."""
    import functools

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        held = set(_HELD)
        try:
            return run(*args, **kwargs)
        finally:
            release_output_locks(keep=held)

    return wrapper


def release_output_locks(keep: set[str] = frozenset()) -> None:
    """Drop the output locks this process took (but those in `keep`)."""
    for key, (fd, made) in list(_HELD.items()):
        if key in keep:
            continue
        try:
            if os.stat(key).st_ino == os.fstat(fd).st_ino:
                os.unlink(key)
        except FileNotFoundError:
            pass
        os.close(fd)
        _remove_empty(made)
        del _HELD[key]


def _remove_empty(folder: Path | None) -> None:
    """Remove a folder made for a lock, and the folders made with it, where nothing else was
    written there."""
    if folder is None:
        return
    for path in sorted((p for p in [folder, *folder.rglob("*")] if p.is_dir()), reverse=True):
        try:
            path.rmdir()
        except OSError:
            pass


def _refuse_foreign_files(folder: Path, manifest: dict, option: str) -> None:
    listed = manifest.get("files")
    if not isinstance(listed, list):
        return  # written before manifests listed their files: trust the manifest
    own = set(listed)
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(folder))
        if name != "manifest.json" and name not in own:
            raise UserError(
                f"{option} {folder}: holds {name}, which rlaif did not write there; move it"
                " out, or give another folder (rlaif never deletes files it did not write)"
            )


def folder_files(folder: Path) -> list[str]:
    """The files of a model folder as its manifest lists them (the manifest itself aside)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def check_overwrite(path: str, written_by_rlaif, option: str) -> None:
    """For outputs without a manifest (a report page, a plot, a JSON report): replace only a
    file rlaif wrote, as `written_by_rlaif(path)` recognises it."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file path")
    try:
        ours = not p.exists() or written_by_rlaif(p)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(
            f"{option} {path}: exists and rlaif did not write it; choose another path, or move"
            " it away first"
        )


def png_written_by_rlaif(path: Path) -> bool:
    from PIL import Image

    from rlaif.plumbing.plots import PNG_SOFTWARE

    with Image.open(path) as image:
        return image.info.get("Software") == PNG_SOFTWARE


def json_report_written_by_rlaif(path: Path) -> bool:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and {"accuracy", "ece", "bins"} <= data.keys()


class PartialRun:
    """The sidecar of an unfinished run: finished records survive a crash, even SIGKILL.

    Each batch of finished records is appended and fsync'ed; a line cut short by a crash is
    dropped on reopening, so its record is simply done again. The file is created with the
    first finished records: a run that fails before any leaves nothing behind, and a partial
    file that holds no record is discarded whatever its settings (nothing would be lost).
    """

    def __init__(self, output: str, fingerprint: dict, force: bool):
        self.path = partial_path(output)
        self.fingerprint = fingerprint
        self.done: dict[str, dict] = {}
        if self.path.exists():
            self._reopen(force)

    def _reopen(self, force: bool) -> None:
        raw = self.path.read_bytes()
        good_end = 0
        header = None
        records: dict[str, dict] = {}
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # cut short by a crash
            try:
                obj = json.loads(line)
            except ValueError:
                break
            if header is None:
                header = obj.get(PARTIAL_HEADER_KEY) if isinstance(obj, dict) else None
                if header is None:
                    break
            elif isinstance(obj, dict) and "id" in obj:
                records[obj["id"]] = obj
            else:
                break
            good_end += len(line)
        if not records or not resume_or_refuse(self.path, header, self.fingerprint, force):
            self.path.unlink()
            return
        self.done = records
        with open(self.path, "r+b") as f:
            f.truncate(good_end)

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                if new:
                    f.write(json_line({PARTIAL_HEADER_KEY: self.fingerprint}) + "\n")
                for record in records:
                    f.write(json_line(record) + "\n")
                    self.done[record["id"]] = record
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.filename is not None or not is_disk_full(e):
                raise
            # the system's words name no file; a line cut short here is dropped on resuming
            raise disk_full_error(self.path, "finished records (those saved are kept)") from None
