"""Does bf16 scoring change `rlaif label`'s labels? float32 and bfloat16, side by side in one run.

For each engine (vLLM, transformers), the dev pairs (tests/data/hh-harmless-64.jsonl and
tests/data/xstest-dev.jsonl: 182 pairs) are labelled with the default judging (option
probabilities, both orders, one principle per pair, seed 0) once with the weights in float32 and
once in bfloat16, the same principles and prompts. Printed per engine:

- pairs/s and judge prompt tokens/s for each dtype;
- max, mean and 95th percentile of |p_bf16 - p_fp32| (p: the pair's label, first preferred);
- flipped verdicts: pairs whose side of 0.5 differs, and the largest |p_fp32 - 0.5| among
  them (a flip of a near-tie is noise; a flip of a confident verdict is not);
- agreement with the human labels of the HH pairs in each dtype;
- with both engines: |p_hf_fp32 - p_vllm_fp32|, the difference between engines that the
  project already treats as "the same labels".

Usage: python benchmarks/label_dtype.py [--engines vllm,hf] [--pairs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = [REPO / "tests" / "data" / name for name in ("hh-harmless-64.jsonl", "xstest-dev.jsonl")]


def dev_pairs(limit: int | None):
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.pairs import parse_pair_records

    records = []
    for path in DATA:
        rows, _ = read_jsonl(str(path))
        records += parse_pair_records(str(path), rows)
    records = [r for r in records if not r.identical]
    return records[:limit] if limit else records


def label(engine_name: str, dtype: str, records, constitution) -> dict:
    """p per pair id, pairs/s and prompt tokens/s of one (engine, dtype)."""
    from rlaif.engines import EngineSettings, make_engine
    from rlaif.judging.judge import JudgingSettings, judge_chunk
    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model
    from rlaif.plumbing.progress import TokenCounter

    settings = EngineSettings(engine=engine_name, dtype=dtype, max_model_len=4096)
    engine = make_engine(resolve_model(EMBEDDED_ALIAS).path, settings, seed=0)
    cfg = JudgingSettings()
    try:
        judge_chunk(records[:4], engine, cfg, 0, constitution, TokenCounter())
        counter = TokenCounter()
        start = time.perf_counter()
        rows = judge_chunk(records, engine, cfg, 0, constitution, counter)
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    tokens = counter.tokens["judge_prompt_tokens"]
    result = {
        "engine": engine_name,
        "dtype": dtype,
        "seconds": seconds,
        "pairs_per_s": len(records) / seconds,
        "tokens_per_s": tokens / seconds,
        "p": {row["id"]: row["p"] for row in rows},
        "reference": {row["id"]: row["reference"] for row in rows},
    }
    print(
        f"{engine_name:>5} {dtype:<9} {len(records)} pairs in {seconds:7.1f} s"
        f"  {result['pairs_per_s']:6.2f} pairs/s  {result['tokens_per_s']:7.0f} prompt tokens/s",
        flush=True,
    )
    return result


def compare(a: dict, b: dict) -> dict:
    """How far b's labels are from a's (the float32 reference)."""
    ids = sorted(a["p"])
    diffs = sorted(abs(b["p"][i] - a["p"][i]) for i in ids)
    flipped = [i for i in ids if (a["p"][i] >= 0.5) != (b["p"][i] >= 0.5)]
    return {
        "max_abs_dp": diffs[-1],
        "mean_abs_dp": statistics.fmean(diffs),
        "p95_abs_dp": diffs[int(0.95 * (len(diffs) - 1))],
        "flipped": len(flipped),
        "flipped_share": len(flipped) / len(ids),
        "flipped_max_margin": max((abs(a["p"][i] - 0.5) for i in flipped), default=0.0),
        "flipped_ids": flipped,
    }


def agreement(result: dict) -> str:
    """Share of HH pairs where the label sides with the human preference (reference)."""
    # "reference" is the input's own preference: 0 when the first response was chosen.
    hits = [
        (p >= 0.5) == (result["reference"][i] == 0)
        for i, p in result["p"].items()
        if result["reference"][i] is not None
    ]
    return f"{sum(hits)}/{len(hits)}" if hits else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--pairs", type=int, default=None, help="first N dev pairs (default all)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    import torch

    from rlaif.judging.constitution import load_constitution, resolve_constitution_path
    from rlaif.plumbing.hardware import cpu_has_bf16

    records = dev_pairs(args.pairs)
    constitution = load_constitution(resolve_constitution_path("harmless"))
    print(
        f"{len(records)} dev pairs; judge: embedded model; {os.cpu_count()} CPUs, torch threads"
        f" {torch.get_num_threads()}; CPU bf16 arithmetic: {cpu_has_bf16()}",
        flush=True,
    )
    results = {}
    for engine in args.engines.split(","):
        for dtype in ("float32", "bfloat16"):
            results[engine, dtype] = label(engine, dtype, records, constitution)

    summary = {"pairs": len(records), "engines": {}}
    print()
    for engine in args.engines.split(","):
        fp32, bf16 = results[engine, "float32"], results[engine, "bfloat16"]
        c = compare(fp32, bf16)
        speedup = bf16["pairs_per_s"] / fp32["pairs_per_s"]
        print(
            f"{engine}: bf16 vs fp32  |dp| max {c['max_abs_dp']:.4f}  mean {c['mean_abs_dp']:.4f}"
            f"  p95 {c['p95_abs_dp']:.4f}  flipped {c['flipped']}/{len(records)}"
            f" ({c['flipped_share']:.1%}), largest fp32 margin |p-0.5| among flips"
            f" {c['flipped_max_margin']:.4f}  speed-up {speedup:.2f}x"
            f"  agreement with HH humans fp32 {agreement(fp32)} bf16 {agreement(bf16)}"
        )
        rates = {
            f"{d}_{unit}": results[engine, d][unit]
            for d in ("float32", "bfloat16")
            for unit in ("pairs_per_s", "tokens_per_s")
        }
        summary["engines"][engine] = {**c, "speedup": speedup, **rates}
    engines = args.engines.split(",")
    if len(engines) > 1:
        c = compare(results[engines[0], "float32"], results[engines[1], "float32"])
        print(
            f"{engines[1]} fp32 vs {engines[0]} fp32 (between engines): |dp| max"
            f" {c['max_abs_dp']:.6f}  mean {c['mean_abs_dp']:.6f}  flipped {c['flipped']}"
        )
        summary["between_engines_fp32"] = c
        c = compare(results[engines[0], "bfloat16"], results[engines[1], "bfloat16"])
        print(
            f"{engines[1]} bf16 vs {engines[0]} bf16 (between engines): |dp| max"
            f" {c['max_abs_dp']:.6f}  mean {c['mean_abs_dp']:.6f}  flipped {c['flipped']}"
        )
        summary["between_engines_bf16"] = c
    summary["p"] = {f"{e} {d}": r["p"] for (e, d), r in results.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
