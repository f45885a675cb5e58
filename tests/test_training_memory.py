"""The memory settings of the training stages: their defaults.

The memory figures themselves are measured by benchmarks/training_step_times.py, not here; the
CPU fused LM head has its own tests (test_fused_lm_head.py)."""

from __future__ import annotations

import pytest

from rlaif.stages import dpo, rl, sft, train_rm
from rlaif.training.job import trainer_args


@pytest.mark.parametrize(
    "config",
    [
        lambda: sft.SFTConfig(data="x.jsonl", output_dir="o"),
        lambda: dpo.DPOConfig(prefs="x.jsonl", output_dir="o"),
        lambda: train_rm.TrainRMConfig(prefs="x.jsonl", output_dir="o"),
    ],
    ids=["sft", "dpo", "train-rm"],
)
def test_offline_stages_default_to_checkpointing_and_4_x_2_accumulated(config, tmp_path):
    from trl import SFTConfig

    cfg = config()
    assert cfg.gradient_checkpointing
    assert (cfg.batch_size, cfg.gradient_accumulation_steps) == (4, 2)  # 8 per update
    args = trainer_args(SFTConfig, cfg, tmp_path)
    assert args.gradient_checkpointing and args.per_device_train_batch_size == 4


def test_rl_defaults_to_checkpointing():
    assert rl.RLConfig(prompts="p.jsonl", output_dir="o").gradient_checkpointing
