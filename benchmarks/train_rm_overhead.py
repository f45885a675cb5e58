"""`rlaif train-rm` against a plain TRL RewardTrainer script: same data, model and settings.

Both run as fresh processes, one after the other, in this one invocation; each reports TRL's
train_samples_per_second and its peak RSS. Prints one line per run and the ratios (rlaif / plain;
target: samples/s ratio >= 1.0, i.e. no overhead from our layer).

Usage: python benchmarks/train_rm_overhead.py [--pairs 64] [--steps 8] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "tests" / "data" / "hh-harmless-64.jsonl"

# The plain script: what a user would write with TRL alone (pad token set as TRL's docs advise).
PLAIN = r"""
import json, resource, sys
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

model_path, data_path, out, steps, batch, max_length = sys.argv[1:7]
rows = [json.loads(l) for l in open(data_path)]
tokenizer = AutoTokenizer.from_pretrained(model_path)
tokenizer.pad_token = tokenizer.unk_token
model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1,
                                                           dtype=torch.float32)
model.config.pad_token_id = tokenizer.pad_token_id
ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
args = RewardConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                    max_length=int(max_length), learning_rate=1e-5, bf16=False, use_cpu=True,
                    gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                    report_to=[], seed=0, data_seed=0)
result = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer).train()
print(json.dumps({"samples_per_s": result.metrics["train_samples_per_second"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model
    from rlaif.training.preference_data import preference_rows

    model = resolve_model(EMBEDDED_ALIAS).path
    rows = preference_rows(str(PAIRS), read_jsonl(str(PAIRS))[0])[: args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prefs.jsonl"  # one file, already in TRL's format, for both runs
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        common = [str(args.steps), str(args.batch_size), str(args.max_length)]
        plain = subprocess.run(
            [sys.executable, "-c", PLAIN, model, str(data), f"{tmp}/plain", *common],
            capture_output=True,
            text=True,
            check=True,
        )
        plain_result = json.loads(plain.stdout.strip().splitlines()[-1])
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rlaif",
                "train-rm",
                str(data),
                "-o",
                f"{tmp}/rm",
                "--label-mode",
                "hard",
                "--max-steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--eval-fraction",
                "0",
                "--save-steps",
                "100000",
                "--lr",
                "1e-5",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        ours = json.loads(Path(f"{tmp}/rm/metrics.json").read_text())
    print(
        f"{len(rows)} pairs, {args.steps} steps of {args.batch_size} pairs, max_length"
        f" {args.max_length}, CPU"
    )
    print(
        f"plain TRL RewardTrainer  {plain_result['samples_per_s']:7.3f} samples/s"
        f"  peak RSS {plain_result['peak_rss_mib']:7.0f} MiB"
    )
    print(
        f"rlaif train-rm           {ours['train_samples_per_second']:7.3f} samples/s"
        f"  peak RSS {ours['peak_rss_mib']:7.0f} MiB"
    )
    print(
        f"ratio samples/s (rlaif / plain): "
        f"{ours['train_samples_per_second'] / plain_result['samples_per_s']:.3f}   (target >= 1.0)"
    )
    print(
        f"ratio peak RSS  (rlaif / plain): "
        f"{ours['peak_rss_mib'] / plain_result['peak_rss_mib']:.3f}"
    )


if __name__ == "__main__":
    main()
