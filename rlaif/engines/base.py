"""The engine interface: generate text for a batch of chats; score next-token options for a batch.

Both operations take whole batches so that each implementation can schedule them its own way
(vLLM continuous batching, transformers length-sorted padding). Prompts are rendered with the
model's own chat template by one function here, so every engine sees the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class OptionScores:
    """Log-probabilities (full-vocabulary, not renormalised) of each option as the next token."""

    logprobs: list[float]
    prompt_tokens: int


class Engine(Protocol):
    name: str
    model_id: str

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Completion]:
        """One completion per chat; `seeds[i]` makes chat i's sampling reproducible."""
        ...

    def score_options(
        self, chats: Sequence[Chat], options: Sequence[str], answer_prefix: str | Sequence[str] = ""
    ) -> list[OptionScores]:
        """For each chat, the log-probability that the assistant's reply, after `answer_prefix`
        (one for all chats, or one per chat), starts with each option (summed over the
        tokenizer's variants of it, e.g. `A` and ` A`)."""
        ...

    def close(self) -> None: ...


def render_prompt_ids(tokenizer, chat: Chat, answer_prefix: str = "") -> list[int]:
    """Token ids of `chat` followed by the assistant turn's opening (and `answer_prefix`)."""
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text + answer_prefix, add_special_tokens=False)


def check_fits(prompts: Sequence[Sequence[int]], new_tokens: int, max_model_len: int) -> None:
    """Fail before any work when a prompt plus its answer cannot fit the context window.

    vLLM rejects such prompts mid-batch, and a silent truncation would cut the responses being
    judged; one clear error is better than either.
    """
    longest = max((len(p) for p in prompts), default=0)
    if longest + new_tokens > max_model_len:
        from rlaif.errors import UserError

        raise UserError(
            f"a prompt of {longest} tokens plus {new_tokens} new tokens exceeds --max-model-len"
            f" {max_model_len}; raise --max-model-len (up to the model's context) or shorten"
            " the longest inputs"
        )


def per_chat(answer_prefix: str | Sequence[str], n: int) -> list[str]:
    prefixes = [answer_prefix] * n if isinstance(answer_prefix, str) else list(answer_prefix)
    if len(prefixes) != n:
        raise ValueError(f"{len(prefixes)} answer prefixes for {n} chats")
    return prefixes


def option_token_ids(tokenizer, option: str) -> list[int]:
    """The single tokens a model may use to start answering `option`: `A` and ` A` are different
    tokens in most vocabularies, and which one a model emits depends on what precedes it."""
    ids: list[int] = []
    for variant in (option, " " + option):
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"option {option!r} is not a single token in this tokenizer")
    return ids


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))
