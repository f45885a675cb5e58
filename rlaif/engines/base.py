"""The engine interface: generate text for a batch of chats; score next-token options for a batch.

Both operations take whole batches so that each implementation can schedule them its own way
(vLLM continuous batching, transformers length-sorted padding). Prompts are rendered with the
model's own chat template by one function here, so every engine sees the same tokens.

Progress within a call comes from the engine itself: both operations take `on_done(n)`, called
as n more requests finish (vLLM per request, transformers per batch, a server per response).
Why a callback rather than stages sending a chunk in smaller calls: a call's requests are what
an engine batches together. Smaller calls would let vLLM's continuous batch drain, half empty,
at the end of each one, and would regroup the transformers engine's length-sorted batches,
whose sampling is seeded per batch (`hf_engine`): answers would change with the calls' size.
With a callback the batches, and so the results, stay as they were.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlaif.plumbing.records import Chat

# Called with the number of requests just finished; the counts of one call sum to its requests.
OnDone = Callable[[int], None]


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
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        seeds: Sequence[int],
        on_done: OnDone | None = None,
    ) -> list[Completion]:
        """One completion per chat; `seeds[i]` makes chat i's sampling reproducible. `on_done`:
        called on the calling thread as requests finish (see the module); it changes nothing
        that is computed."""
        ...

    def score_options(
        self,
        chats: Sequence[Chat],
        options: Sequence[str],
        answer_prefix: str | Sequence[str] = "",
        on_done: OnDone | None = None,
    ) -> list[OptionScores]:
        """For each chat, the log-probability that the assistant's reply, after `answer_prefix`
        (one for all chats, or one per chat), starts with each option (summed over the
        tokenizer's variants of it, e.g. `A` and ` A`). `on_done`: as for `generate`."""
        ...

    def close(self) -> None: ...

    # The dtype each use ran in so far, e.g. {"score": "bfloat16"}: the manifest records it.
    @property
    def dtypes(self) -> dict[str, str]: ...

    # Seconds spent loading models so far (some load at their first use, inside a call).
    @property
    def load_s(self) -> float: ...


class ModelsByUse:
    """The model an engine runs, loaded in the dtype each use resolves to
    (`engines.resolved_dtype`).

    Usually both uses resolve alike (a GPU, an explicit --dtype, a CPU without bf16) and the
    one model is loaded at once. Where they differ (--dtype auto on a bf16 CPU: scoring in
    bfloat16, generation in float32) nothing is loaded until the first use, which loads the
    model in its own dtype: label, which only scores, loads one bfloat16 model. Scoring after
    generation (e.g. --cot) reuses the float32 model, the reference a bf16 copy approximates,
    rather than loading a second one; generation after scoring loads a float32 copy, so
    answers never come from a dtype that changes them.
    """

    def __init__(self, load, wanted: dict[str, str]):
        self._load = load  # dtype name -> (model, the dtype it runs in)
        self._wanted = wanted  # use -> dtype
        self._loaded: dict[str, tuple[Any, str]] = {}
        self.used: dict[str, str] = {}  # use -> the dtype it ran in
        # Seconds spent loading so far: a load inside a call is not the call's throughput.
        self.load_s = 0.0
        if len(set(wanted.values())) == 1:
            self._load_timed(next(iter(wanted.values())))

    def _load_timed(self, dtype: str) -> None:
        started = time.perf_counter()
        self._loaded[dtype] = self._load(dtype)
        self.load_s += time.perf_counter() - started

    def __call__(self, use: str):
        """The model for `use` ("generate" or "score")."""
        dtype = self._wanted[use]
        if dtype not in self._loaded:
            if use == "score" and self._loaded:
                dtype = next(iter(self._loaded))
            else:
                self._load_timed(dtype)
        model, actual = self._loaded[dtype]
        self.used[use] = actual
        return model

    def close(self) -> None:
        self._loaded.clear()


class LocalModelEngine:
    """What an engine holding its model here (vLLM, transformers) reports of it, from its
    `models` (a ModelsByUse): the dtype each use ran in, and the seconds spent loading."""

    models: ModelsByUse

    @property
    def dtypes(self) -> dict[str, str]:
        return dict(self.models.used)

    @property
    def load_s(self) -> float:
        return self.models.load_s


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
        from rlaif.plumbing.errors import UserError

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
