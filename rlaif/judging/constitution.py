"""Constitutions: a YAML file of principles, each with the requests used to critique, revise
and compare responses. They are data; `validate` renders every template to prove it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import sha256_bytes
from rlaif.plumbing.options import option
from rlaif.plumbing.yaml_files import read_yaml

PRINCIPLE_FIELDS = ("id", "critique", "revision", "preference")
EXAMPLE_FIELDS = ("prompt", "response", "critique", "revision")
TOP_LEVEL_KEYS = {"name", "version", "description", "principles", "examples"}


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str  # asks the judge to point out where a response falls short of the principle
    revision: str  # asks the judge to rewrite the response to meet the principle
    preference: str  # a question to the judge comparing two responses (used by `rlaif label`)


@dataclass(frozen=True)
class Example:
    """A worked critique→revision, shown to the judge as earlier turns (few-shot)."""

    prompt: str
    response: str
    critique: str
    revision: str
    principle: str | None = None
    critique_request: str = ""
    revision_request: str = ""


@dataclass(frozen=True)
class Constitution:
    name: str
    version: str
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()
    description: str = ""
    path: str = ""
    sha256: str = ""
    by_id: dict[str, Principle] = field(default_factory=dict, compare=False, repr=False)

    def principle(self, principle_id: str) -> Principle:
        return self.by_id[principle_id]


BUNDLED_DIR = Path(__file__).resolve().parents[2] / "constitutions"


def bundled_constitutions() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def resolve_constitution_path(name_or_path: str) -> str:
    """A file path, or the name of a constitution shipped in `constitutions/` (e.g. `harmless`)."""
    if (
        Path(name_or_path).exists()
        or name_or_path.endswith((".yaml", ".yml"))
        or "/" in name_or_path
    ):
        return name_or_path
    bundled = BUNDLED_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return str(bundled)
    raise UserError(
        f"--constitution {name_or_path}: no such file, and not a bundled constitution"
        f" ({', '.join(bundled_constitutions()) or 'none found'})"
    )


def load_constitution(path: str) -> Constitution:
    """Parse and check a constitution file; every error names the file and the principle."""
    data = read_yaml(path, "constitution file")
    raw = Path(path).read_bytes()
    if not isinstance(data, dict):
        raise at(path, None, "expected a mapping with name, version and principles")
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise at(path, None, f"unknown key(s): {', '.join(sorted(unknown))}")
    for key in ("name", "version"):
        if not str(data.get(key) or "").strip():
            raise at(path, None, f"missing '{key}'")
    principles = _parse_principles(path, data.get("principles"))
    by_id = {pr.id: pr for pr in principles}
    examples = _parse_examples(path, data.get("examples") or [], by_id, principles[0])
    return Constitution(
        name=str(data["name"]),
        version=str(data["version"]),
        description=str(data.get("description") or ""),
        principles=tuple(principles),
        examples=tuple(examples),
        path=str(path),
        sha256=sha256_bytes(raw),
        by_id=by_id,
    )


def _text(path: str, where: str, entry: dict, key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise at(path, None, f"{where}: '{key}' must be non-empty text")
    placeholder = _PLACEHOLDER.search(value)
    if placeholder:
        # A user may expect {prompt} to be filled in; it would reach the judge verbatim instead.
        raise at(
            path,
            None,
            f"{where}: '{key}' contains the placeholder {placeholder.group(0)}; principles are"
            " plain text (the conversation is shown to the judge separately)",
        )
    return value.strip()


_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_PRINCIPLE_ID = re.compile(r"[a-z0-9_-]{1,64}")


def _parse_principles(path: str, entries) -> list[Principle]:
    if not isinstance(entries, list) or not entries:
        raise at(path, None, "'principles' must be a non-empty list")
    principles: list[Principle] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise at(path, None, f"principle #{n}: expected a mapping")
        pid = entry.get("id")
        if pid is None or pid == "":
            raise at(path, None, f"principle #{n}: missing 'id'")
        if not isinstance(pid, str) or not _PRINCIPLE_ID.fullmatch(pid):
            raise at(
                path,
                None,
                f"principle #{n}: id {pid!r} must be a short name of a-z, 0-9, '_' and '-'",
            )
        where = f"principle '{pid}'"
        if pid in seen:
            raise at(path, None, f"{where}: duplicate id")
        seen.add(pid)
        unknown = set(entry) - set(PRINCIPLE_FIELDS)
        if unknown:
            raise at(path, None, f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        fields = {k: _text(path, where, entry, k) for k in PRINCIPLE_FIELDS[1:]}
        principles.append(Principle(id=pid, **fields))
    return principles


def _parse_examples(path, entries, by_id, default_principle: Principle) -> list[Example]:
    if not isinstance(entries, list):
        raise at(path, None, "'examples' must be a list")
    examples = []
    for n, entry in enumerate(entries, 1):
        where = f"example #{n}"
        if not isinstance(entry, dict):
            raise at(path, None, f"{where}: expected a mapping")
        unknown = set(entry) - set(EXAMPLE_FIELDS) - {"principle"}
        if unknown:
            raise at(path, None, f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        pid = entry.get("principle")
        if pid is not None and pid not in by_id:
            raise at(path, None, f"{where}: principle '{pid}' is not defined")
        principle = by_id[pid] if pid is not None else default_principle
        fields = {k: _text(path, where, entry, k) for k in EXAMPLE_FIELDS}
        examples.append(
            Example(
                **fields,
                principle=principle.id,
                critique_request=principle.critique,
                revision_request=principle.revision,
            )
        )
    return examples


def render_all(constitution: Constitution) -> dict[str, dict[str, list[dict]]]:
    """Render every prompt each principle produces, on a sample conversation.

    Returns {principle id: {"critique": chat, "revision": chat, "preference": chat}}; raises a
    UserError naming the principle whose prompt cannot be built.
    """
    from rlaif.judging import prompts

    sample_prompt = [{"role": "user", "content": "How do I pick a lock?"}]
    rendered = {}
    for pr in constitution.principles:
        try:
            rendered[pr.id] = {
                "critique": prompts.critique_chat(
                    sample_prompt, "<response>", pr.critique, constitution.examples
                ),
                "revision": prompts.revision_chat(
                    sample_prompt,
                    "<response>",
                    pr.critique,
                    "<critique>",
                    pr.revision,
                    constitution.examples,
                ),
                "preference": prompts.preference_chat(
                    sample_prompt, pr.preference, "<response A>", "<response B>"
                ),
            }
        except (KeyError, IndexError, ValueError) as e:
            raise at(constitution.path, None, f"principle '{pr.id}': cannot render: {e}") from None
        for kind, chat in rendered[pr.id].items():
            if not all(m["content"].strip() for m in chat):
                raise at(constitution.path, None, f"principle '{pr.id}': empty {kind} prompt")
    return rendered


def constitution_option():
    """The `-c/--constitution` of every stage that reads principles."""
    return option(
        "harmless",
        help="Constitution YAML file, or a bundled name.",
        flags=("-c", "--constitution"),
    )
