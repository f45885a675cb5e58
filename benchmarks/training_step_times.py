"""Wall time per optimiser step of each training stage on the embedded model, side by side.

    .venv/bin/python benchmarks/training_step_times.py [--steps 4]

Same data sizes for every stage where they compare: SFT on 16 HH-RLHF conversations (prompt +
chosen answer), DPO on the same 16 pairs, RL on 8 short prompts with a brevity reward (so the
reward is cheap and the time is the trainer's: generation + update). Batch 4 pairs or
conversations, 8 completions (groups of 4) for GRPO/RLOO, 4 prompts for online DPO, max length
384, completions ≤ 32 tokens. Step time = the Trainer's train_runtime / steps (model loading
excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # toy_rewards


def hh_rows(n: int) -> list[dict]:
    from rlaif.files import read_jsonl
    from rlaif.pairs import parse_pair_records

    path = str(REPO / "tests" / "data" / "hh-harmless-64.jsonl")
    rows, _ = read_jsonl(path)
    return parse_pair_records(path, rows)[:n]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    steps = parser.parse_args().steps

    from rlaif import dpo, rl, sft

    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    records = hh_rows(16)
    chats = work / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps({"messages": [*r.prompt, {"role": "assistant", "content": r.responses[0]}]})
            + "\n"
            for r in records
        )
    )
    pairs = REPO / "tests" / "data" / "hh-harmless-64.jsonl"
    prompts = REPO / "tests" / "data" / "short-prompts.jsonl"
    common = dict(max_steps=steps, save_steps=10_000, max_length=384)
    runs = {
        "sft": lambda: sft.run(
            sft.SFTConfig(data=str(chats), output_dir=str(work / "sft"), batch_size=4, **common)
        ),
        "dpo": lambda: dpo.run(
            dpo.DPOConfig(prefs=str(pairs), output_dir=str(work / "dpo"), batch_size=4, **common)
        ),
    }
    for algo, batch in (("grpo", 8), ("rloo", 8), ("online-dpo", 4)):
        runs[algo] = lambda algo=algo, batch=batch: rl.run(
            rl.RLConfig(
                prompts=str(prompts),
                output_dir=str(work / algo),
                algo=algo,
                reward="toy_rewards:brevity",
                batch_size=batch,
                num_generations=4,
                max_new_tokens=32,
                **common,
            )
        )
    results = {}
    for name, run in runs.items():
        manifest = run()
        metrics = manifest["metrics"]
        results[name] = metrics["train_runtime_s"] / metrics["steps"]
        print(
            f"{name:11s} {results[name]:6.1f} s/step  ({metrics['steps']} steps,"
            f" process peak RSS so far {metrics['peak_rss_mib']:.0f} MiB)",
            flush=True,
        )
    base = results["sft"]
    print("relative to sft: " + ", ".join(f"{k} {v / base:.2f}x" for k, v in results.items()))


if __name__ == "__main__":
    main()
