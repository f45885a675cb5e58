"""OpenAI-compatible engine: a server (vLLM's OpenAI server, or any chat-completions API) does
the work over HTTP; nothing is loaded here.

- `--base-url` is the API root as OpenAI clients take it, `/v1` included
  (`http://127.0.0.1:8000/v1`).
- The model name sent with each request: the id from `GET {base_url}/models` when the server
  serves exactly one model (a vLLM server names its model after its `--model` argument, which
  need not be the spec given to us); otherwise the model spec as given.
- The API key comes from the environment variable named by `--api-key-env` (`OPENAI_API_KEY`);
  without it no auth header is sent, which is what local servers expect.
- The server renders the chat template and counts tokens, so the context-window check happens
  there: its refusal (or a reply it cut short to fit) becomes the same error the local engines
  give.
- Option scores come from `top_logprobs` (20, the API's maximum) of a one-token greedy reply.
  They are exact when each option's variants (`A`, ` A`) are among the top 20. An option with
  no variant there gets the smallest top-20 log-probability: an upper bound, not its value.
  Putting `answer_prefix` in the assistant turn uses vLLM's `continue_final_message`; servers
  without that extension refuse the request (use `--method generate` with them).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from rlaif.engines.base import (
    Chat,
    Completion,
    OnDone,
    OptionScores,
    Sampling,
    logsumexp,
    per_chat,
)
from rlaif.engines.fleet import ServerPool
from rlaif.plumbing.errors import UserError

TOP_LOGPROBS = 20  # the most the OpenAI API returns (vLLM's default cap as well)
MAX_BACKOFF_S = 30.0
# Rate limits and server-side failures pass; other 4xx mean the request itself is wrong.
RETRY_STATUSES = frozenset({408, 409, 429})

T = TypeVar("T")
R = TypeVar("R")


class OpenAIEngine:
    name = "openai"
    # Seconds before the first retry, doubled for each further one (tests make it tiny).
    backoff_base = 0.5

    def __init__(self, model: str, settings):
        import httpx

        self.base_urls = checked_base_urls(settings.base_url)
        self.base_url = self.base_urls[0] if len(self.base_urls) == 1 else "the servers"
        self.max_concurrency = max(1, settings.max_concurrency)
        self.max_retries = max(0, settings.max_retries)
        self.pool = ServerPool(self.base_urls, self.max_concurrency)
        self.client = httpx.Client(
            timeout=settings.request_timeout,
            headers=_auth_headers(settings.api_key_env),
            limits=httpx.Limits(max_connections=self.pool.capacity),
        )
        served = {url: self._served_model(model, url) for url in self.base_urls}
        if len(set(served.values())) > 1:
            listed = ", ".join(f"{url} serves {name}" for url, name in served.items())
            raise UserError(f"the servers serve different models ({listed}); serve one model")
        self.model_id = next(iter(served.values()))

    # -- the Engine interface ------------------------------------------------------------------

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        seeds: Sequence[int],
        on_done: OnDone | None = None,
    ) -> list[Completion]:
        if len(seeds) != len(chats):
            raise ValueError(f"{len(seeds)} seeds for {len(chats)} chats")
        return self._in_order(
            lambda job: self._generate_one(job[0], sampling, job[1]),
            list(zip(chats, seeds, strict=True)),
            on_done,
        )

    def score_options(
        self,
        chats: Sequence[Chat],
        options: Sequence[str],
        answer_prefix: str | Sequence[str] = "",
        on_done: OnDone | None = None,
    ) -> list[OptionScores]:
        prefixes = per_chat(answer_prefix, len(chats))
        return self._in_order(
            lambda job: self._score_one(job[0], options, job[1]),
            list(zip(chats, prefixes, strict=True)),
            on_done,
        )

    @property
    def dtypes(self) -> dict[str, str]:
        return {}  # the server's own choice

    @property
    def load_s(self) -> float:
        return 0.0  # the server loaded its model before we came

    def close(self) -> None:
        self.client.close()

    # -- one request each ----------------------------------------------------------------------

    def _generate_one(self, chat: Chat, sampling: Sampling, seed: int) -> Completion:
        greedy = sampling.temperature <= 0
        body = {
            "model": self.model_id,
            "messages": list(chat),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "seed": seed,
        }
        reply = self._chat(body, sampling.max_new_tokens)
        choice = reply["choices"][0]
        prompt_tokens, completion_tokens = _usage(reply)
        if choice.get("finish_reason") == "length" and completion_tokens < sampling.max_new_tokens:
            # vLLM shortens max_tokens to what is left of its context instead of refusing; a
            # silently cut response would then be judged as if complete.
            raise _context_error(
                str(prompt_tokens), sampling.max_new_tokens, prompt_tokens + completion_tokens
            )
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        return Completion((text if isinstance(text, str) else "").strip(), *_usage(reply))

    def _score_one(self, chat: Chat, options: Sequence[str], prefix: str) -> OptionScores:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": list(chat),
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        if prefix:
            # The prefix must be the start of the assistant's turn, not a turn of its own; with
            # an empty prefix the plain generation prompt is already that.
            body["messages"].append({"role": "assistant", "content": prefix})
            body.update(continue_final_message=True, add_generation_prompt=False)
        reply = self._chat(body, 1)
        top = self._first_top_logprobs(reply)
        prompt_tokens, _ = _usage(reply)
        return OptionScores([option_logprob(top, o) for o in options], prompt_tokens)

    def _first_top_logprobs(self, reply: dict) -> list[tuple[str, float]]:
        logprobs = reply["choices"][0].get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        first = content[0] if isinstance(content, list) and content else None
        top = first.get("top_logprobs") if isinstance(first, dict) else None
        if not top:
            raise UserError(
                f"the server at {self.base_url} gave no log-probabilities (it may not support"
                " `logprobs`/`top_logprobs`); use --method generate with this server"
            )
        try:
            return [(str(entry["token"]), float(entry["logprob"])) for entry in top]
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"the server at {self.base_url} gave malformed top_logprobs; use --method"
                " generate with this server"
            ) from None

    # -- HTTP ----------------------------------------------------------------------------------

    def _served_model(self, spec: str, url: str) -> str:
        response, _ = self._send("GET", "/models", to=url)
        if response.status_code >= 400:  # some APIs do not list models: use the spec as given
            return spec
        try:
            listed = response.json().get("data") or []
            served = [m.get("id") for m in listed if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            raise UserError(
                f"{url}: not an OpenAI-compatible API (its /models is not JSON);"
                " check --base-url (it ends in /v1)"
            ) from None
        if spec in served or not served:
            return spec
        if len(served) == 1:  # the server's one model, whatever it was named at its start
            return served[0]
        raise UserError(f"{url} serves {', '.join(served)}; pass one of them as the model")

    def _chat(self, body: dict, new_tokens: int) -> dict:
        response, url = self._send("POST", "/chat/completions", body)
        if response.status_code < 400:
            return self._completion(response, url)
        message = _error_message(response)
        context = _context_error_from_message(message, new_tokens)
        if context is not None:
            raise context
        raise UserError(
            f"{url}: the server refused the request (HTTP {response.status_code}): {message}"
        )

    def _completion(self, response, url: str) -> dict:
        """The reply of a chat completion, checked to be one: a proxy's HTML page or an empty
        `choices` is named here rather than failing later inside the stage."""
        try:
            reply = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise UserError(
                f"{url}: not an OpenAI-compatible API (a chat completion came back as"
                f" {kind}, not JSON); check --base-url (it ends in /v1)"
            ) from None
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UserError(
                f"{url}: the server's chat completion has no choices; is it an"
                " OpenAI-compatible server?"
            )
        return reply

    def _send(self, method: str, path: str, body: dict | None = None, to: str | None = None):
        """One request and the URL of the server that answered it. Rate limits, server errors,
        timeouts and dropped connections are retried, on another server at once where one is
        up (see `fleet`), else on the same after a backoff; any other response comes back as
        it is. `to`: this server only (the start-up check of each server)."""
        import httpx

        failure, url = "no attempt", to or self.base_urls[0]
        last = None
        for attempt in range(self.max_retries + 1):
            server = None if to else self.pool.pick(avoid=last)
            if server is None and not to:  # every server is resting after failures
                time.sleep(min(self.pool.seconds_until_one_is_up(), MAX_BACKOFF_S))
                continue
            url = to or server.url
            retry_after = None
            try:
                response = self.client.request(method, url + path, json=body)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if not _retryable(response.status_code):
                    if server:
                        self.pool.release(server, ok=True)
                    return response, url
                failure = f"HTTP {response.status_code}: {_error_message(response)}"
                retry_after = _retry_after_s(response)
            if server:
                self.pool.release(server, ok=False)
            last = url
            failover = server is not None and self.pool.another_is_up(server)
            if attempt < self.max_retries and not failover:
                time.sleep(self._delay(attempt, retry_after))
        where = url + path if len(self.base_urls) == 1 or to else f"{len(self.base_urls)} servers"
        raise UserError(
            f"{where}: {failure} (gave up after {self.max_retries + 1} attempts; check the"
            f" server{'s' if where.endswith('servers') else ''} or raise --max-retries)"
        )

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter, so that parallel requests do not retry in step; a
        server's Retry-After, where given, is a floor."""
        delay = min(MAX_BACKOFF_S, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF_S))
        return delay

    def _in_order(
        self, fn: Callable[[T], R], items: list[T], on_done: OnDone | None = None
    ) -> list[R]:
        """`fn` over `items` with at most max_concurrency requests in flight, results in input
        order; the first failure cancels the requests not yet sent. `on_done(1)` per response,
        on this thread, as they come."""
        report = on_done or (lambda n: None)
        if len(items) <= 1:
            results = []
            for item in items:
                results.append(fn(item))
                report(1)
            return results
        with ThreadPoolExecutor(min(self.pool.capacity, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for future in as_completed(futures):
                    future.result()  # a failure, as soon as it happens
                    report(1)
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def option_logprob(top: Sequence[tuple[str, float]], option: str) -> float:
    """Log-probability of `option` as the next token: summed over the same variants as
    `base.option_token_ids` (`A`, ` A`) that are among the top log-probs; the smallest of those
    when none is (an upper bound on the option's value)."""
    found = [lp for token, lp in top if token in (option, " " + option)]
    return logsumexp(found) if found else min(lp for _, lp in top)


def checked_base_urls(base_url) -> list[str]:
    """The servers' API roots: `--base-url` given once per server, or a file listing them one
    per line (blank lines and `#` comments skipped)."""
    given = [base_url] if isinstance(base_url, str) else list(base_url or [])
    if not given:
        raise UserError(
            "--engine openai needs --base-url, the server's API root"
            " (e.g. http://127.0.0.1:8000/v1)"
        )
    urls: list[str] = []
    for value in given:
        if not value.startswith(("http://", "https://")) and Path(value).is_file():
            lines = Path(value).read_text(encoding="utf-8", errors="replace").splitlines()
            listed = [line.split("#", 1)[0].strip() for line in lines]
            urls += [u for u in listed if u]
            if not any(listed):
                raise UserError(f"--base-url {value}: the file lists no URL")
        else:
            urls.append(value)
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {url}: give a http:// or https:// URL (or a file of them)")
    return list(dict.fromkeys(u.rstrip("/") for u in urls))


def _auth_headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env) if api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def _retryable(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def _retry_after_s(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: back off on our own schedule
        return None


def _error_message(response) -> str:
    """The server's own words: OpenAI's `{"error": {"message": ...}}`, older vLLM's
    `{"message": ...}`, or the raw body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
    return response.text.strip()[:500]


def _usage(reply: dict) -> tuple[int, int]:
    """Token counts as the server reports them (0 where it does not, or not as numbers)."""
    usage = reply.get("usage")
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        value = usage.get(key)
        return int(value) if isinstance(value, (int, float)) else 0

    return count("prompt_tokens"), count("completion_tokens")


# vLLM: "maximum context length is 2048 tokens. However, your prompt contains at least 2049 input
# tokens" or "Input length (2100) exceeds model's maximum context length (2048)"; OpenAI:
# "maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens".
_LIMIT = re.compile(r"maximum context length (?:is |\()(\d+)")
_PROMPT = re.compile(
    r"(at least \d+|\d+) input tokens|Input length \((\d+)\)|resulted in (\d+) tokens"
)


def _context_error_from_message(message: str, new_tokens: int) -> UserError | None:
    limit = _LIMIT.search(message)
    if limit is None:
        return None
    prompt = _PROMPT.search(message)
    count = next((g for g in prompt.groups() if g), None) if prompt else None
    return _context_error(count or f"more than {limit.group(1)}", new_tokens, int(limit.group(1)))


def _context_error(prompt_tokens: str, new_tokens: int, limit: int) -> UserError:
    # Worded like base.check_fits, so every engine reports a full context the same way.
    return UserError(
        f"a prompt of {prompt_tokens} tokens plus {new_tokens} new tokens exceeds --max-model-len"
        f" {limit} of the server; start it with a larger --max-model-len (up to the model's"
        " context) or shorten the longest inputs"
    )
