"""Judge throughput of `rlaif label`, measured side by side in one run.

  (a) rlaif label, default method (option probabilities, both orders), on vLLM
  (b) the same on transformers
  (c) generate-and-parse judging on the same vLLM engine (the approach of earlier TRL judges,
      distilabel and the HF constitutional-ai recipe): a short generated verdict per order
  (a') (a) with --dtype bfloat16 (the CPU default is float32; see rlaif/engines/vllm_engine.py)
  (d) the compute limit: tokens/s implied by a bf16 matrix-multiply rate measured here, divided
      by 2 × the judge's non-embedding parameters

Prints one line per measurement, then the ratios. Targets: (a) ≥ 5× (c) in pairs/s, and
(a) ≥ 60% of (d) in tokens/s.

Usage: python benchmarks/label_throughput.py [PAIRS.jsonl] [--pairs 100] [--verdict-tokens 64]
           [--model qwen2.5-coder-1.5b-instruct --only-vllm]

`--model`: another judge (an alias or a folder); the issue's target for the 1.5B judge is
(a) >= 50% of (d). `--only-vllm`: measure (a) and (d) alone; with a 1.5B judge the
transformers and generate-and-parse baselines take many minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
FALLBACK_PAIRS = REPO / "tests" / "data" / "hh-harmless-64.jsonl"


def matmul_rate(dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n×n matrix multiply in `dtype`, best of `repeats`."""
    import torch

    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def non_embedding_parameters(model_path: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def measure(name: str, engine, records, cfg, constitution) -> dict:
    from rlaif.judging.judge import judge_chunk
    from rlaif.plumbing.progress import TokenCounter

    counter = TokenCounter()
    judge_chunk(records[:4], engine, cfg, 0, constitution, TokenCounter())
    start = time.perf_counter()
    judge_chunk(records, engine, cfg, 0, constitution, counter)
    seconds = time.perf_counter() - start
    tokens = counter.tokens["judge_prompt_tokens"] + counter.tokens["judge_completion_tokens"]
    result = {
        "name": name,
        "seconds": seconds,
        "pairs_per_s": len(records) / seconds,
        "tokens_per_s": tokens / seconds,
        "tokens": tokens,
    }
    print(
        f"{name:<44} {len(records)} pairs in {seconds:7.2f} s  "
        f"{result['pairs_per_s']:7.2f} pairs/s  {result['tokens_per_s']:9.0f} tokens/s"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pairs", nargs="?", default=str(DEFAULT_PAIRS if DEFAULT_PAIRS.exists() else FALLBACK_PAIRS)
    )
    parser.add_argument("--pairs", dest="n_pairs", type=int, default=100)
    parser.add_argument("--verdict-tokens", type=int, default=64)
    parser.add_argument("--model", default=None, help="the judge (default: the embedded model)")
    parser.add_argument("--only-vllm", action="store_true", help="only (a) and (d)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the measurement lines readable

    import torch

    from rlaif.engines import EngineSettings, make_engine
    from rlaif.judging.constitution import load_constitution, resolve_constitution_path
    from rlaif.judging.judge import JudgingSettings
    from rlaif.plumbing.files import read_jsonl
    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model
    from rlaif.plumbing.pairs import parse_pair_records

    rows, _ = read_jsonl(args.pairs)
    records = parse_pair_records(args.pairs, rows)[: args.n_pairs]
    constitution = load_constitution(resolve_constitution_path("harmless"))
    judge = args.model or EMBEDDED_ALIAS
    model = resolve_model(judge).path
    print(
        f"{len(records)} pairs from {args.pairs}; judge {judge}; "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )

    # Measured before vLLM starts: its CPU worker pins threads afterwards.
    bf16 = matmul_rate(torch.bfloat16)
    fp32 = matmul_rate(torch.float32)
    params = non_embedding_parameters(model)
    limit = bf16 / (2 * params)
    print(
        f"{'(d) compute limit (bf16 matmul)':<44} {bf16 / 1e9:7.1f} GFLOP/s"
        f" / (2 × {params / 1e6:.1f} M params) = {limit:9.0f} tokens/s"
        f"   (fp32 matmul: {fp32 / 1e9:.1f} GFLOP/s"
        f" = {fp32 / (2 * params):.0f} tokens/s)"
    )

    probabilities = JudgingSettings()
    if args.only_vllm:
        vllm = make_engine(model, EngineSettings(engine="vllm"))
        a = measure("(a) rlaif label on vLLM", vllm, records, probabilities, constitution)
        vllm.close()
        print(f"ratio (a)/(d) tokens/s:       {a['tokens_per_s'] / limit:6.2%}")
        return
    generate_verdict = JudgingSettings(method="generate", max_new_tokens=args.verdict_tokens)
    hf = make_engine(model, EngineSettings(engine="hf"))
    b = measure("(b) rlaif label on transformers", hf, records, probabilities, constitution)
    hf.close()
    vllm = make_engine(model, EngineSettings(engine="vllm"))
    a = measure("(a) rlaif label on vLLM", vllm, records, probabilities, constitution)
    c = measure(
        f"(c) generate-and-parse on vLLM ({args.verdict_tokens} tok)",
        vllm,
        records,
        generate_verdict,
        constitution,
    )

    vllm.close()
    vllm_bf16 = make_engine(model, EngineSettings(engine="vllm", dtype="bfloat16"))
    a16 = measure(
        "(a') rlaif label on vLLM, --dtype bfloat16",
        vllm_bf16,
        records,
        probabilities,
        constitution,
    )

    print(
        f"ratio (a)/(c) pairs/s:        {a['pairs_per_s'] / c['pairs_per_s']:6.2f}   (target >= 5)"
    )
    print(f"ratio (a)/(b) pairs/s:        {a['pairs_per_s'] / b['pairs_per_s']:6.2f}")
    print(f"ratio (a)/(d) tokens/s:       {a['tokens_per_s'] / limit:6.2%}   (target >= 60%)")
    print(f"ratio (a')/(d) tokens/s:      {a16['tokens_per_s'] / limit:6.2%}")
    print(f"ratio (a')/(c) pairs/s:       {a16['pairs_per_s'] / c['pairs_per_s']:6.2f}")


if __name__ == "__main__":
    main()
