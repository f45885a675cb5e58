"""The Python half of benchmarks/gpu_smoke.sh: check a command line, write the pairs, summarise.

python benchmarks/gpu_smoke.py check label pairs.jsonl -o prefs.jsonl ...
    Parses an `rlaif` command line exactly as `rlaif` would (click's parser on the real typer
    app: options, their types and choices) and builds the stage's Config from it (its
    `__post_init__` checks the values), without running anything. Exit 0, or 2 with rlaif's
    one-line error.
python benchmarks/gpu_smoke.py pairs OUT.jsonl [N]
    N distinct preference pairs (default 200) from the dev pairs in tests/data.
python benchmarks/gpu_smoke.py summary WORK
    The summary table from the manifests and metrics under WORK and WORK/times.tsv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEV_PAIRS = [
    REPO / "tests" / "data" / "hh-harmless-64.jsonl",
    REPO / "tests" / "data" / "xstest-dev.jsonl",
]

# The Config behind each stage command (as registered in rlaif/cli.py), "module:class".
STAGE_CONFIGS = {
    ("generate",): "rlaif.stages.generate:GenerateConfig",
    ("sample",): "rlaif.stages.sample:SampleConfig",
    ("label",): "rlaif.stages.label:LabelConfig",
    ("merge",): "rlaif.stages.merge:MergeConfig",
    ("train-rm",): "rlaif.stages.train_rm:TrainRMConfig",
    ("sft",): "rlaif.stages.sft:SFTConfig",
    ("dpo",): "rlaif.stages.dpo:DPOConfig",
    ("rl",): "rlaif.stages.rl:RLConfig",
    ("score",): "rlaif.stages.score:ScoreConfig",
    ("eval", "rm"): "rlaif.stages.score:EvalRMConfig",
    ("eval", "winrate"): "rlaif.stages.eval_winrate:WinrateConfig",
}

# Dense bf16 tensor-core TFLOP/s (no sparsity) from the vendors' data sheets, matched in this
# order against nvidia-smi's GPU name; GPU_BF16_TFLOPS overrides.
BF16_TFLOPS = [
    ("H100 PCIe", 756),
    ("H100 NVL", 835),
    ("H200", 989),  # also GH200
    ("H100", 989),  # SXM
    ("B200", 2250),
    ("A100", 312),
    ("L40S", 362),
    ("L40", 181),
    ("L4", 121),
    ("A10G", 70),
    ("A10", 125),
    ("RTX 4090", 165),
]


def check(args: list[str]) -> int:
    """0 when `rlaif ARGS` parses and makes a valid Config; else rlaif's one-line error, 2."""
    import importlib

    import typer
    from typer.core import TyperGroup

    from rlaif.cli import app
    from rlaif.plumbing.config import merged_params
    from rlaif.plumbing.errors import UserError
    from rlaif.plumbing.internals import click_errors
    from rlaif.plumbing.options import build_config

    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while isinstance(command, TyperGroup):
        if not rest or rest[0].startswith("-"):
            return _fail(f"`rlaif {' '.join(path)}` needs a command name")
        sub = command.get_command(typer.Context(command), rest[0])
        if sub is None:
            return _fail(f"no such command: rlaif {' '.join([*path, rest[0]])}")
        path.append(rest.pop(0))
        command = sub
    if tuple(path) not in STAGE_CONFIGS:
        return _fail(f"rlaif {' '.join(path)}: not a stage command this checker knows")
    module, cls = STAGE_CONFIGS[tuple(path)].split(":")
    config_cls = getattr(importlib.import_module(module), cls)
    try:
        ctx = command.make_context("rlaif " + " ".join(path), rest)
        build_config(config_cls, merged_params(ctx))
    except click_errors().ClickException as e:
        return _fail(f"rlaif {' '.join(path)}: {e.format_message()}")
    except UserError as e:
        return _fail(f"rlaif {' '.join(path)}: {e}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def write_pairs(out: str, n: int) -> None:
    """`n` pairs, none repeated: the 182 dev pairs, then XSTest prompts whose rejected answer
    is taken from the XSTest row 59 further on (a new, distinct pair each). Repeating a pair
    would be served from vLLM's prefix cache and overstate the throughput."""
    rows = []
    for path in DEV_PAIRS:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    xstest = [r for r in rows if "prompt" in r and isinstance(r.get("chosen"), str)]
    extra = 0
    while len(rows) < n:
        a, b = xstest[extra % len(xstest)], xstest[(extra + 59) % len(xstest)]
        rows.append(
            {
                "id": f"{a['id']}-mix{extra}",
                "prompt": a["prompt"],
                "chosen": a["chosen"],
                "rejected": b["rejected"],
            }
        )
        extra += 1
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    # Read back with rlaif's own parser: n valid pairs, ids and contents all distinct.
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records

    records = parse_pair_records(out, read_jsonl(out)[0])
    contents = {(json.dumps(r.prompt), *r.responses) for r in records}
    if len(records) != n or len(contents) != n or any(r.identical for r in records):
        raise SystemExit(f"error: {out}: expected {n} distinct pairs")


def gpu_bf16_tflops(name: str) -> float | None:
    import os

    if os.environ.get("GPU_BF16_TFLOPS"):
        return float(os.environ["GPU_BF16_TFLOPS"])
    return next((t for key, t in BF16_TFLOPS if key in name), None)


def non_embedding_parameters(model_path: str) -> int:
    """Parameters that do work for every token (the input embedding is a lookup), counted on
    the meta device: no weights are loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def summary(work: str) -> None:
    work_dir = Path(work)
    times = {}
    for line in (work_dir / "times.tsv").read_text().splitlines():
        stage, seconds, gpu_mib = line.split("\t")
        times[stage] = (float(seconds), gpu_mib)
    gpu = (work_dir / "gpu-name.txt").read_text().strip() or "unknown GPU"
    rows = [("stage", "seconds", "work", "throughput", "peak GPU mem", "peak host RSS")]

    label = json.loads((work_dir / "prefs.jsonl.manifest.json").read_text())
    tokens = label["tokens"].get("judge_prompt_tokens", 0)
    rate = tokens / label["wall_time_s"]
    params = non_embedding_parameters(label["models"]["judge"]["path"])
    tflops = gpu_bf16_tflops(gpu)
    limit = tflops * 1e12 / (2 * params) if tflops else None
    share = f" = {rate / limit:.2%} of {limit:,.0f}" if limit else " (limit unknown)"
    seconds, gpu_mib = times["label"]
    rows.append(
        (
            "label (vLLM)",
            f"{seconds:.0f}",
            f"{label['counts']['records']} pairs, {tokens:,} prompt tokens",
            f"{rate:,.0f} tok/s{share}",
            f"{gpu_mib} MiB",
            "",
        )
    )
    for stage, folder in (("train-rm", "rm"), ("grpo (--use-vllm)", "policy"), ("dpo", "dpo")):
        metrics_path = work_dir / folder / "metrics.json"
        seconds, gpu_mib = times[stage]
        if not metrics_path.exists():
            rows.append((stage, f"{seconds:.0f}", "failed", "", f"{gpu_mib} MiB", ""))
            continue
        m = json.loads(metrics_path.read_text())
        per_step = (m.get("train_runtime_s") or 0) / max(m["steps"], 1)
        rss = m.get("peak_rss_mib")
        rows.append(
            (
                stage,
                f"{seconds:.0f}",
                f"{m['steps']} steps",
                f"{per_step:.2f} s/step",
                f"{gpu_mib} MiB",
                f"{rss:,.0f} MiB" if rss else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(
        f"\n{gpu}: bf16 {tflops or '?'} TFLOP/s dense; judge {params / 1e6:.0f} M non-embedding"
        " parameters; tokens/s limit = TFLOP/s / (2 x parameters)"
    )
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    print(
        "seconds: wall time of the command (model load included; label's tok/s uses its"
        " manifest's wall_time_s, start-up included). peak GPU mem: nvidia-smi memory.used,"
        " whole device, sampled every 0.5 s. s/step: the Trainer's train_runtime / steps."
    )


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("check", "pairs", "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    what, args = sys.argv[1], sys.argv[2:]
    if what == "check":
        return check(args)
    if what == "pairs":
        write_pairs(args[0], int(args[1]) if len(args) > 1 else 200)
    else:
        summary(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
