"""The record-stage skeleton: engines built once per model and closed however a run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA

from rlaif import generate
from rlaif.engines import EngineSettings
from rlaif.engines.base import Completion
from rlaif.stage import TokenCounter


class FailingEngine:
    """Answers the first call, then fails: a crash in the middle of a run."""

    def __init__(self, log: list):
        self.log = log
        self.model_id = f"engine-{len(log)}"
        log.append(self)
        self.closed = False
        self.calls = 0

    def generate(self, chats, sampling, seeds):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("engine died")
        return [Completion("an answer", 3, 2) for _ in chats]

    def close(self):
        self.closed = True


def test_engines_are_closed_when_a_run_fails(tmp_path, home_with_model, monkeypatch):
    import rlaif.engines

    built: list = []
    monkeypatch.setattr(rlaif.engines, "make_engine", lambda *a, **k: FailingEngine(built))
    cfg = generate.GenerateConfig(
        prompts=str(DATA / "prompts.jsonl"),
        output=str(tmp_path / "out.jsonl"),
        rounds=1,
        engine=EngineSettings(engine="hf"),
    )
    with pytest.raises(RuntimeError, match="engine died"):
        generate.run(cfg)
    # The policy judges itself: one model, one engine, closed although the run failed.
    assert len(built) == 1 and built[0].closed
    assert not Path(cfg.output).exists()


def test_token_counter_adds_by_role():
    tokens = TokenCounter()
    tokens.add_completions("judge", [Completion("a", 10, 2), Completion("b", 5, 1)])
    tokens.add("judge", prompt_tokens=4)
    tokens.add_completions("", [Completion("c", 7, 3)])
    assert tokens.tokens == {
        "judge_prompt_tokens": 19,
        "judge_completion_tokens": 3,
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }
