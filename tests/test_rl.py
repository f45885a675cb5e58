"""`rlaif rl`: TRL's on-line trainers with a reward model, the judge, or a Python reward."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import toy_rewards
from conftest import DATA, crash_then_rerun, labelled_copy, perturbed_copy, rlaif_cmd
from test_sft_dpo import changed_parameters, generates

from rlaif.judging import rating
from rlaif.plumbing.errors import UserError
from rlaif.stages import rl
from rlaif.training import rewards

SHORT_PROMPTS = DATA / "short-prompts.jsonl"


def rl_run(tmp_path: Path, name: str = "policy", **settings) -> tuple[Path, dict]:
    settings = {"max_new_tokens": toy_rewards.MAX_NEW_TOKENS, **settings}
    cfg = rl.RLConfig(
        prompts=str(SHORT_PROMPTS), output_dir=str(tmp_path / name), save_steps=1000, **settings
    )
    return Path(cfg.output_dir), rl.run(cfg)


def short_rl_cli(out: Path, reward: str) -> list[str]:
    """`rlaif rl` for 2 GRPO steps on the short prompts, with a checkpoint after each step."""
    return rlaif_cmd(
        "rl",
        str(SHORT_PROMPTS),
        "-o",
        str(out),
        "--reward",
        reward,
        "--algo",
        "grpo",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "16",
        "--save-steps",
        "1",
    )  # fmt: skip


def log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_expected_rating_is_the_mean_digit_rescaled():
    """One chat's raw reward before any batch prior is removed: Σ i·P(i) over the ratings
    1..9 (renormalised over them), mapped to [0, 1] as the judge reward maps ratings."""

    def expected_rating(logprobs):
        return rating.to_unit(rating.expected_digit(rating.digit_distribution(logprobs)))

    certain_nine = [-50.0] * 8 + [0.0]
    assert expected_rating(certain_nine) == pytest.approx(1.0)
    assert expected_rating([0.0] * 9) == pytest.approx(0.5)  # uniform: rating 5
    half_one_half_nine = [math.log(0.5)] + [-math.inf] * 7 + [math.log(0.5)]
    assert expected_rating(half_one_half_nine) == pytest.approx(0.5)


def test_settings_are_checked():
    with pytest.raises(UserError, match="--algo"):
        rl.RLConfig(prompts="-", output_dir="x", algo="ppo")
    with pytest.raises(UserError, match="multiple of --num-generations"):
        rl.RLConfig(prompts="-", output_dir="x", batch_size=6, num_generations=4)
    with pytest.raises(UserError, match="a reward-model folder"):
        rl.RLConfig(prompts="-", output_dir="x", reward="no-such-folder")
    assert rl.RLConfig(prompts="-", output_dir=".", reward=".").reward_kind == "model"
    assert rl.RLConfig(prompts="-", output_dir="x", reward="m:f").reward_kind == "python"
    assert rl.RLConfig(prompts="-", output_dir="x").reward_kind == "judge"
    with pytest.raises(UserError, match="--judge-engine openai"):
        rl.RLConfig(prompts="-", output_dir="x", judge_engine="openai")
    with pytest.raises(UserError, match="--max-length applies to --algo online-dpo"):
        rl.RLConfig(prompts="-", output_dir="x", max_length=512)
    with pytest.raises(UserError, match="cannot import"):
        rewards.import_reward("no_such_module:f")


def test_vllm_rollouts_are_refused_on_a_machine_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --use-vllm is allowed")
    cfg = rl.RLConfig(prompts=str(SHORT_PROMPTS), output_dir=str(tmp_path / "p"), use_vllm=True)
    with pytest.raises(UserError, match="--use-vllm needs a GPU"):
        rl.run(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_grpo_moves_the_policy_towards_the_reward(tmp_path, home_with_model, embedded_model):
    """Brevity is a reward this policy can learn in tens of CPU steps: most of its answers run
    to the length limit (reward ~0.2 at first). The test compares the mean reward of the first
    and last four steps (32 completions each) and asks for a gap of more than three standard
    errors (Welch), so a run that did not learn fails it."""
    out, manifest = rl_run(
        tmp_path,
        algo="grpo",
        reward="toy_rewards:brevity",
        kl_coef=0.0,
        learning_rate=5e-5,
        max_steps=12,
        batch_size=8,
        num_generations=4,
    )
    steps = [e for e in log(out) if "reward" in e]
    assert len(steps) == 12
    first = [e["reward"] for e in steps[:4]]
    last = [e["reward"] for e in steps[-4:]]
    se = math.sqrt((statistics.variance(first) + statistics.variance(last)) / 4) + 1e-9
    assert statistics.fmean(last) - statistics.fmean(first) > 3 * se, (first, last)
    assert steps[-1]["completions/mean_length"] < steps[0]["completions/mean_length"]
    assert changed_parameters(out, embedded_model)
    assert manifest["inputs"]["reward"] == {"kind": "python", "function": "toy_rewards:brevity"}
    assert 512 < manifest["metrics"]["peak_rss_mib"] < 64 * 1024  # above the 0.5 GiB of weights
    assert (out / "curves.png").stat().st_size > 1000


def test_rloo_against_a_reward_model_runs_and_reloads(tmp_path, home_with_model):
    from rlaif.stages import train_rm

    rm = tmp_path / "rm"
    train_rm.run(
        train_rm.TrainRMConfig(
            prefs=str(labelled_copy(tmp_path, n=4)),
            output_dir=str(rm),
            max_steps=1,
            batch_size=2,
            max_length=384,
            eval_fraction=0,
        )
    )
    out, manifest = rl_run(
        tmp_path, algo="rloo", reward=str(rm), max_steps=2, batch_size=4, num_generations=2
    )
    assert manifest["counts"]["steps"] == 2 and manifest["inputs"]["reward"]["kind"] == "model"
    assert all("kl" in e for e in log(out) if "reward" in e)
    assert generates(out) is not None


def test_online_dpo_runs_and_reloads(tmp_path, home_with_model):
    out, manifest = rl_run(
        tmp_path, algo="online-dpo", reward="toy_rewards:brevity", max_steps=2, batch_size=2
    )
    assert manifest["counts"]["steps"] == 2
    assert any("objective/scores" in e for e in log(out))
    assert generates(out) is not None


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "kl_key"), [("grpo", "kl"), ("online-dpo", "objective/kl")])
def test_ref_model_is_the_anchor_of_the_kl_leash(
    tmp_path, home_with_model, embedded_model, algo, kl_key
):
    """Before its first update the policy is the starting model, so the first step's KL is ~0
    against the default reference and far from 0 against another model. (Online DPO logs the
    plain sampled log-ratio, which can be negative on a few samples; GRPO's estimator is >= 0.)"""
    reference = perturbed_copy(embedded_model, tmp_path / "reference", scale=0.1)
    settings = {
        "algo": algo,
        "reward": "toy_rewards:brevity",
        "kl_coef": 0.1,
        "max_steps": 1,
        "batch_size": 4 if algo != "online-dpo" else 2,
        "num_generations": 2,
        "max_new_tokens": 8,  # the first step's KL needs a few tokens, not long completions
        # float32: under --dtype auto the reference is held in bf16 while the policy keeps
        # float32 weights, so their first-step KL is bf16 rounding, not 0
        "dtype": "float32",
    }
    own, _ = rl_run(tmp_path, "own-reference", **settings)
    other, manifest = rl_run(tmp_path, "other-reference", ref_model=str(reference), **settings)
    kl_own = [e[kl_key] for e in log(own) if kl_key in e]
    kl_other = [e[kl_key] for e in log(other) if kl_key in e]
    assert len(kl_own) == len(kl_other) == 1
    assert abs(kl_own[0]) < 1e-3, kl_own
    assert abs(kl_other[0]) > 0.05, kl_other
    assert manifest["models"]["reference"]["path"] == str(reference.resolve())


@pytest.mark.slow
def test_direct_rlaif_through_the_cli_resumes_after_a_crash(tmp_path, home_with_model):
    """Direct RLAIF (the embedded judge rates every completion, rewards in [0, 1]), killed once
    its first checkpoint is complete, then run again: it resumes and finishes."""
    out = tmp_path / "policy"
    args = short_rl_cli(out, "judge")
    resumed = crash_then_rerun(args, out, "checkpoint-1")
    assert "wrote the policy" in resumed.stderr
    steps = [e for e in log(out) if "reward" in e]
    assert [e["step"] for e in steps] == [1, 2], steps
    assert all(0 <= e["reward"] <= 1 for e in steps)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 2 and manifest["constitution"]["name"] == "harmless"
    assert not Path(f"{out}.partial").exists() and generates(out) is not None


def test_rollouts_run_in_bf16_when_training_does():
    """With --dtype auto resolving to bf16, `generate` (which TRL calls outside the Trainer's
    autocast) computes in bf16 too, over float32 weights that stay float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    ids = torch.tensor([[1, 2, 3]])
    model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    rl.generate_in_bf16(model)
    model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert seen[:2] == [torch.float32, torch.float32] and seen[2:] == [torch.bfloat16] * 2
    assert model.lm_head.weight.dtype == torch.float32


def test_the_reference_model_is_held_in_bf16_when_training_is():
    """GRPO/RLOO load the reference from `model_init_kwargs`: bf16 under bf16 training (its
    pass runs under bf16 autocast anyway), not asked for in float32 or without a KL term."""
    bf16 = rl.RLConfig(prompts="p.jsonl", output_dir="o", dtype="bfloat16")
    assert rl._algo_args(bf16)["model_init_kwargs"] == {"dtype": "bfloat16"}
    fp32 = rl.RLConfig(prompts="p.jsonl", output_dir="o", dtype="float32")
    no_kl = rl.RLConfig(prompts="p.jsonl", output_dir="o", dtype="bfloat16", kl_coef=0)
    assert "model_init_kwargs" not in rl._algo_args(fp32) | rl._algo_args(no_kl)
