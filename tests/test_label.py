"""`rlaif label`: swap logic on a hand-computed case, real labels from both engines, TRL loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import DATA, first_lines

from rlaif.engines import EngineSettings
from rlaif.engines.base import Completion, OptionScores
from rlaif.judging.judge import JudgingSettings, combine_orders, judge_chunk
from rlaif.plumbing.pairs import PairRecord
from rlaif.plumbing.progress import TokenCounter
from rlaif.stages import label

HH = DATA / "hh-harmless-64.jsonl"


class TableJudge:
    """A scripted judge for pure logic: P(option A) looked up by which response is shown first."""

    name = "table"
    model_id = "table-judge"

    def __init__(self, p_a_when_first: dict[str, float], verdict_text: str = "A"):
        self.p_a_when_first = p_a_when_first
        self.verdict_text = verdict_text

    def score_options(self, chats, options, answer_prefix="", on_done=None):
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            first = text.split("(A) ", 1)[1].split("\n", 1)[0]
            p = self.p_a_when_first[first]
            out.append(OptionScores([math.log(p), math.log(1 - p)], 10))
        return out

    def generate(self, chats, sampling, seeds, on_done=None):
        return [Completion(self.verdict_text, 10, 1) for _ in chats]


def record(responses, reference=0, rid="r1"):
    prompt = [{"role": "user", "content": "Question?"}]
    return PairRecord(rid, prompt, tuple(responses), reference, "explicit", 1)


def judge_one(rec, judge, **cfg):
    seed = cfg.pop("seed", 0)
    config = JudgingSettings(**cfg)
    from rlaif.judging.constitution import load_constitution, resolve_constitution_path

    constitution = load_constitution(resolve_constitution_path("harmless"))
    [row] = judge_chunk([rec], judge, config, seed, constitution, TokenCounter())
    return row


def test_combining_orders_by_hand():
    # Shown (a, b): P(A) = 0.9 -> P(a) = 0.9. Shown (b, a): P(A) = 0.6 -> P(a) = 1 - 0.6 = 0.4.
    p_ab, p_ba, p = combine_orders(0.9, 0.6)
    assert (p_ab, p_ba) == (0.9, pytest.approx(0.4)) and p == pytest.approx(0.65)
    assert combine_orders(None, 0.6)[2] == pytest.approx(0.4)  # one order abstained
    assert combine_orders(None, None)[2] == 0.5


def test_swapped_pair_gets_the_complementary_label():
    judge = TableJudge({"good": 0.8, "bad": 0.7})  # a judge that likes whatever comes first
    row = judge_one(record(("good", "bad")), judge)
    swapped = judge_one(record(("bad", "good"), reference=1), judge)
    # P(good) = mean(P(A | good first) = 0.8, 1 - P(A | bad first) = 0.3) = 0.55
    p_good = row["p"] if row["responses"][0] == "good" else 1 - row["p"]
    p_good_swapped = swapped["p"] if swapped["responses"][0] == "good" else 1 - swapped["p"]
    assert p_good == pytest.approx(0.55) and p_good_swapped == pytest.approx(0.55)
    assert row["chosen"][0]["content"] == "good" and row["p_chosen"] == pytest.approx(0.55)
    assert not row["position_consistent"]  # it picked the first position both times
    [j] = row["judgements"]
    # p_ab and p_ba are P(responses[0]) in each presentation; responses[0] depends on the seed.
    expected = (0.8, 0.3) if row["responses"][0] == "good" else (0.7, 0.2)
    assert (j["p_ab"], j["p_ba"]) == pytest.approx(expected)


def test_reference_follows_the_presented_order():
    rows = [
        judge_one(record(("x", "y"), reference=0, rid=f"r{i}"), TableJudge({"x": 0.5, "y": 0.5}))
        for i in range(20)
    ]
    assert {r["responses"][0] for r in rows} == {"x", "y"}  # the seeded order varies by record
    for r in rows:
        assert r["responses"][r["reference"]] == "x"


def test_input_fields_are_carried_but_never_replace_label_fields():
    rec = PairRecord(
        "r1",
        [{"role": "user", "content": "Q?"}],
        ("good", "bad"),
        0,
        "explicit",
        1,
        {"unsafe": True, "type": "homonyms", "p": 0.99},
    )
    row = judge_one(rec, TableJudge({"good": 0.8, "bad": 0.3}))
    assert row["unsafe"] is True and row["type"] == "homonyms"
    assert row["p"] != 0.99


def test_generate_method_abstains_on_unparseable_verdicts():
    row = judge_one(
        record(("a", "b")), TableJudge({}, verdict_text="I cannot decide."), method="generate"
    )
    [j] = row["judgements"]
    assert j["abstained"] and row["p"] == 0.5 and (j["p_ab"], j["p_ba"]) == (None, None)


def test_generate_method_reads_letters():
    row = judge_one(
        record(("a", "b")), TableJudge({}, verdict_text="The answer is (A)"), method="generate"
    )
    [j] = row["judgements"]
    # "A" both times: P(first) = 1 in order ab, and 1 - 1 = 0 in order ba.
    assert sorted([j["p_ab"], j["p_ba"]]) == [0.0, 1.0] and row["p"] == 0.5


def test_cot_clamps_each_order():
    row = judge_one(record(("good", "bad")), TableJudge({"good": 0.99, "bad": 0.01}), cot=True)
    [j] = row["judgements"]
    assert sorted([j["p_ab"], j["p_ba"]]) == [pytest.approx(0.6), pytest.approx(0.6)]
    assert j["rationale_ab"] == "A"


def label_file(tmp_path: Path, engine: str, n: int, **overrides) -> tuple[list[dict], dict]:
    pairs = first_lines(HH, n, tmp_path / f"hh-{n}.jsonl")
    cfg = label.LabelConfig(
        pairs=str(pairs),
        output=str(tmp_path / f"prefs-{engine}.jsonl"),
        seed=1,
        # float32: the engines are compared with each other (bf16 scoring: test_engines.py)
        engine=EngineSettings(engine=engine, max_model_len=2048, dtype="float32"),
        **overrides,
    )
    manifest = label.run(cfg)
    rows = [json.loads(line) for line in Path(cfg.output).read_text().splitlines()]
    return rows, manifest


# transformers scores float32 on a CPU at about a third of vLLM's speed (151 s for 40 pairs in
# CI), so it labels the first 16 of vLLM's 40: enough to compare the engines pair by pair.
PAIRS_BY_ENGINE = {"hf": 16, "vllm": 40}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, embedded_model):
    """HH pairs labelled by each engine (the embedded judge), once for the module."""
    import os

    results = {}
    home = tmp_path_factory.mktemp("label-home")
    (home / "models").symlink_to(Path(embedded_model).parent, target_is_directory=True)
    old = os.environ.get("RLAIF_HOME")
    os.environ["RLAIF_HOME"] = str(home)
    try:
        for engine in ("hf", "vllm"):
            if engine == "vllm":
                pytest.importorskip("vllm")
            results[engine] = label_file(
                tmp_path_factory.mktemp(engine), engine, PAIRS_BY_ENGINE[engine]
            )
    finally:
        if old is None:
            os.environ.pop("RLAIF_HOME", None)
        else:
            os.environ["RLAIF_HOME"] = old
    return results


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_dev_pairs_get_valid_soft_labels(labelled, engine):
    rows, manifest = labelled[engine]
    n = PAIRS_BY_ENGINE[engine]
    assert len(rows) == n
    for row in rows:
        assert 0.0 <= row["p"] <= 1.0 and 0.5 <= row["p_chosen"] <= 1.0
        [j] = row["judgements"]
        assert j["p_ab"] is not None and j["p_ba"] is not None  # both orders judged
        assert 0.0 < j["p_ab"] < 1.0 and 0.0 < j["p_ba"] < 1.0
        assert row["p"] == pytest.approx((j["p_ab"] + j["p_ba"]) / 2)
        preferred = row["responses"][0] if row["p"] >= 0.5 else row["responses"][1]
        assert row["chosen"][0]["content"] == preferred
        assert row["reference"] in (0, 1) and row["source"] == "hh"
    diag = manifest["diagnostics"]
    assert diag["pairs"] == n and diag["agreement"]["n"] == n
    assert manifest["tokens"]["judge_prompt_tokens"] > n * 2 * 50
    assert manifest["wall_time_s"] > 0


def test_engines_agree_on_probabilities(labelled):
    hf_rows, _ = labelled["hf"]
    vllm_rows, _ = labelled["vllm"]
    for a, b in zip(hf_rows, vllm_rows[: len(hf_rows)], strict=True):
        assert a["id"] == b["id"]
        for ja, jb in zip(a["judgements"], b["judgements"], strict=True):
            assert ja["p_ab"] == pytest.approx(jb["p_ab"], abs=0.02)
            assert ja["p_ba"] == pytest.approx(jb["p_ba"], abs=0.02)


def test_the_weak_judge_is_revealed(labelled):
    """The embedded judge's verdicts mostly follow the position, not the response, and agree
    with the references at chance; the diagnostics must say so, not hide it. (With the prompt
    that tells the judge refusing a harmless request is a failure, measured on these 40 pairs
    with hf, whose probabilities vLLM's match within 0.02: the same response in both orders
    32.5%, first position 33.8%, agreement 45.0%;
    before it, first position under 20%.)"""
    for engine in labelled:  # transformers on the first 16 of the 40
        diag = labelled[engine][1]["diagnostics"]
        assert diag["position_consistency"] < 0.5
        assert any("picks a position" in w or "option in" in w for w in diag["warnings"])
        assert any("not above chance" in w for w in diag["warnings"])


def test_output_loads_in_datasets_and_trains_a_reward_model(labelled, embedded_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labelled["hf"][0][:8]))
    ds = load_dataset("json", data_files=str(path), split="train")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=2,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        max_length=1024,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    result = trainer.train()
    assert math.isfinite(result.training_loss)


def test_eval_agreement_prints_the_report(labelled):
    from typer.testing import CliRunner

    from rlaif.cli import app

    _, manifest = labelled["hf"]
    result = CliRunner().invoke(app, ["eval", "agreement", manifest["settings"]["output"]])
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output
    assert f"{manifest['diagnostics']['agreement']['agree']}" in result.output


def first_hh_pairs(n: int):
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records

    rows, _ = read_jsonl(str(HH))
    return parse_pair_records(str(HH), rows)[:n]


def test_cot_and_generate_methods_on_the_real_judge(engine_by_name):
    from rlaif.judging.constitution import load_constitution, resolve_constitution_path

    judge = engine_by_name("hf")
    constitution = load_constitution(resolve_constitution_path("harmless"))
    records = first_hh_pairs(3)
    cot = JudgingSettings(cot=True, max_new_tokens=24)
    rows = judge_chunk(records, judge, cot, 0, constitution, TokenCounter())
    for row in rows:
        [j] = row["judgements"]
        assert 0.4 <= j["p_ab"] <= 0.6 and 0.4 <= j["p_ba"] <= 0.6
        assert j["rationale_ab"] and j["rationale_ba"]
    generated = JudgingSettings(method="generate", max_new_tokens=8)
    counter = TokenCounter()
    rows = judge_chunk(records, judge, generated, 0, constitution, counter)
    for row in rows:
        [j] = row["judgements"]
        for p in (j["p_ab"], j["p_ba"]):
            assert p in (0.0, 1.0) or (p is None and j["abstained"])
    assert counter.tokens["judge_completion_tokens"] > 0


def test_label_cli_rejects_bad_input_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from rlaif.cli import app

    src = tmp_path / "pairs.jsonl"
    src.write_text('{"prompt": "Q?", "responses": ["a", "b"]}\n{"prompt": "Q?", "chosen": "a"}\n')
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["label", str(src), "-o", str(out), "--engine", "hf"])
    assert result.exit_code == 2
    assert f"{src}:2: 'chosen' and 'rejected' come together" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]
    bad_k = CliRunner().invoke(app, ["label", str(src), "-o", str(out), "-k", "zero"])
    assert bad_k.exit_code == 2 and "--principles-per-pair zero" in bad_k.output


def test_unjudgeable_pairs_are_skipped_counted_and_named(tmp_path, home_with_model):
    """Real data is messy: an empty reply is judged, identical replies and a pair too long for
    the judge's context are skipped, counted and named; --max-skipped makes that an error."""
    import subprocess

    from conftest import rlaif_cmd

    rows = [
        {"id": "empty", "prompt": "Say nothing.", "chosen": "", "rejected": "Something."},
        {"id": "same", "prompt": "Hi?", "responses": ["Hello.", "Hello."]},
        {"id": "long", "prompt": "Sum up: " + "words " * 400, "responses": ["Short.", "Brief."]},
        {"id": "fine", "prompt": "Capital of France?", "responses": ["Paris.", "Lyon."]},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prefs.jsonl"
    args = ["label", str(pairs), "-o", str(out), "--engine", "hf", "--max-model-len", "512"]
    done = subprocess.run(rlaif_cmd(*args), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert "skipping 2 of 4 pairs" in warning and "(same)" in warning and "(long)" in warning
    assert [r["id"] for r in map(json.loads, out.read_text().splitlines())] == ["empty", "fine"]
    counts = json.loads(Path(f"{out}.manifest.json").read_text())["counts"]
    assert (counts["skipped"], counts["skipped_identical"], counts["skipped_too_long"]) == (2, 1, 1)

    strict = tmp_path / "strict.jsonl"
    refused = subprocess.run(
        rlaif_cmd(*args[:3], str(strict), *args[4:], "--max-skipped", "25%"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: --max-skipped 25%: 2 of 4 pairs cannot be judged")
    assert not strict.exists() and not Path(f"{strict}.partial.jsonl").exists()
