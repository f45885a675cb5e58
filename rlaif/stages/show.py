"""Human-readable views of stage outputs, for a look in the terminal."""

from __future__ import annotations

import textwrap

from rlaif.judging.prompts import conversation_text


def _block(title: str, text: str, width: int = 88) -> str:
    body = "\n".join(
        textwrap.fill(para, width, initial_indent="  ", subsequent_indent="  ") if para else ""
        for para in text.splitlines()
    )
    return f"{title}\n{body}"


def check_revision_row(path: str, line: int, row: dict) -> dict:
    """A `rlaif generate` row with the fields `show` prints, or a one-line error."""
    from rlaif.plumbing.errors import at
    from rlaif.plumbing.records import parse_messages

    if "revisions" not in row:
        raise at(path, line, "not an `rlaif generate` output (no 'revisions' field)")
    for key in ("id", "prompt", "initial_response"):
        if key not in row:
            raise at(path, line, f"not an `rlaif generate` row (no '{key}')")
    if not isinstance(row["initial_response"], str):
        raise at(path, line, "'initial_response' must be text")
    parse_messages(path, line, row["prompt"], "prompt")
    steps = row["revisions"]
    fields = {"round": int, "principle_id": str, "critique": str, "revision": str}
    if not isinstance(steps, list) or not all(
        isinstance(step, dict) and all(isinstance(step.get(k), t) for k, t in fields.items())
        for step in steps
    ):
        raise at(
            path, line, "'revisions' must be a list of {round, principle_id, critique, revision}"
        )
    return row


def format_revision_record(row: dict) -> str:
    """One `rlaif generate` row: the prompt, the first answer, then each critique and revision."""
    parts = [
        f"── record {row['id']} ──",
        _block("PROMPT", conversation_text(row["prompt"])),
        _block("INITIAL ANSWER", row["initial_response"]),
    ]
    for step in row["revisions"]:
        parts.append(
            _block(
                f"CRITIQUE (round {step['round']}, principle {step['principle_id']})",
                step["critique"],
            )
        )
        revision = step["revision"] or "(empty: the previous answer is kept)"
        parts.append(_block(f"REVISION (round {step['round']})", revision))
    return "\n\n".join(parts)
