"""`--shard I/N` and `rlaif merge`: the assignment by id, the merge's refusals, and real label and
generate runs whose merged shards equal one unsharded run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.shard import Shard, parse_shard, select, shard_of
from rlaif.stages import merge

HH = DATA / "hh-harmless-64.jsonl"
PROMPTS = DATA / "prompts.jsonl"
runner = CliRunner()

# --- parsing and assignment -------------------------------------------------------------------


def test_parse_shard():
    assert parse_shard("2/4") == Shard(2, 4)
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)
    assert parse_shard(None) is None and parse_shard("") is None
    assert str(Shard(3, 8)) == "3/8" and Shard(3, 8).describe() == {"index": 3, "count": 8}


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x", "1/0", "2", "-1/2", "1/2/3", "a/b"])
def test_bad_shards_are_one_line_user_errors(bad):
    with pytest.raises(UserError) as e:
        parse_shard(bad)
    assert str(e.value).startswith(f"--shard {bad}") and "\n" not in str(e.value)


def test_bad_shard_on_the_command_line_exits_2(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(HH.read_text().splitlines(True)[0])
    for command in ("label", "generate"):
        result = runner.invoke(
            app, [command, str(src), "-o", str(tmp_path / "o.jsonl"), "--shard", "3/2"]
        )
        assert result.exit_code == 2, result.output
        assert "error: --shard 3/2: need 1 <= I <= N" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_every_id_is_in_exactly_one_shard():
    ids = [f"record-{i}" for i in range(500)]
    for n in (1, 2, 3, 7):
        owners = {i: [k for k in range(1, n + 1) if Shard(k, n).owns(i)] for i in ids}
        assert all(len(o) == 1 for o in owners.values())
        sizes = [sum(o == [k] for o in owners.values()) for k in range(1, n + 1)]
        assert min(sizes) > 500 / n * 0.7  # spread evenly, roughly


def test_assignment_is_the_documented_hash_of_the_id():
    # Pinned: a change here would split a half-finished SLURM array differently.
    for rid in ("capital", "lock", "fd71a348a920277e", "0"):
        expected = int(hashlib.sha256(rid.encode()).hexdigest()[:16], 16) % 5 + 1
        assert shard_of(rid, 5) == expected
    assert [shard_of(f"r{i}", 4) for i in range(8)] == [3, 2, 2, 1, 1, 3, 2, 4]


def test_selection_is_independent_of_file_order():
    class Rec:
        def __init__(self, rid):
            self.id = rid

    records = [Rec(f"id{i}") for i in range(100)]
    shuffled = random.Random(0).sample(records, len(records))
    mine = {r.id for r in select(records, Shard(2, 3))}
    assert mine == {r.id for r in select(shuffled, Shard(2, 3))}
    assert [r.id for r in select(records, Shard(2, 3))] == [r.id for r in records if r.id in mine]
    assert select(records, None) == records


# --- merge on hand-made shards (no model) -----------------------------------------------------

INPUT_IDS = [f"p{i}" for i in range(12)]  # input line i + 1


def base_manifest(stage="label") -> dict:
    return {
        "stage": stage,
        "command": ["rlaif", stage],
        "settings": {
            "pairs": "in.jsonl",
            "output": "x",
            "seed": 1,
            "force": False,
            "engine": {"engine": "hf", "batch_size": 16},
            "shard": None,
        },
        "inputs": {"pairs": {"path": "in.jsonl", "sha256": "aa"}},
        "models": {
            "judge": {"spec": "m", "path": "/a", "kind": "embedded", "source_sha256": "bb"},
            "engine": "hf",
        },
        "constitution": {"name": "harmless", "path": "/c.yaml", "sha256": "cc"},
        "versions": {"python": "3.11"},
        "counts": {},
        "tokens": {"judge_prompt_tokens": 0},
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
        "wall_time_s": 60.0,
    }


def label_row(rid: str) -> dict:
    p = 0.3 + 0.4 * (int(rid[1:]) % 2)
    return {
        "id": rid,
        "p": p,
        "responses": ["a", "bb"],
        "judgements": [
            {"principle_id": "x", "p_ab": p, "p_ba": p, "abstained": False, "consistent": True}
        ],
        "reference": 0,
    }


def fake_shard(tmp_path: Path, index: int, count: int, name=None, **changes) -> str:
    """Shard `index` of `count` as `rlaif label` writes it, with `changes` to its manifest."""
    mine = [(line, rid) for line, rid in enumerate(INPUT_IDS, 1) if shard_of(rid, count) == index]
    manifest = base_manifest()
    manifest.update(
        shard={"index": index, "count": count},
        input_lines=[line for line, _ in mine],
        counts={"records": len(mine), "resumed": 0, "labelled": len(mine)},
        tokens={"judge_prompt_tokens": 100 * len(mine)},
        throughput={
            "judge": {
                "prompt_tokens": 100 * len(mine),
                "completion_tokens": 0,
                "engine_s": 10.0,
                "tokens_per_s": 10.0 * len(mine),
            }
        },
    )
    for key, value in changes.items():
        section, _, inner = key.partition("__")
        if inner:
            manifest[section] = {**manifest[section], inner: value}
        else:
            manifest[section] = value
    path = tmp_path / (name or f"part-{index}.jsonl")
    path.write_text("".join(json.dumps(label_row(rid)) + "\n" for _, rid in mine))
    Path(f"{path}.manifest.json").write_text(json.dumps(manifest))
    return str(path)


def test_merge_puts_rows_back_in_input_order_and_sums_counts(tmp_path):
    parts = [fake_shard(tmp_path, i, 3) for i in (3, 1, 2)]  # any order on the command line
    out = tmp_path / "merged.jsonl"
    manifest = merge.run(merge.MergeConfig(parts, str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == INPUT_IDS
    assert manifest["counts"] == {"records": 12, "resumed": 0, "labelled": 12}
    assert manifest["tokens"] == {"judge_prompt_tokens": 1200}
    assert [s["index"] for s in manifest["shards"]] == [1, 2, 3]
    assert manifest["wall_time_s"] == 180.0
    # the shards' tokens over their engine seconds together, not the first shard's figure
    assert manifest["throughput"] == {
        "judge": {
            "prompt_tokens": 1200,
            "completion_tokens": 0,
            "engine_s": 30.0,
            "tokens_per_s": 40.0,
        }
    }
    assert manifest["settings"]["output"] == str(out) and manifest["settings"]["shard"] is None
    assert "shard" not in manifest and "input_lines" not in manifest
    assert manifest["diagnostics"]["pairs"] == 12  # over all rows, not one shard's
    assert json.loads(Path(f"{out}.manifest.json").read_text())["counts"]["records"] == 12


def test_an_empty_shard_merges(tmp_path):
    # With more shards than records some own nothing; they still write an output and manifest.
    empty = [i for i in range(1, 41) if all(shard_of(r, 40) != i for r in INPUT_IDS)][0]
    parts = [fake_shard(tmp_path, i, 40) for i in range(1, 41)]
    assert Path(parts[empty - 1]).read_text() == ""
    out = tmp_path / "merged.jsonl"
    merge.run(merge.MergeConfig(parts, str(out)))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == INPUT_IDS


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"stage": "generate"}, "stage"),
        ({"settings__seed": 2}, "settings.seed"),
        ({"settings__engine": {"engine": "hf", "batch_size": 1}}, "settings.engine.batch_size"),
        ({"inputs": {"pairs": {"path": "in.jsonl", "sha256": "zz"}}}, "inputs.pairs.sha256"),
        ({"constitution__sha256": "zz"}, "constitution.sha256"),
        ({"models__engine": "vllm"}, "models.engine"),
        (
            {"models__judge": {"spec": "m", "path": "/a", "kind": "gguf", "source_sha256": "dd"}},
            "models.judge",
        ),
    ],
)
def test_merge_refuses_shards_of_different_jobs(tmp_path, change, key):
    first = fake_shard(tmp_path, 1, 2)
    second = fake_shard(tmp_path, 2, 2, **change)
    with pytest.raises(UserError) as e:
        merge.run(merge.MergeConfig([first, second], str(tmp_path / "m.jsonl")))
    assert f"{first} and {second}: not shards of one job: {key} differs" in str(e.value)
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_ignores_what_may_differ_per_shard(tmp_path):
    first = fake_shard(tmp_path, 1, 2)
    second = fake_shard(
        tmp_path,
        2,
        2,
        settings__pairs="/other/machine/in.jsonl",
        settings__force=True,
        settings__output="elsewhere.jsonl",
        models__judge={"spec": "m", "path": "/b", "kind": "embedded", "source_sha256": "bb"},
    )
    merge.run(merge.MergeConfig([first, second], str(tmp_path / "m.jsonl")))


def test_merge_refuses_incomplete_or_repeated_shards(tmp_path):
    one, two, three = (fake_shard(tmp_path, i, 3) for i in (1, 2, 3))
    out = str(tmp_path / "m.jsonl")
    with pytest.raises(UserError, match=r"missing shard 2/3 \(given: "):
        merge.run(merge.MergeConfig([one, three], out))
    with pytest.raises(UserError, match="both are shard 1/3"):
        merge.run(merge.MergeConfig([one, one, two, three], out))
    other_count = fake_shard(tmp_path, 2, 2, name="other.jsonl")
    with pytest.raises(UserError, match="shard.count differs"):
        merge.run(merge.MergeConfig([one, other_count], out))


def add_row(path: str, row: dict, line: int) -> None:
    """Append a row to a hand-made shard, keeping its manifest in step."""
    Path(path).write_text(Path(path).read_text() + json.dumps(row) + "\n")
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    manifest["input_lines"].append(line)
    manifest["counts"]["records"] += 1
    Path(f"{path}.manifest.json").write_text(json.dumps(manifest))


def test_merge_refuses_a_record_twice(tmp_path):
    one, two = fake_shard(tmp_path, 1, 2), fake_shard(tmp_path, 2, 2)
    stray = json.loads(Path(one).read_text().splitlines()[0])
    add_row(two, stray, 99)
    with pytest.raises(UserError, match=f"{one} and {two}: record '{stray['id']}' appears twice"):
        merge.run(merge.MergeConfig([one, two], str(tmp_path / "m.jsonl")))


def test_merge_refuses_a_record_in_the_wrong_shard(tmp_path):
    one, two = fake_shard(tmp_path, 1, 2), fake_shard(tmp_path, 2, 2)
    foreign = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 2) == 1)
    add_row(two, label_row("p0") | {"id": foreign}, 99)
    with pytest.raises(UserError, match=f"{two}: record '{foreign}' is not in shard 2/2"):
        merge.run(merge.MergeConfig([one, two], str(tmp_path / "m.jsonl")))


def test_merge_refuses_what_is_not_a_shard(tmp_path):
    one, two = fake_shard(tmp_path, 1, 2), fake_shard(tmp_path, 2, 2)
    out = str(tmp_path / "m.jsonl")
    manifest = json.loads(Path(f"{one}.manifest.json").read_text())
    del manifest["shard"]
    Path(f"{one}.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not a shard's output"):
        merge.run(merge.MergeConfig([one, two], out))
    Path(f"{two}.manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest"):
        merge.run(merge.MergeConfig([two], out))
    with pytest.raises(UserError, match="is also an input"):
        merge.run(merge.MergeConfig([one], one))
    Path(one).write_text(Path(one).read_text().split("\n", 1)[1])  # a row lost
    manifest["shard"] = {"index": 1, "count": 2}
    Path(f"{one}.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="do not belong together"):
        merge.run(merge.MergeConfig([one], out))


def test_merge_help_is_light():
    probe = (
        "import sys; from rlaif.cli import app\n"
        "try:\n    app(['merge', '--help'], prog_name='rlaif')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- real runs through the CLI ----------------------------------------------------------------

# One sequence per forward pass: transformers pads a batch to its longest prompt, which moves
# probabilities in the 6th digit and, for sampling, seeds a whole batch at once; a batch of
# one makes each record's result depend on nothing but the record, so the files compare exactly.
HF = ("--engine", "hf", "--batch-size", "1", "--max-model-len", "2048")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(rlaif_cmd(*args), capture_output=True, text=True, timeout=900)


def ok(*args: str) -> subprocess.CompletedProcess:
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory, embedded_model):
    """8 HH pairs labelled once whole and once as 2 shards (plus a shard with another seed)."""
    home = tmp_path_factory.mktemp("shard-home")
    (home / "models").symlink_to(Path(embedded_model).parent, target_is_directory=True)
    d = tmp_path_factory.mktemp("label-shards")
    pairs = d / "pairs.jsonl"
    pairs.write_text("".join(HH.read_text().splitlines(True)[:8]))
    old = os.environ.get("RLAIF_HOME")
    os.environ["RLAIF_HOME"] = str(home)
    try:
        ok("label", str(pairs), "-o", str(d / "whole.jsonl"), "--seed", "1", *HF)
        for i in (1, 2):
            done = ok(
                "label",
                str(pairs),
                "-o",
                str(d / f"part-{i}.jsonl"),
                "--seed",
                "1",
                *HF,
                "--shard",
                f"{i}/2",
            )
            assert f"shard {i}/2: " in done.stderr
        ok(
            "label",
            str(pairs),
            "-o",
            str(d / "part-2-seed-2.jsonl"),
            "--seed",
            "2",
            *HF,
            "--shard",
            "2/2",
        )
    finally:
        if old is None:
            os.environ.pop("RLAIF_HOME", None)
        else:
            os.environ["RLAIF_HOME"] = old
    return d


def test_merged_label_shards_equal_one_run(labelled_shards):
    d = labelled_shards
    parts = [jsonl(d / f"part-{i}.jsonl") for i in (1, 2)]
    assert len(parts[0]) + len(parts[1]) == 8 and parts[0] and parts[1]
    manifests = [json.loads((d / f"part-{i}.jsonl.manifest.json").read_text()) for i in (1, 2)]
    assert [m["shard"] for m in manifests] == [{"index": 1, "count": 2}, {"index": 2, "count": 2}]
    assert [m["counts"]["records"] for m in manifests] == [len(p) for p in parts]

    done = ok("merge", str(d / "part-2.jsonl"), str(d / "part-1.jsonl"), "-o", str(d / "m.jsonl"))
    assert "Judge card" in done.stderr
    whole, merged = jsonl(d / "whole.jsonl"), jsonl(d / "m.jsonl")
    assert merged == whole  # every field of every row, in the same order
    assert (d / "m.jsonl").read_text() == (d / "whole.jsonl").read_text()

    one = json.loads((d / "whole.jsonl.manifest.json").read_text())
    joined = json.loads((d / "m.jsonl.manifest.json").read_text())
    assert joined["counts"] == one["counts"]
    assert joined["tokens"] == one["tokens"]
    assert joined["diagnostics"] == one["diagnostics"]
    assert {k: v for k, v in joined["settings"].items() if k != "output"} == {
        k: v for k, v in one["settings"].items() if k != "output"
    }
    assert [s["index"] for s in joined["shards"]] == [1, 2]


def test_merge_refuses_shards_with_another_seed_or_a_missing_shard(labelled_shards):
    d = labelled_shards
    out = d / "refused.jsonl"
    first, other = str(d / "part-1.jsonl"), str(d / "part-2-seed-2.jsonl")
    done = cli("merge", first, other, "-o", str(out))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {first} and {other}: not shards of one job: settings.seed differs (1 vs 2)"
    ]
    done = cli("merge", first, "-o", str(out))
    assert done.returncode == 2 and "missing shard 2/2" in done.stderr
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()


def test_generate_shards_merge_to_one_run(tmp_path, home_with_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(PROMPTS.read_text().splitlines(True)[:2]))  # one per shard
    common = ("--rounds", "1", "--max-new-tokens", "16", "--seed", "3", *HF)
    ok("generate", str(prompts), "-o", str(tmp_path / "whole.jsonl"), *common)
    for i in (1, 2):
        out = tmp_path / f"part-{i}.jsonl"
        ok("generate", str(prompts), "-o", str(out), *common, "--shard", f"{i}/2")
        assert len(jsonl(out)) == 1
    ok(
        "merge",
        str(tmp_path / "part-1.jsonl"),
        str(tmp_path / "part-2.jsonl"),
        "-o",
        str(tmp_path / "m.jsonl"),
    )
    assert jsonl(tmp_path / "m.jsonl") == jsonl(tmp_path / "whole.jsonl")
    one = json.loads((tmp_path / "whole.jsonl.manifest.json").read_text())
    joined = json.loads((tmp_path / "m.jsonl.manifest.json").read_text())
    assert joined["counts"] == one["counts"] and joined["tokens"] == one["tokens"]


def test_another_shard_does_not_resume_a_partial_run(tmp_path):
    from rlaif.plumbing.outputs import PartialRun
    from rlaif.stages.label import LabelConfig
    from rlaif.stages.runner import settings_fingerprint

    out = str(tmp_path / "o.jsonl")
    first = LabelConfig(pairs="p", output=out, shard=Shard(1, 2))
    PartialRun(out, settings_fingerprint(first, "pairs"), force=False).append([{"id": "a"}])
    second = LabelConfig(pairs="p", output=out, shard=Shard(2, 2))
    with pytest.raises(UserError, match=r"changed: shard\)"):
        PartialRun(out, settings_fingerprint(second, "pairs"), force=False)


def test_sample_shards_merge_to_one_run(tmp_path, home_with_model):
    """`--n 4` writes two pairs per prompt (ids `ID:0`, `ID:1`); both go to the prompt's shard."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(PROMPTS.read_text().splitlines(True)[:3]))
    common = ("--n", "4", "--max-new-tokens", "8", "--seed", "3", *HF)
    ok("sample", str(prompts), "-o", str(tmp_path / "whole.jsonl"), *common)
    for i in (1, 2):
        ok(
            "sample",
            str(prompts),
            "-o",
            str(tmp_path / f"part-{i}.jsonl"),
            *common,
            "--shard",
            f"{i}/2",
        )
    parts = [str(tmp_path / f"part-{i}.jsonl") for i in (2, 1)]
    ok("merge", *parts, "-o", str(tmp_path / "m.jsonl"))
    whole = jsonl(tmp_path / "whole.jsonl")
    assert len(whole) == 6 and jsonl(tmp_path / "m.jsonl") == whole
    one = json.loads((tmp_path / "whole.jsonl.manifest.json").read_text())
    joined = json.loads((tmp_path / "m.jsonl.manifest.json").read_text())
    assert joined["counts"] == one["counts"] and joined["tokens"] == one["tokens"]
