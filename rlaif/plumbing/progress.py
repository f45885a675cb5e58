"""Progress and throughput: the bar's share that engine calls fill as requests finish, and the
tokens per second each role's engine reached.

Engines take an `on_done(n)` callback (see `engines.base`); a stage's runner hands each chunk a
`Progress` covering it, and each engine call gets `progress.on_done(requests)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction


class Progress:
    """A share of the progress bar, in records, that engine calls fill as requests finish.

    `run_in_chunks` hands each chunk's `process_chunk` one covering the chunk. A chunk's work
    of several engine calls divides it (`split`: generate's answers, critiques and revisions;
    a jury's judges); each call takes `on_done(n_requests)` for the engine, which fills its
    share a request at a time. The bar shows whole records: k of n records once k/n of the
    work is done (a pair is 2 requests per principle, its orders; a generated prompt is
    1 + 2 x rounds). Shares are fractions, so no rounding loses a record; whatever an engine
    did not report is filled when the chunk ends. Without a bar (a library call) it does
    nothing.
    """

    def __init__(self, bar=None, records: int | Fraction = 1, _root: Progress | None = None):
        self._bar, self.share = bar, Fraction(records)
        self._root = _root or self
        self._filled = Fraction(0)  # on the root: the chunk's records done so far
        self._shown = 0  # on the root: whole records the bar has been moved by

    def split(self, parts: int) -> list[Progress]:
        """`parts` equal shares of this one, one per engine call (or per judge)."""
        return [Progress(self._bar, self.share / parts, self._root) for _ in range(parts)]

    def on_done(self, requests: int) -> Callable[[int], None]:
        """The engine's callback for one call of `requests` requests filling this share."""
        left = [self.share]

        def done(n: int) -> None:
            step = min(left[0], self.share * n / max(requests, 1))
            left[0] -= step
            self._root._fill(step)

        return done

    def _fill(self, records: Fraction) -> None:
        self._filled += records
        whole = int(self._filled)
        if self._bar is not None and whole > self._shown:
            self._bar.update(whole - self._shown)
            self._shown = whole

    def finish(self) -> None:
        """The whole share done (the chunk's work returned)."""
        self._fill(self.share - self._filled)


class TokenCounter:
    """Tokens the engines read and wrote, by role (`judge_prompt_tokens`, ...; a stage with one
    model may leave the role out: `prompt_tokens`), and the seconds of engine calls they took
    (`timed`), for the manifest and the throughput line."""

    def __init__(self):
        self.tokens: dict[str, int] = {}
        self.engine_s: dict[str, float] = {}  # role -> seconds inside its engine calls

    def add(self, role: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        for kind, n in (("prompt", prompt_tokens), ("completion", completion_tokens)):
            key = _token_key(role, kind)
            self.tokens[key] = self.tokens.get(key, 0) + n

    def add_completions(self, role: str, completions) -> None:
        for c in completions:
            self.add(role, c.prompt_tokens, c.completion_tokens)

    @contextmanager
    def timed(self, role: str, engine=None) -> Iterator[None]:
        """Count the wall time of the `engine` call inside as `role`'s, less any model load it
        began with (a model loaded at its first use, `base.ModelsByUse`); a call that fails,
        ending the stage, is not counted."""
        loaded = getattr(engine, "load_s", 0.0)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started - (getattr(engine, "load_s", 0.0) - loaded)
        self.engine_s[role] = self.engine_s.get(role, 0.0) + seconds

    def throughput(self) -> dict[str, dict]:
        """Per role that ran an engine call: its tokens over its engine seconds (see
        `throughput_of`); the role of a one-model stage is named "model"."""
        return throughput_of(
            {
                role or "model": {
                    "prompt_tokens": self.tokens.get(_token_key(role, "prompt"), 0),
                    "completion_tokens": self.tokens.get(_token_key(role, "completion"), 0),
                    "engine_s": seconds,
                }
                for role, seconds in self.engine_s.items()
            }
        )


def _token_key(role: str, kind: str) -> str:
    return f"{role}_{kind}_tokens" if role else f"{kind}_tokens"


def throughput_of(by_role: dict[str, dict]) -> dict[str, dict]:
    """`by_role`'s prompt and completion tokens and engine seconds, with tokens_per_s: prompt
    tokens read (prefilled or scored) plus tokens generated, per second of engine calls.
    Engine seconds include what a call spends besides the model (rendering prompts, padding),
    so this is what a stage gets, not the model's peak."""
    out = {}
    for role, t in by_role.items():
        seconds = t["engine_s"]
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        out[role] = {
            "prompt_tokens": t["prompt_tokens"],
            "completion_tokens": t["completion_tokens"],
            "engine_s": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        }
    return out


def format_throughput(throughput: dict[str, dict]) -> str:
    """One line per role: `judge: 512.3 tokens/s (48,210 prompt + 1,120 generated tokens in
    96.3 s of engine time)`."""
    lines = []
    for role, t in throughput.items():
        rate = "n/a" if t["tokens_per_s"] is None else f"{t['tokens_per_s']:,.1f}"
        lines.append(
            f"{role}: {rate} tokens/s ({t['prompt_tokens']:,} prompt + {t['completion_tokens']:,}"
            f" generated tokens in {t['engine_s']:.1f} s of engine time)"
        )
    return "\n".join(lines)
