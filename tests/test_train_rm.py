"""`rlaif train-rm`, `rlaif score` and `rlaif eval rm` on the real embedded model."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, crash_then_rerun, labelled_copy, rlaif_cmd

from rlaif.plumbing.errors import UserError
from rlaif.stages import train_rm
from rlaif.training.job import last_complete_checkpoint

HH = DATA / "hh-harmless-64.jsonl"
SMALL = dict(
    max_steps=3,
    batch_size=2,
    gradient_accumulation_steps=1,
    max_length=384,
    learning_rate=1e-4,
    save_steps=100,
)


def test_soft_loss_equals_the_standard_loss_for_hard_labels():
    import torch
    import torch.nn.functional as F

    chosen = torch.tensor([1.5, -0.3, 0.2, 2.0])
    rejected = torch.tensor([0.5, 0.4, 0.2, -1.0])
    standard = -F.logsigmoid(chosen - rejected).mean()
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert train_rm.soft_bradley_terry_loss(chosen, rejected, ones).item() == pytest.approx(
        standard.item()
    )
    # p = 0 says the "rejected" response is the better one: the standard loss, swapped.
    swapped = -F.logsigmoid(rejected - chosen).mean()
    assert train_rm.soft_bradley_terry_loss(chosen, rejected, zeros).item() == pytest.approx(
        swapped.item()
    )
    # p = 0.5 is minimised by equal rewards: the gradient at d = 0 vanishes.
    d = torch.zeros(1, requires_grad=True)
    train_rm.soft_bradley_terry_loss(d, torch.zeros(1), torch.full((1,), 0.5)).backward()
    assert d.grad.abs().item() < 1e-7


def train(tmp_path: Path, prefs: Path, **overrides) -> tuple[Path, dict]:
    settings = {**SMALL, **overrides}
    cfg = train_rm.TrainRMConfig(prefs=str(prefs), output_dir=str(tmp_path / "rm"), **settings)
    return Path(cfg.output_dir), train_rm.run(cfg)


def test_hard_labels_train_and_the_folder_reloads(tmp_path, home_with_model, embedded_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlaif.stages.score import RewardModel

    out, manifest = train(tmp_path, HH, label_mode="hard", eval_fraction=0.25, max_steps=4)
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == 4 and len(set(losses)) > 1  # the loss moves
    assert "eval_accuracy" in metrics["eval"]
    assert 512 < metrics["peak_rss_mib"] < 64 * 1024  # above the float32 weights' 0.5 GiB
    assert (out / "curves.png").stat().st_size > 1000 and (out / "manifest.json").exists()
    assert manifest["counts"]["train"] == 48 and manifest["counts"]["eval"] == 16

    trained = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert trained.config.num_labels == 1 and tokenizer.pad_token_id != tokenizer.eos_token_id
    base, _ = train_rm.load_reward_model(embedded_model)
    changed = [
        name
        for name, p in trained.named_parameters()
        if not torch.equal(p, dict(base.named_parameters())[name])
    ]
    assert "score.weight" in changed and any("layers" in n for n in changed)
    rewards = RewardModel(str(out)).score(
        [
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
        ]
    )
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards) and rewards[0] != rewards[1]


def test_soft_labels_train(tmp_path, home_with_model):
    prefs = labelled_copy(tmp_path)
    out, manifest = train(tmp_path, prefs, label_mode="soft", eval_fraction=0)
    assert manifest["settings"]["label_mode"] == "soft" and manifest["counts"]["train"] == 16
    assert math.isfinite(manifest["metrics"]["train_loss"])


def test_filter_mode_drops_unconfident_pairs(tmp_path, home_with_model):
    prefs = labelled_copy(tmp_path)
    out, manifest = train(
        tmp_path, prefs, label_mode="filter", min_confidence=0.1, eval_fraction=0, max_steps=1
    )
    # p in (0.95, 0.55, 0.8, 0.52) repeating: |p - 0.5| >= 0.1 keeps half of 16.
    assert manifest["counts"]["dropped_low_confidence"] == 8
    assert manifest["counts"]["train"] == 8


def test_lora_run_writes_a_merged_model(tmp_path, home_with_model):
    from transformers import AutoModelForSequenceClassification

    out, _ = train(
        tmp_path, HH, label_mode="hard", lora=True, lora_r=4, max_steps=1, eval_fraction=0
    )
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1


def test_settings_are_checked():
    with pytest.raises(UserError, match="--label-mode fuzzy"):
        train_rm.TrainRMConfig(prefs="-", output_dir="x", label_mode="fuzzy")
    with pytest.raises(UserError, match="--eval-fraction 1"):
        train_rm.TrainRMConfig(prefs="-", output_dir="x", eval_fraction=1)


def test_score_and_eval_rm_through_the_cli(tmp_path, home_with_model):
    out, _ = train(tmp_path, HH, label_mode="hard", max_steps=1, eval_fraction=0)
    pairs = tmp_path / "hh-16.jsonl"  # the shortest of the 64, to keep the test quick
    pairs.write_text("".join(sorted(HH.read_text().splitlines(True), key=len)[:16]))
    scored = tmp_path / "scored.jsonl"
    run = subprocess.run(
        rlaif_cmd("score", "--rm", str(out), str(pairs), "-o", str(scored)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["rewards"]) == 2 for r in rows)
    plot = tmp_path / "reliability.png"
    report = subprocess.run(
        rlaif_cmd(
            "eval",
            "rm",
            "--rm",
            str(out),
            str(pairs),
            "--plot",
            str(plot),
            "--json",
            str(tmp_path / "report.json"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "reward model accuracy" in report.stdout and "95% CI" in report.stdout
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["pairs"] == 16 and 0 <= data["ece"] <= 1 and plot.stat().st_size > 1000
    correct = sum(r["rewards"][0] > r["rewards"][1] for r in rows)  # chosen is listed first
    assert data["correct"] == correct


@pytest.mark.slow
def test_two_cpu_processes_train_data_parallel(tmp_path, home_with_model):
    """--num-processes from a config file: the workers are launched once (a worker that
    relaunched would start processes without end) and train as one job of two."""
    out = tmp_path / "rm-ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text("num_processes: 2\n")
    run = subprocess.run(
        rlaif_cmd(
            "train-rm",
            str(HH),
            "-o",
            str(out),
            "--label-mode",
            "hard",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "384",
            "--eval-fraction",
            "0",
            "--config",
            str(config),
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("wrote the reward model") == 1  # rank 0 alone publishes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["processes"] == 2
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, home_with_model):
    pairs = tmp_path / "hh-short.jsonl"
    pairs.write_text("".join(sorted(HH.read_text().splitlines(True), key=len)[:24]))
    out = tmp_path / "rm"
    args = rlaif_cmd(
        "train-rm",
        str(pairs),
        "-o",
        str(out),
        "--label-mode",
        "hard",
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--save-steps",
        "2",
        "--eval-fraction",
        "0",
        "--max-length",
        "384",
    )
    resumed = crash_then_rerun(args, out, "checkpoint-2")
    assert "checkpoint-2" in resumed.stderr or "checkpoint-4" in resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6
    logged_steps = [e["step"] for e in metrics["log_history"] if "loss" in e]
    assert logged_steps[-1] == 6 and not Path(f"{out}.partial").exists()


def test_a_checkpoint_cut_short_is_skipped(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()


def test_a_missing_reward_model_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from rlaif.cli import app

    for command in (["eval", "rm"], ["score", "-o", str(tmp_path / "out.jsonl")]):
        result = CliRunner().invoke(app, [*command, "--rm", str(tmp_path / "nope"), str(HH)])
        assert result.exit_code == 2, result.output
        assert "not a reward-model folder" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_other_processes_wait_for_the_main_one_to_prepare_the_checkpoints(tmp_path, monkeypatch):
    """Under --num-processes every rank opens DIR.partial; only rank 0 may check and write it,
    the others must wait for its settings file instead of refusing a half-prepared folder."""
    import threading

    from rlaif.training.job import prepare_checkpoint_dir

    work = tmp_path / "out.partial"
    work.mkdir()  # as rank 0 leaves it between mkdir and writing the settings
    (work / "checkpoint-2").mkdir()
    (work / "checkpoint-2" / "trainer_state.json").write_text("{}")
    fingerprint = {"lr": 1e-5}
    monkeypatch.setenv("RANK", "1")
    main = threading.Timer(0.5, lambda: prepare_checkpoint_dir_as_main(work, fingerprint))
    main.start()
    assert prepare_checkpoint_dir(work, fingerprint, force=False) == work / "checkpoint-2"
    main.join()


def prepare_checkpoint_dir_as_main(work, fingerprint):
    from rlaif.plumbing.files import write_json
    from rlaif.training.job import SETTINGS_FILE

    write_json(work / SETTINGS_FILE, fingerprint)
