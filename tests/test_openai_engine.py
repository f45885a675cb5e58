"""The OpenAI-compatible engine: HTTP behaviour against a scripted local server (retries,
backoff, errors, concurrency), then the real thing against a vLLM OpenAI server.

The shared engine suite (tests/test_engines.py) also runs on this engine, on the real server.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlaif.engines import EngineSettings, Sampling, make_engine, resolve_engine_name
from rlaif.engines.openai_engine import OpenAIEngine, option_logprob
from rlaif.plumbing.errors import UserError

GREEDY = Sampling(max_new_tokens=16, temperature=0.0)


def chat(text):
    return [{"role": "user", "content": text}]


def reply(text="ok", prompt_tokens=7, completion_tokens=2, finish="stop", top=None):
    """A chat-completions response as the OpenAI API shapes it."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    if top is not None:
        entries = [{"token": t, "logprob": lp} for t, lp in top]
        choice["logprobs"] = {"content": [{**entries[0], "top_logprobs": entries}]}
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return 200, {"choices": [choice], "usage": usage}


def error(status, message):
    return status, {"error": {"message": message, "type": "BadRequestError", "code": status}}


DROP = "drop"  # close the connection without answering


class FakeAPI:
    """An OpenAI-style server on 127.0.0.1 that plays a script: each POST gets the next reply
    (the last one repeats, or `respond(body)` when given); GET /models lists `models`."""

    def __init__(self, script=(), models=("served-model",), respond=None, delay_s=0.0):
        self.script = list(script)
        self.models = models
        self.respond = respond
        self.delay_s = delay_s  # before answering a POST (timeouts, concurrency)
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def engine(self, **settings) -> OpenAIEngine:
        settings = {"engine": "openai", "base_url": self.url, **settings}
        engine = make_engine("given-spec", EngineSettings(**settings))
        engine.backoff_base = 0.001
        return engine

    def next_reply(self, body):
        with self.lock:
            self.bodies.append(body)
            if self.respond is not None:
                return self.respond(body)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/v1/models" or api.models is None:
                    return self._send(*error(404, "not found"))
                self._send(200, {"data": [{"id": m, "object": "model"} for m in api.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.lock:
                    api.headers.append(dict(self.headers))
                    api.in_flight += 1
                    api.most_in_flight = max(api.most_in_flight, api.in_flight)
                try:
                    time.sleep(api.delay_s)
                    answer = api.next_reply(body)
                finally:
                    with api.lock:
                        api.in_flight -= 1
                if answer != DROP:
                    self._send(*answer)

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def fake():
    servers = []

    def start(*args, **kwargs):
        servers.append(FakeAPI(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# -- settings and construction --------------------------------------------------------------


def test_openai_is_chosen_only_by_name():
    assert resolve_engine_name("openai") == "openai"
    assert resolve_engine_name("auto") in ("vllm", "hf")


def test_base_url_is_required():
    with pytest.raises(UserError, match="--engine openai needs --base-url"):
        make_engine("m", EngineSettings(engine="openai"))
    with pytest.raises(UserError, match="http:// or https://"):
        make_engine("m", EngineSettings(engine="openai", base_url="localhost:8000/v1"))


def test_the_single_served_model_is_used(fake):
    api = fake([reply()])
    engine = api.engine()
    engine.generate([chat("hi")], GREEDY, [0])
    assert engine.model_id == "served-model" and api.bodies[0]["model"] == "served-model"


@pytest.mark.parametrize(
    "models", [("a", "given-spec"), None], ids=["served-by-name", "no-listing"]
)
def test_the_given_spec_is_used_when_served_or_unlisted(fake, models):
    assert fake([reply()], models=models).engine().model_id == "given-spec"


def test_a_spec_that_none_of_several_served_models_has_is_an_error(fake):
    with pytest.raises(UserError, match="serves a, b; pass one of them"):
        fake([reply()], models=("a", "b")).engine()


def test_api_key_comes_from_the_named_variable(fake, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    api = fake([reply()])
    api.engine(api_key_env="MY_KEY").generate([chat("hi")], GREEDY, [0])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    api.engine().generate([chat("hi")], GREEDY, [0])
    with_key, without = ({k.lower(): v for k, v in h.items()} for h in api.headers)
    assert with_key["authorization"] == "Bearer sk-test"
    assert "authorization" not in without


# -- requests --------------------------------------------------------------------------------


def test_generate_sends_sampling_and_per_request_seeds(fake):
    api = fake([reply("  Paris. ", prompt_tokens=30, completion_tokens=3)])
    [out] = api.engine().generate([chat("Capital?")], Sampling(20, 0.8, 0.9), [42])
    assert out.text == "Paris." and (out.prompt_tokens, out.completion_tokens) == (30, 3)
    body = api.bodies[0]
    assert body["messages"] == chat("Capital?")
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
        20,
        0.8,
        0.9,
        42,
    )


def test_results_keep_input_order_with_bounded_concurrency(fake):
    # Later requests answer sooner, so completion order differs from input order.
    def respond(body):
        n = int(body["messages"][0]["content"])
        time.sleep(0.02 * (10 - n))
        return reply(f"echo {n}")

    api = fake(respond=respond, delay_s=0.05)
    outs = api.engine(max_concurrency=3).generate(
        [chat(str(i)) for i in range(10)], GREEDY, list(range(10))
    )
    assert [o.text for o in outs] == [f"echo {i}" for i in range(10)]
    assert 1 < api.most_in_flight <= 3
    assert sorted(b["seed"] for b in api.bodies) == list(range(10))


def test_progress_comes_per_response_on_the_calling_thread(fake):
    api = fake(respond=lambda body: reply(body["messages"][0]["content"]), delay_s=0.02)
    engine = api.engine(max_concurrency=3)
    calls: list[tuple[int, object]] = []

    def on_done(n):
        calls.append((n, threading.current_thread()))

    outs = engine.generate([chat(str(i)) for i in range(7)], GREEDY, list(range(7)), on_done)
    assert [o.text for o in outs] == [str(i) for i in range(7)]
    assert [n for n, _ in calls] == [1] * 7
    assert {thread for _, thread in calls} == {threading.current_thread()}
    calls.clear()
    api.respond = lambda body: reply(top=[("A", -0.1), ("B", -2.5)])
    engine.score_options([chat("Q")], ["A", "B"], on_done=on_done)  # one request: no threads
    assert [n for n, _ in calls] == [1]


def test_scoring_puts_the_prefix_in_the_assistant_turn(fake):
    api = fake([reply("A", top=[("A", -0.5), (" A", -2.0), ("B", -1.5), ("C", -4.0)])])
    engine = api.engine()
    [scores] = engine.score_options([chat("Q")], ["A", "B", "D"], answer_prefix="The answer is (")
    assert scores.logprobs[0] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))
    assert scores.logprobs[1] == -1.5
    assert scores.logprobs[2] == -4.0  # not in the top list: its smallest entry, an upper bound
    body = api.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is ("}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert (body["max_tokens"], body["temperature"], body["logprobs"]) == (1, 0, True)
    assert body["top_logprobs"] == 20
    engine.score_options([chat("Q")], ["A"])  # no prefix: the plain generation prompt
    assert api.bodies[1]["messages"] == chat("Q") and "continue_final_message" not in api.bodies[1]


def test_option_logprob_counts_only_the_tokenizer_variants():
    top = [("A", -1.0), (" A", -1.0), ("A\n", -0.5), ("a", -3.0)]
    assert option_logprob(top, "A") == pytest.approx(-1.0 + math.log(2))
    assert option_logprob(top, "B") == -3.0


def test_a_server_without_logprobs_is_a_clear_error(fake):
    api = fake([reply("A")])  # answers, but with no logprobs
    with pytest.raises(UserError, match=r"gave no log-probabilities.*--method generate"):
        api.engine().score_options([chat("Q")], ["A", "B"])


# -- errors and retries -----------------------------------------------------------------------


def test_rate_limits_and_server_errors_are_retried(fake):
    api = fake([error(429, "slow down"), error(503, "busy"), error(500, "oops"), reply("fine")])
    [out] = api.engine().generate([chat("hi")], GREEDY, [0])
    assert out.text == "fine" and len(api.bodies) == 4


def test_dropped_connections_and_timeouts_are_retried(fake):
    api = fake([DROP, reply("after drop")])
    assert api.engine().generate([chat("hi")], GREEDY, [0])[0].text == "after drop"
    slow = fake([reply("late")], delay_s=0.5)
    with pytest.raises(UserError, match=r"ReadTimeout.*gave up after 2 attempts"):
        slow.engine(request_timeout=0.1, max_retries=1).generate([chat("hi")], GREEDY, [0])
    assert len(slow.headers) == 2  # recorded on arrival, before the delay


def test_retries_give_up_after_max_retries(fake):
    api = fake([error(503, "still starting")])
    with pytest.raises(UserError, match=r"HTTP 503: still starting \(gave up after 3 attempts"):
        api.engine(max_retries=2).generate([chat("hi")], GREEDY, [0])
    assert len(api.bodies) == 3


def test_other_client_errors_fail_at_once_with_the_servers_message(fake):
    api = fake([error(400, "temperature must be non-negative"), reply()])
    with pytest.raises(UserError, match=r"HTTP 400\): temperature must be non-negative"):
        api.engine().generate([chat("hi")], GREEDY, [0])
    assert len(api.bodies) == 1


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after(fake):
    engine = fake([reply()]).engine()
    engine.backoff_base = 1.0
    for attempt in range(4):
        assert 0.5 * 2**attempt <= engine._delay(attempt) <= 2**attempt
    assert engine._delay(10) <= 30.0
    assert engine._delay(0, retry_after=7.0) == 7.0


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 2048 tokens. However, your prompt contains at"
        " least 2049 input tokens, which exceeds this limit even without any output tokens.",
        "Input length (2100) exceeds model's maximum context length (2048).",
    ],
)
def test_a_full_context_reads_like_the_local_engines_error(fake, message):
    api = fake([error(400, message)])
    with pytest.raises(UserError, match=r"tokens plus 16 new tokens exceeds --max-model-len 2048"):
        api.engine().generate([chat("long")], GREEDY, [0])


def test_a_reply_cut_short_by_the_context_is_an_error(fake):
    # vLLM lowers max_tokens to what is left of its window instead of refusing.
    api = fake([reply("cut", prompt_tokens=2039, completion_tokens=9, finish="length")])
    with pytest.raises(UserError, match=r"2039 tokens plus 16 new tokens exceeds --max-model-len"):
        api.engine().generate([chat("long")], GREEDY, [0])


def test_hitting_max_new_tokens_is_no_error(fake):
    api = fake([reply("five", completion_tokens=16, finish="length")])
    assert api.engine().generate([chat("hi")], GREEDY, [0])[0].completion_tokens == 16


# -- a fleet of servers ----------------------------------------------------------------------


def by_seed(body):
    """What a server of one model answers: a function of the request alone."""
    return reply(f"answer to {body['messages'][-1]['content']} with seed {body['seed']}")


def fleet(*apis, **settings) -> OpenAIEngine:
    urls = [api.url for api in apis]
    engine = make_engine("given-spec", EngineSettings(engine="openai", base_url=urls, **settings))
    engine.backoff_base = 0.001
    engine.pool.down_base_s = 0.05
    return engine


CHATS = [chat(f"q{i}") for i in range(12)]
SEEDS = list(range(100, 112))


def test_a_fleet_spreads_requests_bounded_per_server_and_answers_in_order(fake):
    single = fake([], respond=by_seed).engine().generate(CHATS, GREEDY, SEEDS)
    a, b = (fake([], respond=by_seed, delay_s=0.05) for _ in range(2))
    out = fleet(a, b, max_concurrency=2).generate(CHATS, GREEDY, SEEDS)
    assert out == single  # the same results, in input order, whoever answered
    assert len(a.bodies) + len(b.bodies) == 12 and a.bodies and b.bodies
    assert a.most_in_flight <= 2 and b.most_in_flight <= 2
    assert max(a.most_in_flight, b.most_in_flight) == 2  # each server's bound is used


def test_a_failing_server_is_passed_over_and_leaves_the_rotation(fake):
    good = fake([], respond=by_seed)
    bad = fake([error(503, "down for maintenance")])
    single = fake([], respond=by_seed).engine().generate(CHATS, GREEDY, SEEDS)
    out = fleet(bad, good, max_concurrency=1, max_retries=2).generate(CHATS, GREEDY, SEEDS)
    assert out == single
    # Two failures in a row take it out: far fewer than the 12 requests reach it.
    assert len(bad.bodies) <= 4, len(bad.bodies)


def test_a_server_dying_mid_run_loses_nothing(fake):
    good = fake([], respond=by_seed)
    answered = []

    def then_die(body):
        if len(answered) == 3:
            threading.Thread(target=dying.close).start()
            return DROP
        answered.append(body)
        return by_seed(body)

    dying = fake([], respond=then_die)
    single = fake([], respond=by_seed).engine().generate(CHATS, GREEDY, SEEDS)
    out = fleet(dying, good, max_concurrency=2).generate(CHATS, GREEDY, SEEDS)
    assert out == single and len(answered) == 3


def test_when_every_server_fails_the_error_names_the_fleet(fake):
    bad = [fake([error(500, "oops")]) for _ in range(2)]
    with pytest.raises(UserError, match=r"2 servers: HTTP 500: oops \(gave up after 3 attempts"):
        fleet(*bad, max_retries=2).generate([chat("hi")], GREEDY, [0])


def test_servers_of_different_models_are_refused(fake):
    a, b = fake([reply()], models=["model-a"]), fake([reply()], models=["model-b"])
    with pytest.raises(UserError, match="the servers serve different models"):
        fleet(a, b)


def test_base_url_may_be_a_file_of_servers(fake, tmp_path):
    a, b = fake([], respond=by_seed), fake([], respond=by_seed)
    listing = tmp_path / "servers.txt"
    listing.write_text(f"# my fleet\n{a.url}\n\n{b.url}  # the other one\n")
    engine = make_engine("m", EngineSettings(engine="openai", base_url=str(listing)))
    assert engine.base_urls == [a.url, b.url]
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(UserError, match="none.txt: the file lists no URL"):
        EngineSettings(engine="openai", base_url=str(empty))


def test_the_fleet_is_not_part_of_the_fingerprint():
    """Resuming (or merging shards) with other servers of the same model is allowed."""
    from rlaif.engines import result_settings

    one = EngineSettings(engine="openai", base_url="http://a:1/v1")
    other = EngineSettings(engine="openai", base_url=["http://b:1/v1", "http://c:1/v1"])
    assert result_settings(one) == result_settings(other)


# -- the real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(openai_server, embedded_model):
    engine = make_engine(
        "a-name-the-server-does-not-know",
        EngineSettings(engine="openai", base_url=openai_server, max_model_len=2048),
    )
    yield engine
    engine.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_a_real_server_and_a_failing_one_answer_as_the_real_one_alone(served, openai_server, fake):
    """A fleet of the real vLLM server and one that fails every request (then, mid-run, a
    proxy to the real server that dies) gives exactly the real server's answers."""
    import httpx

    sampling = Sampling(max_new_tokens=12, temperature=0.8, top_p=0.95)
    chats, seeds = CHATS[:6], SEEDS[:6]
    alone = served.generate(chats, sampling, seeds)
    failing = fake([error(503, "overloaded")])
    forwarded = []

    def proxy_then_die(body):
        if len(forwarded) == 2:
            threading.Thread(target=dying.close).start()
            return DROP
        forwarded.append(body)
        answer = httpx.post(f"{openai_server}/chat/completions", json=body, timeout=120)
        return answer.status_code, answer.json()

    dying = fake([], respond=proxy_then_die, models=[served.model_id])
    failing.models = [served.model_id]
    settings = {"max_model_len": 2048, "max_concurrency": 2}
    for other in (failing, dying):
        engine = make_engine(
            "a-name-the-server-does-not-know",
            EngineSettings(engine="openai", base_url=[other.url, openai_server], **settings),
        )
        engine.backoff_base = 0.01
        assert engine.generate(chats, sampling, seeds) == alone
        engine.close()
    assert forwarded  # the proxy answered some before it died


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_names_its_model(served, embedded_model):
    assert served.model_id == embedded_model


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_scores_without_prefix_like_a_forward_pass(served, embedded_model):
    """The no-prefix path (plain generation prompt, no assistant message) and per-chat prefixes
    give the transformers log-probabilities too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.engines.base import option_token_ids, render_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    chats = [chat("Answer with A or B only. Is water wet? (A) yes (B) no")] * 2
    prefixes = ["", "Answer: ("]
    got = served.score_options(chats, ["A", "B"], answer_prefix=prefixes)
    for c, prefix, scores in zip(chats, prefixes, got, strict=True):
        ids = torch.tensor([render_prompt_ids(tokenizer, c, prefix)])
        assert scores.prompt_tokens == ids.shape[1]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        for option, lp in zip(["A", "B"], scores.logprobs, strict=True):
            expected = torch.logsumexp(logprobs[option_token_ids(tokenizer, option)], 0).item()
            assert lp == pytest.approx(expected, abs=0.02)


@pytest.mark.vllm
@pytest.mark.slow
def test_the_cli_runs_generate_and_label_against_the_server(openai_server, tmp_path):
    """`--engine openai --base-url`: the stages send work to the server, nothing is loaded or
    converted here, and the manifests say where the model ran."""
    import subprocess

    from conftest import DATA, rlaif_cmd

    server = ["--engine", "openai", "--base-url", openai_server]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((DATA / "prompts.jsonl").read_text().splitlines(True)[:2]))
    revisions = tmp_path / "revisions.jsonl"
    subprocess.run(
        rlaif_cmd("generate", str(prompts), "-o", str(revisions), "--rounds", "1",
                  "--max-new-tokens", "24", *server),
        check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in revisions.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["capital", "lock"]
    assert all(r["revisions"][-1]["revision"].strip() for r in rows)
    manifest = json.loads((tmp_path / "revisions.jsonl.manifest.json").read_text())
    assert manifest["models"]["engine"] == "openai"
    assert manifest["models"]["policy"]["kind"] == "served"

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join((DATA / "hh-harmless-64.jsonl").read_text().splitlines(True)[:3]))
    labels = tmp_path / "labels.jsonl"
    subprocess.run(
        rlaif_cmd("label", str(pairs), "-o", str(labels), "-k", "1", *server), check=True
    )
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(rows) == 3
    assert all(0.0 < r["p"] < 1.0 for r in rows)
    manifest = json.loads((tmp_path / "labels.jsonl.manifest.json").read_text())
    assert manifest["models"]["judge"]["kind"] == "served"


def test_winrate_refuses_the_openai_engine(tmp_path):
    from rlaif.stages.eval_winrate import WinrateConfig, run

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    cfg = WinrateConfig(
        policy="embedded",
        baseline="embedded",
        prompts=str(prompts),
        output=str(tmp_path / "w.jsonl"),
        engine=EngineSettings(engine="openai", base_url="http://127.0.0.1:9/v1"),
    )
    with pytest.raises(UserError, match="--engine openai is for"):
        run(cfg)


def test_a_missing_base_url_fails_before_the_stage_writes_anything(tmp_path):
    import subprocess

    from conftest import DATA, rlaif_cmd

    out = tmp_path / "prefs.jsonl"
    done = subprocess.run(
        rlaif_cmd("label", str(DATA / "hh-harmless-64.jsonl"), "-o", str(out), "--engine=openai"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "needs --base-url" in done.stderr
    assert list(tmp_path.iterdir()) == []
