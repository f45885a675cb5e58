"""Where a GRPO or RLOO step of `rlaif rl` spends its time: generation, reward scoring, the
reference (and old-policy) log-prob pass, and the update (forward + backward + optimiser).

    .venv/bin/python benchmarks/rl_step_profile.py [--steps 3] [--algos grpo,rloo]
        [--reward judge|toy_rewards:brevity] [--variants "float32 no-gc,auto gc"]

Each (algo, variant) runs in its own process on the 8 short prompts of tests/data, 8 completions
of at most 64 tokens per step (groups of 4), the embedded 135M policy; the judge reward scores
with the embedded model on transformers (as `rlaif rl --reward judge` does by default). The
parts are timed by wrapping the TRL 1.16 trainer methods that do them (`_generate`,
`_calculate_rewards`, `_get_per_token_logps_and_entropies` without gradients); the update is the
rest of the step. The first step (warm-up) is excluded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # toy_rewards
PROMPTS = REPO / "tests" / "data" / "short-prompts.jsonl"
PARTS = ("generation", "reward", "reference/old log-probs", "update")


def _timed(cls, name: str, part, totals: dict):
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        key = part() if callable(part) else part
        if key is None:
            return original(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(cls, name, wrapper)


def profile(algo: str, variant: str, reward: str, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback

    import rlaif.training.job as training
    from rlaif.stages import rl

    trainer_cls = rl._trl_classes(algo)[1]
    totals: dict = defaultdict(float)
    per_step: list[dict] = []
    # the scoring forward passes run without gradients; the update's forward needs them
    _timed(trainer_cls, "_generate", "generation", totals)
    _timed(trainer_cls, "_calculate_rewards", "reward", totals)
    no_grad_pass = lambda: None if torch.is_grad_enabled() else "reference/old log-probs"  # noqa: E731
    _timed(trainer_cls, "_get_per_token_logps_and_entropies", no_grad_pass, totals)

    class StepClock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            totals.clear()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            step = time.perf_counter() - self.start
            parts = {k: totals.get(k, 0.0) for k in PARTS[:3]}
            parts["update"] = step - sum(parts.values())
            per_step.append({"step": step, **parts})

    original_publish = training.TrainingJob.train_and_publish

    def with_clock(job, trainer, *args, **kwargs):
        trainer.add_callback(StepClock())
        return original_publish(job, trainer, *args, **kwargs)

    training.TrainingJob.train_and_publish = with_clock
    dtype, checkpointing = variant.split()
    work = Path(tempfile.mkdtemp(prefix="rlaif-rl-profile-"))
    rl.run(
        rl.RLConfig(
            prompts=str(PROMPTS),
            output_dir=str(work / "out"),
            algo=algo,
            reward=reward,
            num_generations=4,
            batch_size=8,
            max_new_tokens=64,
            max_steps=steps + 1,
            save_steps=10_000,
            dtype=dtype,
            gradient_checkpointing=checkpointing == "gc",
        )
    )
    measured = per_step[1:] or per_step
    return {k: sum(s[k] for s in measured) / len(measured) for k in ("step", *PARTS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--algos", default="grpo,rloo")
    parser.add_argument("--reward", default="judge")
    parser.add_argument("--variants", default="float32 no-gc,auto gc")
    parser.add_argument("--one", nargs=2, metavar=("ALGO", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(profile(*args.one, args.reward, args.steps)))
        return
    print(f"reward: {args.reward}; seconds per step (share of the step)")
    print(f"{'algo':5s} {'variant':14s} {'step':>6s} " + " ".join(f"{p:>24s}" for p in PARTS))
    for algo in args.algos.split(","):
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--reward", args.reward]
            done = subprocess.run([*cmd, "--one", algo, variant], capture_output=True, text=True)
            if done.returncode:
                print(f"{algo:5s} {variant:14s} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            cells = " ".join(f"{r[p]:9.2f} s ({r[p] / r['step']:5.1%})".rjust(24) for p in PARTS)
            print(f"{algo:5s} {variant:14s} {r['step']:6.2f} {cells}", flush=True)


if __name__ == "__main__":
    main()
