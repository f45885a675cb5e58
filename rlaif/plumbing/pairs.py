"""Pair records for `rlaif label`: the JSONL row shapes that hold two responses to one prompt.

Each row's shape is detected on its own, so files mixing shapes are fine:

- `responses`: `{"prompt", "responses": [a, b]}`, optionally `"preferred": 0|1`; with
  `many=True` (`label --method rating`) also more than two responses, e.g. `[a, b, c, d]`.
- `explicit`:  `{"prompt", "chosen", "rejected"}` (TRL's explicit-prompt preference format).
- `generate`:  the same, from `rlaif generate` (chosen: final revision; rejected: first answer).
- `hh`:        `{"chosen", "rejected"}` as Anthropic HH-RLHF dialogues ("\\n\\nHuman: ...").
- `implicit`:  `{"chosen", "rejected"}` sharing a prompt prefix (text, or TRL conversational lists).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from rlaif.plumbing.errors import at
from rlaif.plumbing.records import Chat, parse_messages, unique_record_id

SHAPES = (
    'expected {"prompt", "responses": [a, b]}, {"prompt", "chosen", "rejected"},'
    ' or {"chosen", "rejected"} sharing a prompt prefix (e.g. HH-RLHF dialogues)'
)
# Only the blank line before a speaker starts a turn: HH texts quote "Human:" inside turns.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_SPEAKER_ONLY = re.compile(r"(?i)(human|assistant|user|system|question|answer|q|a)\s*:?")


@dataclass(frozen=True)
class PairRecord:
    id: str
    prompt: Chat  # the conversation so far, ending with the user's turn
    # in input order: chosen first for chosen/rejected rows; more than two only with many=True
    responses: tuple[str, ...]
    reference: int | None  # index of the response the input prefers; None: no preference given
    source: str  # the row's shape: "responses" | "explicit" | "implicit" | "hh" | "generate"
    line: int
    # The row's other scalar fields (e.g. XSTest's `unsafe`, `type`), carried into the label
    # rows so that `rlaif eval agreement --group-by` can split the figures by them.
    fields: dict = dataclasses.field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Nothing to judge: e.g. a `generate` row whose revisions left the answer unchanged.
        Kept here (not an input error) so that the labelling stage can skip and count them."""
        return len({r.strip() for r in self.responses}) == 1


def parse_hh_dialogue(text: str) -> Chat:
    """`"\\n\\nHuman: hi\\n\\nAssistant: hello"` -> user/assistant messages, contents stripped.

    Raises ValueError (without file or line: callers add them) unless the text is alternating
    turns that start with a Human one.
    """
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) == 1:
        raise ValueError("an HH dialogue must start with '\\n\\nHuman:'")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = _HH_ROLES[speaker]
        expected = "assistant" if messages and messages[-1]["role"] == "user" else "user"
        if role != expected:
            turn = len(messages) + 1
            raise ValueError(f"HH turn #{turn} is '{speaker}:' where the other speaker was due")
        messages.append({"role": role, "content": content.strip()})
    return messages


def parse_pair_records(
    path: str, rows: list[tuple[int, dict]], many: bool = False
) -> list[PairRecord]:
    """Rows of any shape above, each with an optional `"id"`; `many`: `responses` may hold
    more than two (for pointwise judging, which rates each alone).

    Rows without an id get one from their prompt and responses, so reruns and resumes match up.
    """
    records: list[PairRecord] = []
    first_line_of: dict[str, int] = {}
    for line, row in rows:
        prompt, responses, reference, source = _parse_row(path, line, row, many)
        # An empty reply is real data (in HH-RLHF people sometimes preferred saying nothing),
        # and a judge can compare it; two empty replies are identical, skipped by the stages.
        if prompt[-1]["role"] != "user":
            raise at(path, line, "the prompt must end with a user message to answer")
        content = {"prompt": prompt, "responses": list(responses)}
        record_id = unique_record_id(path, line, row, content, first_line_of)
        records.append(
            PairRecord(
                record_id, prompt, tuple(responses), reference, source, line, carried_fields(row)
            )
        )
    return records


# Fields a pair row is read from; every other scalar field is carried through.
_PAIR_FIELDS = {
    "id",
    "prompt",
    "responses",
    "preferred",
    "chosen",
    "rejected",
    "initial_response",
    "final_response",
}


def carried_fields(row: dict) -> dict:
    """The row's scalar fields that are not the pair itself (labels, groups, sources)."""
    return {
        key: value
        for key, value in row.items()
        if key not in _PAIR_FIELDS and (value is None or isinstance(value, (str, int, float, bool)))
    }


def _parse_row(
    path: str, line: int, row: dict, many: bool = False
) -> tuple[Chat, tuple[str, ...], int | None, str]:
    has_pair = "chosen" in row or "rejected" in row
    if "responses" in row:
        if has_pair:
            raise at(path, line, "give either 'responses' or 'chosen'/'rejected', not both")
        return _responses_row(path, line, row, many)
    if not has_pair:
        raise at(path, line, f"no pair of responses found; {SHAPES}")
    for field in ("chosen", "rejected"):
        if field not in row:
            raise at(path, line, f"'chosen' and 'rejected' come together: '{field}' is missing")
    if "prompt" in row:
        prompt = _prompt(path, line, row["prompt"])
        pair = (
            _response(path, line, row["chosen"], "chosen"),
            _response(path, line, row["rejected"], "rejected"),
        )
        source = "generate" if "initial_response" in row and "revisions" in row else "explicit"
        return prompt, pair, 0, source
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if _is_hh(chosen) or _is_hh(rejected):
            return (*_hh_pair(path, line, chosen, rejected), 0, "hh")
        return (*_text_pair(path, line, chosen, rejected), 0, "implicit")
    if isinstance(chosen, list) and isinstance(rejected, list):
        return (*_chat_pair(path, line, chosen, rejected), 0, "implicit")
    raise at(
        path,
        line,
        "without 'prompt', 'chosen' and 'rejected' must both be text or both lists of messages",
    )


def _responses_row(path: str, line: int, row: dict, many: bool = False):
    if "prompt" not in row:
        raise at(path, line, "missing field 'prompt' (text or a list of messages) for 'responses'")
    prompt = _prompt(path, line, row["prompt"])
    responses = row["responses"]
    count = len(responses) if isinstance(responses, list) else None
    if count is None or count < 2 or (count > 2 and not many):
        got = type(responses).__name__ if count is None else str(count)
        if many:
            raise at(path, line, f"'responses' must be a list of at least two responses, got {got}")
        hint = (
            " (more than two: only `rlaif label --method rating` takes them, keeping the best"
            " and the worst)"
            if count is not None and count > 2
            else ""
        )
        raise at(
            path, line, f"'responses' must be a list of exactly two responses, got {got}{hint}"
        )
    texts = tuple(_response(path, line, r, f"responses[{i}]") for i, r in enumerate(responses))
    reference = row.get("preferred")
    if reference is not None and (isinstance(reference, bool) or reference not in range(count)):
        indices = "0 or 1" if count == 2 else f"0..{count - 1}"
        raise at(path, line, f"'preferred' must be {indices}: the index of the better response")
    return prompt, texts, reference, "responses"


def _prompt(path: str, line: int, value) -> Chat:
    if isinstance(value, list):
        return parse_messages(path, line, value, "prompt")
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    raise at(path, line, "'prompt' must be non-empty text or a list of messages")


def _response(path: str, line: int, value, field: str) -> str:
    """Text, or TRL's conversational form: a list holding one assistant message."""
    if isinstance(value, str):
        return value
    # Only one message: a longer list would continue the conversation, and judging its last
    # turn alone would silently drop the turns before it.
    if isinstance(value, list) and len(value) == 1:
        (message,) = parse_messages(path, line, value, field)
        if message["role"] == "assistant":
            return message["content"]
    raise at(
        path, line, f'\'{field}\' must be text or a list of one {{"role": "assistant"}} message'
    )


def _is_hh(text: str) -> bool:
    human = "\n\nHuman:" in text or text.startswith("Human:")
    return human and "\n\nAssistant:" in text


def _hh_pair(path: str, line: int, chosen: str, rejected: str) -> tuple[Chat, tuple[str, str]]:
    dialogues = []
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if text.startswith("Human:"):  # copies often drop the blank line before the first turn
            text = "\n\n" + text
        try:
            messages = parse_hh_dialogue(text)
        except ValueError as e:
            raise at(path, line, f"'{field}': {e}") from None
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise at(path, line, f"'{field}': an HH dialogue must end with an 'Assistant:' turn")
        dialogues.append(messages)
    return _shared_prompt(path, line, *dialogues, what="HH dialogues")


def _chat_pair(path: str, line: int, chosen: list, rejected: list) -> tuple[Chat, tuple[str, str]]:
    dialogues = [
        parse_messages(path, line, chosen, "chosen"),
        parse_messages(path, line, rejected, "rejected"),
    ]
    for field, messages in zip(("chosen", "rejected"), dialogues, strict=True):
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise at(path, line, f"'{field}' must be the prompt's messages, then an assistant one")
    return _shared_prompt(path, line, *dialogues, what="conversations")


def _shared_prompt(path: str, line: int, chosen: Chat, rejected: Chat, what: str):
    if chosen[:-1] != rejected[:-1]:
        turn = next(
            (n for n, (c, r) in enumerate(zip(chosen, rejected, strict=False), 1) if c != r),
            min(len(chosen), len(rejected)),
        )
        raise at(
            path,
            line,
            f"the chosen and rejected {what} differ at turn #{turn}, before their final"
            " assistant turn; both must share the same prompt",
        )
    return chosen[:-1], (chosen[-1]["content"], rejected[-1]["content"])


def _text_pair(path: str, line: int, chosen: str, rejected: str) -> tuple[Chat, tuple[str, str]]:
    if chosen == rejected:
        raise at(path, line, "the two responses are identical: nothing to judge")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # Cut after whitespace, so "Answer: yes" / "Answer: yeah" splits into "yes" / "yeah",
    # not "s" / "ah".
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    prompt = chosen[:n].strip()
    # A shared speaker label alone ("Human:") is no shared prompt: two different conversations.
    if not prompt or _SPEAKER_ONLY.fullmatch(prompt):
        raise at(
            path,
            line,
            "'chosen' and 'rejected' share no prompt text; add a 'prompt' field,"
            " or use HH-RLHF '\\n\\nHuman:'/'\\n\\nAssistant:' dialogues",
        )
    return [{"role": "user", "content": prompt}], (chosen[n:].strip(), rejected[n:].strip())
