"""One suite every engine passes, on the real embedded model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlaif.engines import Sampling
from rlaif.engines.base import option_token_ids, render_prompt_ids
from rlaif.plumbing import hardware

GREEDY = Sampling(max_new_tokens=16, temperature=0.0)


def chat(text):
    return [{"role": "user", "content": text}]


def test_greedy_answer_is_sensible(engine):
    [out] = engine.generate([chat("What is the capital of France?")], GREEDY, [0])
    assert "Paris" in out.text
    assert 0 < out.completion_tokens <= GREEDY.max_new_tokens
    assert out.prompt_tokens > 5


def test_results_follow_input_order(engine):
    questions = ["What is the capital of France?", "Name three colors.", "What is 2+2?"]
    forward = engine.generate([chat(q) for q in questions], GREEDY, [0, 1, 2])
    backward = engine.generate([chat(q) for q in reversed(questions)], GREEDY, [2, 1, 0])
    assert [o.text for o in forward] == [o.text for o in reversed(backward)]
    assert "Paris" in forward[0].text and "4" in forward[2].text


def test_max_new_tokens_is_respected(engine):
    [out] = engine.generate([chat("Write a long story about a dragon.")], Sampling(5, 0.0), [0])
    assert out.completion_tokens == 5


def test_sampling_is_reproducible_with_seeds(engine):
    hot = Sampling(max_new_tokens=12, temperature=1.0, top_p=1.0)
    chats = [chat("Tell me a word."), chat("Invent a name for a cat.")]
    first = engine.generate(chats, hot, [7, 8])
    again = engine.generate(chats, hot, [7, 8])
    assert [o.text for o in first] == [o.text for o in again]


def test_sampling_depends_on_seed(engine):
    hot = Sampling(max_new_tokens=12, temperature=1.0, top_p=1.0)
    texts = {
        engine.generate([chat("Invent a name for a cat.")], hot, [s])[0].text for s in range(6)
    }
    assert len(texts) > 1


def test_option_scores_are_log_probabilities(engine):
    question = chat("Which is a colour? (A) blue (B) chair. Answer A or B.")
    [scores] = engine.score_options([question], ["A", "B"], answer_prefix="The answer is (")
    assert len(scores.logprobs) == 2
    assert all(lp <= 0 and math.isfinite(lp) for lp in scores.logprobs)
    assert sum(math.exp(lp) for lp in scores.logprobs) <= 1.0 + 1e-4
    assert scores.prompt_tokens > 10


def test_option_scores_match_a_plain_forward_pass(engine, embedded_model):
    """Both engines must give the full-vocabulary log-probability transformers computes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    chats = [chat("Is the sky green? (A) yes (B) no"), chat("Pick a letter: (A) or (B)?")]
    got = engine.score_options(chats, ["A", "B"], answer_prefix="(")
    for c, scores in zip(chats, got, strict=True):
        ids = torch.tensor([render_prompt_ids(tokenizer, c, "(")])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        for option, lp in zip(["A", "B"], scores.logprobs, strict=True):
            expected = torch.logsumexp(logprobs[option_token_ids(tokenizer, option)], 0).item()
            assert lp == pytest.approx(expected, abs=0.02)


def test_option_variants_cover_spaced_and_bare_letters(embedded_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    ids = option_token_ids(tokenizer, "A")
    assert {tokenizer.decode([i]) for i in ids} == {"A", " A"}
    with pytest.raises(ValueError, match="single token"):
        option_token_ids(tokenizer, "Absolutely not a single token")


def test_progress_callback_counts_every_request_and_changes_no_result(engine, monkeypatch):
    """`on_done` reports each call's requests as they finish (the counts sum to them) and
    leaves the batches, hence every answer and score, as they are without it."""
    from dataclasses import replace

    if engine.name == "hf":  # batches of 2: the callback comes per batch, several times
        monkeypatch.setattr(engine, "settings", replace(engine.settings, batch_size=2))
    chats = [chat("Tell me a word."), chat("Invent a name for a cat."), chat("Say hi.")]
    hot = Sampling(max_new_tokens=6, temperature=1.0, top_p=1.0)
    seeds = [3, 1, 4]
    counts: list[int] = []
    reported = engine.generate(chats, hot, seeds, on_done=counts.append)
    assert sum(counts) == len(chats) and min(counts) > 0
    if engine.name == "hf":
        assert counts == [2, 1]
    assert reported == engine.generate(chats, hot, seeds)

    counts.clear()
    scored = engine.score_options(chats, ["A", "B"], answer_prefix="(", on_done=counts.append)
    assert sum(counts) == len(chats) and min(counts) > 0
    plain = engine.score_options(chats, ["A", "B"], answer_prefix="(")
    assert [s.prompt_tokens for s in scored] == [s.prompt_tokens for s in plain]
    if engine.name == "hf":
        assert scored == plain  # the same batches: the same floats
    else:  # vLLM's second call reads the first one's prefix cache: another kernel path
        for a, b in zip(scored, plain, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prompts_that_cannot_fit_fail_with_one_clear_error(engine):
    from rlaif.plumbing.errors import UserError

    too_long = chat("word " * 2100)  # the shared engines run with --max-model-len 2048
    with pytest.raises(UserError, match=r"exceeds --max-model-len 2048"):
        engine.generate([too_long], GREEDY, [0])
    with pytest.raises(UserError, match=r"plus 1 new tokens exceeds --max-model-len 2048"):
        engine.score_options([too_long], ["A", "B"])


# --dtype auto: resolved per use (generation, scoring) and per machine -----------------------


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_scores_in_bf16_only_where_the_cpu_has_it(monkeypatch, has_bf16):
    from rlaif.engines import resolved_dtype

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    assert resolved_dtype("auto", "score", on_gpu=False) == ("bfloat16" if has_bf16 else "float32")
    assert resolved_dtype("auto", "generate", on_gpu=False) == "float32"  # answers stay stable
    assert resolved_dtype("auto", "score", on_gpu=True) == "auto"  # the engine's own choice
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolved_dtype(explicit, "score", on_gpu=False) == explicit
        assert resolved_dtype(explicit, "generate", on_gpu=False) == explicit


def test_models_by_use_load_what_each_use_needs():
    from rlaif.engines.base import ModelsByUse

    loads = []

    def load(dtype):
        loads.append(dtype)
        return f"model-{dtype}", dtype

    both = {"generate": "float32", "score": "bfloat16"}
    scoring_first = ModelsByUse(load, both)
    assert loads == []  # which one is needed is known at the first use
    assert scoring_first("score") == "model-bfloat16"
    assert scoring_first("generate") == "model-float32"  # generation never runs in bf16 here
    assert scoring_first("score") == "model-bfloat16"
    assert loads == ["bfloat16", "float32"]
    assert scoring_first.used == both

    loads.clear()
    generating_first = ModelsByUse(load, both)
    generating_first("generate")
    assert generating_first("score") == "model-float32"  # no second copy for scoring
    assert loads == ["float32"]
    assert generating_first.used == {"generate": "float32", "score": "float32"}

    loads.clear()
    one = ModelsByUse(load, {"generate": "float32", "score": "float32"})
    assert loads == ["float32"]  # nothing to wait for: loaded at once, as before
    one("score"), one("generate")
    assert loads == ["float32"]


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_hf_engine_scores_in_the_resolved_dtype(monkeypatch, embedded_model, has_bf16):
    """On a bf16 CPU the transformers engine scores in bf16, close to float32's scores, and
    generates in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.engines import EngineSettings, make_engine

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    engine = make_engine(embedded_model, EngineSettings(engine="hf", max_model_len=2048))
    try:
        chats = [chat("Is the sky green? (A) yes (B) no"), chat("Pick a letter: (A) or (B)?")]
        got = engine.score_options(chats, ["A", "B"], answer_prefix="(")
        dtype = "bfloat16" if has_bf16 else "float32"
        assert engine.dtypes == {"score": dtype}
        assert next(engine.models("score").parameters()).dtype == getattr(torch, dtype)

        tokenizer = AutoTokenizer.from_pretrained(embedded_model)
        model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
        for c, scores in zip(chats, got, strict=True):
            ids = torch.tensor([render_prompt_ids(tokenizer, c, "(")])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            for option, lp in zip(["A", "B"], scores.logprobs, strict=True):
                expected = torch.logsumexp(logprobs[option_token_ids(tokenizer, option)], 0)
                # bf16 keeps 8 bits of mantissa: an option's log-prob moved by up to 0.21 here
                # (the labels' p by far less: benchmarks/label_dtype.py)
                assert lp == pytest.approx(expected.item(), abs=0.35 if has_bf16 else 0.02)

        engine.generate([chat("Say hi.")], GREEDY, [0])
        assert engine.dtypes == {"score": dtype, "generate": "float32"}
    finally:
        engine.close()


@pytest.mark.parametrize("has_bf16", [True, False])
def test_label_manifest_records_the_resolved_dtype(
    monkeypatch, home_with_model, tmp_path, has_bf16
):
    from rlaif.engines import EngineSettings
    from rlaif.stages import label

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    pairs = tmp_path / "pairs.jsonl"
    hh = (Path(__file__).parent / "data" / "hh-harmless-64.jsonl").read_text().splitlines()
    pairs.write_text("\n".join(hh[:2]) + "\n")
    manifest = label.run(
        label.LabelConfig(
            pairs=str(pairs),
            output=str(tmp_path / "prefs.jsonl"),
            engine=EngineSettings(engine="hf", max_model_len=4096),
        )
    )
    dtype = "bfloat16" if has_bf16 else "float32"
    assert manifest["engine_dtypes"] == {"judge": {"score": dtype}}
    assert manifest["settings"]["engine"]["dtype"] == "auto"
