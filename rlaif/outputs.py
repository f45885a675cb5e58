"""The one output policy: what a run does with the unfinished work of an earlier one.

Every stage keeps unfinished work beside its output, with the fingerprint of the settings that
made it: record stages in `OUT.partial.jsonl` (eval winrate's phases too, in `OUT.work/`),
training stages in `DIR.partial/`. On a rerun:

- same fingerprint: resume;
- another fingerprint: refuse, naming what changed, unless `--force`, which starts over.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.errors import UserError


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
