"""Human-readable views of stage outputs, for a look in the terminal."""

from __future__ import annotations

import textwrap

from rlaif.prompts import conversation_text


def _block(title: str, text: str, width: int = 88) -> str:
    body = "\n".join(
        textwrap.fill(para, width, initial_indent="  ", subsequent_indent="  ") if para else ""
        for para in text.splitlines()
    )
    return f"{title}\n{body}"


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
