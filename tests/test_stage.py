"""The record-stage skeleton: engines built once per model and closed however a run ends; the
progress bar moves within a chunk as requests finish; the throughput line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA

from rlaif.engines import EngineSettings
from rlaif.engines.base import Completion
from rlaif.plumbing.progress import Progress, TokenCounter
from rlaif.stages import generate
from rlaif.stages.runner import run_in_chunks


class FailingEngine:
    """Answers the first call, then fails: a crash in the middle of a run."""

    def __init__(self, log: list):
        self.log = log
        self.model_id = f"engine-{len(log)}"
        log.append(self)
        self.closed = False
        self.calls = 0

    def generate(self, chats, sampling, seeds, on_done=None):
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


# Progress within a chunk ----------------------------------------------------------------------


class Updates:
    """A stand-in bar: where it stands after each update."""

    def __init__(self):
        self.n, self.seen = 0, []

    def update(self, n):
        self.n += n
        self.seen.append(self.n)


def test_progress_moves_by_whole_records_as_requests_finish():
    bar = Updates()
    progress = Progress(bar, 3)  # a chunk of 3 prompts
    answers, critiques = progress.split(2)  # two engine calls of 3 requests each
    on_done = answers.on_done(3)
    for _ in range(3):
        on_done(1)
    assert bar.seen == [1]  # half the work: 1.5 prompts, shown as 1
    on_done = critiques.on_done(3)
    on_done(2)
    on_done(1)
    on_done(5)  # more than the call had: its share is full already
    progress.finish()
    assert bar.seen == [1, 2, 3]

    silent = Updates()
    progress = Progress(silent, 4)
    progress.split(3)[0].on_done(10)  # an engine that never reports
    progress.finish()
    assert silent.seen == [4]  # the chunk, at its end
    Progress().split(2)[1].on_done(1)(1)  # no bar (a library call): nothing to move


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar of the test, drawn at each update (no delay), recorded."""
    import tqdm

    made = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "delay": 0, "mininterval": 0})
            self.seen = []
            made.append(self)

        def update(self, n=1):
            super().update(n)
            self.seen.append(self.n)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    return made


class Record:
    def __init__(self, i):
        self.id = f"r{i}"


def test_the_bar_counts_records_within_a_chunk(bars, capsys):
    def process(chunk, progress):
        on_done = progress.on_done(2 * len(chunk))  # two requests per record
        for _ in range(2 * len(chunk)):
            on_done(1)
        return [{"id": r.id} for r in chunk]

    records = [Record(i) for i in range(5)]
    result = run_in_chunks(
        output="-",
        fingerprint={},
        force=False,
        records=records,
        chunk_size=256,  # all in one chunk
        process_chunk=process,
        description="label",
        unit="pair",
    )
    assert [row["id"] for row in result.rows] == [r.id for r in records]
    [bar] = bars
    assert bar.total == 5 and bar.seen == [1, 2, 3, 4, 5]
    err = capsys.readouterr().err
    assert "label:" in err and "2/5 pairs" in err and "5/5 pairs" in err


class ReportingEngine:
    """Answers every request and reports each as it finishes, as a real engine does."""

    model_id = "reporting"
    load_s = 0.0

    def __init__(self):
        self.calls = []

    def generate(self, chats, sampling, seeds, on_done=None):
        self.calls.append(len(chats))
        for _ in chats:
            on_done(1)
        return [Completion(f"answer {seed}", 11, 3) for seed in seeds]

    def close(self):
        pass


def test_generate_moves_the_bar_within_a_chunk_and_reports_throughput(
    tmp_path, home_with_model, monkeypatch, bars, capsys
):
    import json

    import rlaif.engines

    monkeypatch.setattr(rlaif.engines, "make_engine", lambda *a, **k: ReportingEngine())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Q{i}?"}) + "\n" for i in range(4)))
    cfg = generate.GenerateConfig(
        prompts=str(prompts),
        output=str(tmp_path / "out.jsonl"),
        rounds=1,
        engine=EngineSettings(engine="hf"),
    )
    manifest = generate.run(cfg)
    [bar] = bars
    # 4 prompts in one chunk, each 3 requests (answer, critique, revision): a prompt's worth
    # of work every 3 requests
    assert bar.total == 4 and bar.unit == "prompt" and bar.seen == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "1/4 prompts" in err and "4/4 prompts" in err
    throughput = manifest["throughput"]
    assert set(throughput) == {"policy", "judge"}
    assert throughput["judge"]["prompt_tokens"] == 8 * 11
    assert throughput["judge"]["completion_tokens"] == 8 * 3
    assert throughput["judge"]["tokens_per_s"] > 0
    # once, at the end: a line per role
    assert err.count("judge: ") == 1 and err.count("policy: ") == 1
    assert "judge: " in err and "(88 prompt + 24 generated tokens in" in err


def test_a_real_label_run_shows_pairs_within_a_chunk_and_the_judges_tokens_per_s(
    tmp_path, home_with_model, bars, capsys
):
    """The transformers engine reports per batch: batches of 2 of the 6 requests of 3 pairs
    (both orders) move the bar a pair at a time inside the one chunk."""
    from rlaif.stages import label

    pairs = tmp_path / "pairs.jsonl"
    hh = (DATA / "hh-harmless-64.jsonl").read_text().splitlines()
    pairs.write_text("\n".join(hh[:3]) + "\n")
    manifest = label.run(
        label.LabelConfig(
            pairs=str(pairs),
            output=str(tmp_path / "prefs.jsonl"),
            engine=EngineSettings(engine="hf", batch_size=2),
        )
    )
    [bar] = bars
    assert bar.total == 3 and bar.seen == [1, 2, 3]
    err = capsys.readouterr().err
    assert "1/3 pairs" in err and "3/3 pairs" in err
    judge = manifest["throughput"]["judge"]
    assert judge["prompt_tokens"] == manifest["tokens"]["judge_prompt_tokens"] > 0
    assert judge["engine_s"] > 0 and judge["tokens_per_s"] > 0
    assert f"judge: {judge['tokens_per_s']:,.1f} tokens/s" in err


def test_options_that_change_no_row_are_left_out_of_the_fingerprint():
    """Declared by the stage that has them (fingerprint=False), not listed by the skeleton:
    where the output goes, --force, label's --max-skipped."""
    from rlaif.stages.label import LabelConfig
    from rlaif.stages.runner import settings_fingerprint

    a = LabelConfig(pairs="p.jsonl", output="a.jsonl")
    b = LabelConfig(pairs="q.jsonl", output="b.jsonl", force=True, max_skipped="5%")
    assert settings_fingerprint(a, "pairs") == settings_fingerprint(b, "pairs")
    c = LabelConfig(pairs="p.jsonl", output="a.jsonl", seed=1)
    assert settings_fingerprint(a, "pairs") != settings_fingerprint(c, "pairs")
