"""Seconds per optimiser step and peak memory of each training stage, side by side in one run:
rlaif as it was (float32, no gradient checkpointing, TRL's own CPU fused LM head, no memory
returned), rlaif in bf16 without checkpointing, rlaif with its defaults (--dtype auto,
checkpointing, rlaif's CPU LM head of rlaif/training/fused_lm_head.py, freed memory returned),
and a plain
TRL script with TRL's own defaults on the same data.

    .venv/bin/python benchmarks/training_step_times.py [--steps 4] [--stages sft,dpo,train-rm,grpo]
    .venv/bin/python benchmarks/training_step_times.py --defaults [--steps 4]

`--defaults`: each command with nothing but its data and --max-steps given (its default batch,
length, precision, checkpointing) on the 64 HH pairs of tests/data (rl: their prompts, the judge
reward); prints peak RSS, the figure README's "Memory" section states.

Each (stage, variant) runs in its own process, so its peak RSS is its own. Data: SFT on 16
HH-RLHF conversations (prompt + chosen answer); DPO and train-rm on the same 16 pairs; GRPO on 8
short prompts with a brevity reward (cheap, so the time is the trainer's), 8 completions of at
most 32 tokens per step (groups of 4). Batch 4, max length 384. Step time = the Trainer's
train_runtime / steps (model loading excluded; DPO's one-off reference pass included).
Plain TRL keeps its defaults except what a CPU needs (use_cpu, and bf16 off: TRL's bf16=True
default fails without a GPU) and, for DPO, the explicit reference model a script would load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # toy_rewards
HH = REPO / "tests" / "data" / "hh-harmless-64.jsonl"
PROMPTS = REPO / "tests" / "data" / "short-prompts.jsonl"
STAGES = ("sft", "dpo", "train-rm", "grpo")
VARIANTS = ("rlaif before", "rlaif auto no-gc", "rlaif defaults", "plain TRL")
# (dtype, gradient checkpointing, rlaif's memory measures) of each rlaif variant
RLAIF_VARIANTS = {
    "rlaif before": ("float32", False, False),
    "rlaif auto no-gc": ("auto", False, True),
    "rlaif defaults": ("auto", True, True),
}


def hh_pairs(n: int):
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records

    rows, _ = read_jsonl(str(HH))
    return parse_pair_records(str(HH), rows)[:n]


def write_data(work: Path) -> dict[str, Path]:
    records = hh_pairs(16)
    chats, prefs = work / "chats.jsonl", work / "prefs.jsonl"
    chats.write_text(
        "".join(
            json.dumps({"messages": [*r.prompt, {"role": "assistant", "content": r.responses[0]}]})
            + "\n"
            for r in records
        )
    )
    prefs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": r.prompt,
                    "chosen": [{"role": "assistant", "content": r.responses[0]}],
                    "rejected": [{"role": "assistant", "content": r.responses[1]}],
                }
            )
            + "\n"
            for r in records
        )
    )
    return {"chats": chats, "prefs": prefs}


def run_rlaif(stage: str, variant: str, steps: int, work: Path, data: dict) -> dict:
    dtype, checkpointing, measures = RLAIF_VARIANTS[variant]
    if not measures:
        _without_memory_measures()
    manifest = _rlaif_manifest(stage, dtype, checkpointing, steps, work, data)
    return {**manifest["metrics"], "precision": manifest.get("precision")}


def _without_memory_measures() -> None:
    """rlaif before this change: TRL's own CPU fused LM head, no malloc trim."""
    from transformers import TrainerCallback

    import rlaif.plumbing.hardware as hardware
    import rlaif.training.job as training

    training.fitted_to_cpu = contextlib.nullcontext
    hardware.return_freed_memory_to_os = TrainerCallback


def _rlaif_manifest(
    stage: str, dtype: str, checkpointing: bool, steps: int, work: Path, data: dict
) -> dict:
    from rlaif.stages import dpo, rl, sft, train_rm

    common = dict(
        max_steps=steps, save_steps=10_000, batch_size=4, gradient_accumulation_steps=1,
        dtype=dtype, gradient_checkpointing=checkpointing,
    )  # fmt: skip
    out = str(work / "out")
    if stage == "sft":
        cfg = sft.SFTConfig(data=str(data["chats"]), output_dir=out, max_length=384, **common)
        return sft.run(cfg)
    if stage == "dpo":
        cfg = dpo.DPOConfig(prefs=str(data["prefs"]), output_dir=out, max_length=384, **common)
        return dpo.run(cfg)
    if stage == "train-rm":
        cfg = train_rm.TrainRMConfig(
            prefs=str(data["prefs"]), output_dir=out, max_length=384, eval_fraction=0, **common
        )
        return train_rm.run(cfg)
    cfg = rl.RLConfig(
        prompts=str(PROMPTS),
        output_dir=out,
        reward="toy_rewards:brevity",
        num_generations=4,
        max_new_tokens=32,
        **{**common, "batch_size": 8},
    )
    return rl.run(cfg)


def run_plain_trl(stage: str, steps: int, work: Path, data: dict) -> dict:
    """What a user's own TRL script does with TRL's defaults."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model
    from rlaif.training.job import load_causal_lm

    path = resolve_model(EMBEDDED_ALIAS).path
    model, tokenizer = load_causal_lm(path)
    cpu = dict(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=4,
               use_cpu=True, bf16=False, report_to=[], save_strategy="no")  # fmt: skip
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = load_dataset("json", data_files=str(data["chats"]), split="train")
        trainer = SFTTrainer(
            model=model, args=SFTConfig(max_length=384, **cpu), train_dataset=ds,
            processing_class=tokenizer,
        )  # fmt: skip
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        ds = load_dataset("json", data_files=str(data["prefs"]), split="train")
        ref = AutoModelForCausalLM.from_pretrained(path)
        trainer = DPOTrainer(
            model=model, ref_model=ref, args=DPOConfig(max_length=384, **cpu), train_dataset=ds,
            processing_class=tokenizer,
        )  # fmt: skip
    elif stage == "train-rm":
        from trl import RewardConfig, RewardTrainer

        ds = load_dataset("json", data_files=str(data["prefs"]), split="train")
        rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        rm.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(
            model=rm, args=RewardConfig(max_length=384, **cpu), train_dataset=ds,
            processing_class=tokenizer,
        )  # fmt: skip
    else:
        import toy_rewards
        from trl import GRPOConfig, GRPOTrainer

        # the same chat-formatted prompts rlaif gives its trainer (it reads text as one user turn)
        ds = load_dataset("json", data_files=str(PROMPTS), split="train").map(
            lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]}
        )
        tokenizer.padding_side = "left"
        trainer = GRPOTrainer(
            model=model, reward_funcs=[toy_rewards.brevity], train_dataset=ds,
            args=GRPOConfig(num_generations=4, max_completion_length=32,
                            **{**cpu, "per_device_train_batch_size": 8}),
            processing_class=tokenizer,
        )  # fmt: skip
    result = trainer.train()
    return {
        "steps": trainer.state.global_step,
        "train_runtime_s": result.metrics["train_runtime"],
        "train_loss": result.training_loss,
    }


def one(stage: str, variant: str, steps: int) -> None:
    """Child process: one (stage, variant); prints one JSON line."""
    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    data = write_data(work)
    if variant == "plain TRL":
        metrics = run_plain_trl(stage, steps, work, data)
    else:
        metrics = run_rlaif(stage, variant, steps, work, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(
        json.dumps(
            {
                "s_per_step": metrics["train_runtime_s"] / metrics["steps"],
                "peak_rss_gib": peak,
                "loss": metrics.get("train_loss"),
                "precision": metrics.get("precision"),
            }
        )
    )


def _chat(record) -> list[dict]:
    return [*record.prompt, {"role": "assistant", "content": record.responses[0]}]


def _size(record) -> int:
    return len(json.dumps(record.prompt)) + sum(len(r) for r in record.responses)


def with_defaults(stage: str, steps: int, longest: int) -> None:
    """Child process: `stage` with its default settings on the 64 HH pairs (or only the
    `longest` of them: the worst batch any run on them can meet); prints one line."""
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records
    from rlaif.stages import dpo, rl, sft, train_rm

    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-defaults-"))
    out, given = str(work / "out"), dict(max_steps=steps, save_steps=10_000)
    records = parse_pair_records(str(HH), read_jsonl(str(HH))[0])
    prefs = str(HH)
    if longest:
        records = sorted(records, key=_size, reverse=True)[:longest]
        prefs = str(work / "longest.jsonl")
        Path(prefs).write_text(
            "".join(json.dumps({"prompt": r.prompt, "chosen": r.responses[0],
                                "rejected": r.responses[1]}) + "\n" for r in records)
        )  # fmt: skip
    if stage == "sft":
        chats = work / "chats.jsonl"
        chats.write_text("".join(json.dumps({"messages": _chat(r)}) + "\n" for r in records))
        manifest = sft.run(sft.SFTConfig(data=str(chats), output_dir=out, **given))
    elif stage == "dpo":
        manifest = dpo.run(dpo.DPOConfig(prefs=prefs, output_dir=out, **given))
    elif stage == "train-rm":
        manifest = train_rm.run(train_rm.TrainRMConfig(prefs=prefs, output_dir=out, **given))
    else:
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"messages": r.prompt}) + "\n" for r in records))
        manifest = rl.run(rl.RLConfig(prompts=str(prompts), output_dir=out, **given))
    metrics = manifest["metrics"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(json.dumps({"peak_rss_gib": peak, "s_per_step": metrics["train_runtime_s"] / steps}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--defaults", action="store_true")
    parser.add_argument("--longest", type=int, default=0, help="--defaults on the N longest pairs")
    parser.add_argument("--one", nargs=2, metavar=("STAGE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--one-default", metavar="STAGE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one, args.steps)
        return
    if args.one_default:
        with_defaults(args.one_default, args.steps, args.longest)
        return
    if args.defaults:
        print(f"defaults, 64 HH pairs, {args.steps} steps: {'stage':9s} {'s/step':>7s} peak RSS")
        for stage in args.stages.split(","):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--longest",
                    str(args.longest),
                    "--one-default",
                    stage,
                ],  # fmt: skip
                capture_output=True,
                text=True,
            )
            if done.returncode:
                print(f"{stage:9s} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{stage:9s} {r['s_per_step']:7.1f} {r['peak_rss_gib']:7.2f} GiB", flush=True)
        return
    print(f"{'stage':9s} {'variant':16s} {'s/step':>7s} {'peak RSS':>9s} {'loss':>7s}")
    for stage in args.stages.split(","):
        base = None
        for variant in VARIANTS:
            done = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--one", stage, variant],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                print(f"{stage:9s} {variant:16s} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or r["s_per_step"]
            loss = "n/a" if r["loss"] is None else f"{r['loss']:.4f}"
            print(
                f"{stage:9s} {variant:16s} {r['s_per_step']:7.1f} {r['peak_rss_gib']:7.2f} GiB"
                f" {loss:>7s}   ({base / r['s_per_step']:.2f}x the speed of rlaif before)",
                flush=True,
            )


if __name__ == "__main__":
    main()
