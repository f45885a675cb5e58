"""Every prompt the judge and policy models see is built here, from plain templates.

The critique→revision chain follows Constitutional AI, adapted to chat models: the conversation,
then the critique request as a new user turn, the judge's critique, then the revision request.
Each step's prompt extends the previous one, so vLLM's prefix cache reuses the work.
"""

from __future__ import annotations

from rlaif.engines.base import Chat

PREFERENCE_TEMPLATE = """\
Consider the following conversation between a human and an AI assistant:

{conversation}

{question}

Options:
(A) {response_a}
(B) {response_b}

{instruction}"""

ANSWER_INSTRUCTION = "Answer with the letter of the better option, A or B."
# Chain of thought (Constitutional AI, sec. 4.1): a rationale first, then the answer is scored.
COT_INSTRUCTION = (
    "First explain briefly, step by step, which option is better and why."
    " Then finish with: The answer is (A) or The answer is (B)."
)

# The judge's reply is scored right after this opening, so its next token is the option letter.
PREFERENCE_ANSWER_PREFIX = "The answer is ("
PREFERENCE_OPTIONS = ("A", "B")


def cot_answer_prefix(rationale: str) -> str:
    """After a generated rationale, the opening whose next token is scored."""
    return f"{rationale.rstrip()}\n\n{PREFERENCE_ANSWER_PREFIX}"


def parse_verdict(text: str) -> int | None:
    """The option a generated verdict names (0 for A, 1 for B), or None when it names neither
    or both: `(A)`, `A`, `Option B`, `The answer is (B)`, `Response A is better`."""
    import re

    explicit = re.findall(r"answer is \(?([AB])\b", text)
    found = explicit or re.findall(r"(?<![A-Za-z])\(?([AB])\)?(?![A-Za-z])", text)
    letters = set(found)
    if len(letters) != 1:
        return None
    return PREFERENCE_OPTIONS.index(letters.pop())


def conversation_text(messages: Chat) -> str:
    """Render chat messages the way preference prompts show them: `Human: …` / `Assistant: …`."""
    speaker = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{speaker.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def few_shot_turns(examples) -> Chat:
    """Worked examples as earlier turns of the same critique→revision pattern."""
    turns: Chat = []
    for ex in examples:
        turns += [
            {"role": "user", "content": ex.prompt},
            {"role": "assistant", "content": ex.response},
            {"role": "user", "content": ex.critique_request},
            {"role": "assistant", "content": ex.critique},
            {"role": "user", "content": ex.revision_request},
            {"role": "assistant", "content": ex.revision},
        ]
    return turns


def critique_chat(prompt: Chat, response: str, critique_request: str, examples=()) -> Chat:
    return [
        *few_shot_turns(examples),
        *prompt,
        {"role": "assistant", "content": response},
        {"role": "user", "content": critique_request},
    ]


def revision_chat(
    prompt: Chat,
    response: str,
    critique_request: str,
    critique: str,
    revision_request: str,
    examples=(),
) -> Chat:
    return [
        *critique_chat(prompt, response, critique_request, examples),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": revision_request},
    ]


def preference_chat(
    prompt: Chat, question: str, response_a: str, response_b: str, cot: bool = False
) -> Chat:
    content = PREFERENCE_TEMPLATE.format(
        conversation=conversation_text(prompt),
        question=question,
        response_a=response_a,
        response_b=response_b,
        instruction=COT_INSTRUCTION if cot else ANSWER_INSTRUCTION,
    )
    return [{"role": "user", "content": content}]


RATING_TEMPLATE = """\
Consider the following conversation between a human and an AI assistant:

{conversation}

The assistant's last response is judged by this question:
{question}

Rate the assistant's last response on a scale from 1 (very poor by this standard) to 9 \
(excellent by this standard). Answer with a single digit."""

# The judge's reply is scored right after this opening, so its next token is the rating digit.
RATING_ANSWER_PREFIX = "Rating: "
RATING_OPTIONS = tuple("123456789")


def rating_chat(prompt: Chat, response: str, question: str) -> Chat:
    """Direct RLAIF: the judge rates one response against one principle's question."""
    conversation = conversation_text([*prompt, {"role": "assistant", "content": response}])
    content = RATING_TEMPLATE.format(conversation=conversation, question=question)
    return [{"role": "user", "content": content}]
