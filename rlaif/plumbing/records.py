"""Input records: parse the JSONL row shapes the stages accept, with errors naming file and line."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.plumbing.errors import at
from rlaif.plumbing.files import content_id

# A conversation as chat templates take it: [{"role": "user", "content": "..."}, ...]
Chat = list[dict[str, str]]

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: Chat  # the conversation so far, ending with the user's turn
    line: int


def parse_messages(path: str, line: int, value, field: str = "messages") -> Chat:
    if not isinstance(value, list) or not value:
        raise at(path, line, f"'{field}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for n, m in enumerate(value, 1):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise at(
                path,
                line,
                f"'{field}' message #{n}: expected {{\"role\": one of {'/'.join(ROLES)},"
                f' "content": text}}',
            )
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def parse_prompt_records(path: str, rows: list[tuple[int, dict]]) -> list[PromptRecord]:
    """Rows `{"prompt": str}` or `{"messages": [...]}`, each with an optional `"id"`.

    Rows without an id get one from their content, so reruns and resumes match records up.
    """
    records: list[PromptRecord] = []
    first_line_of: dict[str, int] = {}
    for line, row in rows:
        if "messages" in row and "prompt" in row:
            raise at(path, line, "give either 'prompt' or 'messages', not both")
        if "messages" in row:
            messages = parse_messages(path, line, row["messages"])
        elif "prompt" in row:
            prompt = row["prompt"]
            if isinstance(prompt, list):
                messages = parse_messages(path, line, prompt, "prompt")
            elif isinstance(prompt, str) and prompt.strip():
                messages = [{"role": "user", "content": prompt}]
            else:
                raise at(path, line, "'prompt' must be non-empty text or a list of messages")
        else:
            raise at(path, line, "missing field 'prompt' (text) or 'messages' (list)")
        if messages[-1]["role"] != "user":
            raise at(path, line, "the conversation must end with a user message to answer")
        record_id = unique_record_id(path, line, row, messages, first_line_of)
        records.append(PromptRecord(record_id, messages, line))
    return records


def unique_record_id(path: str, line: int, row: dict, content, first_line_of: dict) -> str:
    """The row's `"id"`, or one made from `content`, checked unique against `first_line_of`
    (id → line, updated here). Content ids let reruns and resumes match records up."""
    if "id" in row:
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise at(path, line, "'id' must be a string or an integer")
        record_id = str(row["id"])
    else:
        record_id = content_id(content)
    if record_id in first_line_of:
        raise at(
            path,
            line,
            f"duplicate id {record_id!r} (first on line {first_line_of[record_id]});"
            " ids must be unique (rows without 'id' get one from their content)",
        )
    first_line_of[record_id] = line
    return record_id
