"""TRL's fused LM head on this CPU: TRL's own CPU path against rlaif's
(rlaif/training/fused_lm_head.py) and against plain full logits, side by side in one run.

    .venv/bin/python benchmarks/lm_head_cpu.py [--tokens 1536] [--repeats 3]

The embedded model's head (vocabulary 49,152 x hidden 576, random weights of its scale), the
given number of labelled tokens (1,536 = a batch of 4 x 384), bf16 autocast as training runs it,
outputs log-probs, entropy and top-1 (what TRL's SFT asks for). Prints seconds for forward +
backward (best of the repeats) and each gradient's relative error against float32 full logits.
"""

from __future__ import annotations

import argparse
import time

VOCAB, HIDDEN = 49152, 576


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import trl.kernels.chunked_logprob as kernel

    from rlaif.training.fused_lm_head import CPU_LOGPROB_TILE, fitted_to_cpu

    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, HIDDEN, requires_grad=True)
    weight = (torch.randn(VOCAB, HIDDEN) * 0.05).requires_grad_()
    targets = torch.randint(0, VOCAB, (args.tokens,))

    def grads(log_probs):
        log_probs.sum().backward()
        out = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        return out

    def full_logits(autocast: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = (hidden @ weight.t()).float()
            log_probs = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(1)
        return grads(log_probs)

    def fused(vocab_tile: int):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_probs = kernel.ChunkedLogProbFunction.apply(
                hidden, weight, None, targets, 1.0, vocab_tile, None, 1.0,
                ("log_probs", "entropy", "is_top1"),
            )[0]  # fmt: skip
        return grads(log_probs)

    truth = full_logits(autocast=False)
    trl_tokens = kernel.TOKEN_CHUNK_SIZE

    def trl_tiles():
        kernel.TOKEN_CHUNK_SIZE = trl_tokens
        return fused(32768)

    def rlaif_tiles():
        kernel.TOKEN_CHUNK_SIZE = CPU_LOGPROB_TILE[0]
        return fused(CPU_LOGPROB_TILE[1])

    rows = [
        ("plain full logits, bf16 autocast", lambda: full_logits(True)),
        ("TRL 1.16 CPU path, its tiles", trl_tiles),
        ("TRL 1.16 CPU path, rlaif's tiles", rlaif_tiles),
        ("rlaif (fitted_to_cpu)", None),
    ]
    print(f"{args.tokens} tokens x {VOCAB} vocabulary, forward + backward, bf16 autocast")
    print(f"{'':34s} {'seconds':>8s} {'error dh':>9s} {'error dW':>9s}")
    for name, run in rows:
        if run is None:
            fitted_to_cpu().__enter__()  # for the rest of the run
            run = lambda: fused(CPU_LOGPROB_TILE[1])  # noqa: E731
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
        errors = [((g - t).norm() / t.norm()).item() for g, t in zip(result, truth, strict=True)]
        print(f"{name:34s} {min(times):8.3f} {errors[0]:9.2e} {errors[1]:9.2e}", flush=True)


if __name__ == "__main__":
    main()
