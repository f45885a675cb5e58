"""`rlaif sample`: sampled responses written as pairs that `rlaif label` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA

from rlaif.engines import EngineSettings
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.pairs import parse_pair_records
from rlaif.stages import sample


def test_sample_writes_pairs_label_can_read(tmp_path, home_with_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((DATA / "prompts.jsonl").read_text().splitlines(True)[:3]))
    cfg = sample.SampleConfig(
        prompts=str(prompts),
        output=str(tmp_path / "pairs.jsonl"),
        n=4,
        max_new_tokens=12,
        seed=2,
        engine=EngineSettings(engine="hf"),
    )
    manifest = sample.run(cfg)
    rows = [json.loads(line) for line in Path(cfg.output).read_text().splitlines()]
    assert [r["id"] for r in rows] == [
        "capital:0",
        "capital:1",
        "lock:0",
        "lock:1",
        "neighbour:0",
        "neighbour:1",
    ]
    assert all(len(r["responses"]) == 2 and all(r["responses"]) for r in rows)
    # Sampling at temperature 1 with a seed per response: the responses differ.
    texts = [t for r in rows for t in r["responses"]]
    assert len(set(texts)) > len(texts) // 2
    records = parse_pair_records(cfg.output, read_jsonl(cfg.output)[0])
    assert {r.source for r in records} == {"responses"}
    assert manifest["counts"]["pairs"] == 6 and manifest["tokens"]["completion_tokens"] > 0


def test_sample_settings_are_checked():
    with pytest.raises(UserError, match="--n 3: an even number"):
        sample.SampleConfig(prompts="-", output="-", n=3)
    with pytest.raises(UserError, match="--temperature 0"):
        sample.SampleConfig(prompts="-", output="-", temperature=0)
