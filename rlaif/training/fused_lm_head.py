"""TRL's fused LM head, made fit for CPUs.

TRL 1.16's SFT, DPO, GRPO and RLOO trainers score label tokens with `add_fused_lm_head`: the
(tokens, vocabulary) logits are folded tile by tile into log-probs (and entropy, top-1), never
materialised. On GPUs a Triton kernel does the folding. On CPUs TRL folds each tile with whole-
tile torch ops, and there that path was the slowest part of a training step: 2.3-3.0 s for the
forward and backward of 1,536 tokens with bf16 autocast, where full logits take 0.84 s and
rlaif's path 0.74 s (benchmarks/lm_head_cpu.py). Four changes, all to TRL 1.16 internals that
no option reaches (applied by `plumbing.internals.cpu_fused_lm_head`):

1. Tiles of 1,024 tokens x 8,192 vocabulary entries (`TOKEN_CHUNK_SIZE`,
   `_CHUNKED_LOGPROB_CHUNK_SIZE`): every whole-tile op makes a float32 copy of its tile, which at
   TRL's 4,096 x 32,768 was 512 MiB each, 1.3 GiB in the forward and 2.8 GiB in the backward.
2. Leaner folds (`_forward_tile`, `_backward_tile`): the same arithmetic with in-place ops and
   without TRL's multiplications by 1 (logit scale, temperature) over every tile; the top-1 flag
   scans only the tile that holds each label. Soft-capped models keep TRL's folds.
3. Under bf16 autocast, the two gradient GEMMs (`_addmm_fp32`) run in bf16 like every other
   Linear's backward under autocast. TRL upcasts both operands to float32 on CPU, because
   `addmm(out_dtype=float32)` exists only on CUDA: 1 s of float32 GEMMs per step. Measured
   against float32 truth, the gradients' relative error is the plain autocast Linear's
   (2.3e-3 for the hidden states, 2.0e-3 vs 2.1e-3 for the head's weight).
4. Only positions with a label are scored, as TRL does where Triton runs. TRL scores every
   position elsewhere to keep tile shapes fixed for compilers (Neuron); eager CPU has none, and
   prompt and padding positions are most of a DPO or GRPO batch.
"""

from __future__ import annotations

import math

from rlaif.plumbing import internals

CPU_LOGPROB_TILE = (1024, 8192)  # (tokens, vocabulary entries)


def fitted_to_cpu(tile: tuple[int, int] = CPU_LOGPROB_TILE):
    """A context manager: the four changes above for the block, where the fused head runs
    without Triton; what they replaced is put back at its end."""
    return internals.cpu_fused_lm_head(
        tile, _lean_forward_tile, _lean_backward_tile, _autocast_addmm
    )


def _lean_forward_tile(trl_fold):
    """TRL's `_forward_tile` (online log-sum-exp over vocabulary tiles), lean."""
    import torch

    def fold(
        tile, tile_stride, targets, running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum,
        max_before_target, target_logit, vocab_start, n_cols, logit_scale, softcap, inv_t,
        HAS_SOFTCAP, HAS_ENTROPY, HAS_LOG_SUM_SQ_PROBS, HAS_MEAN_LOGITS, HAS_IS_TOP1, BLOCK_SIZE,
    ):  # fmt: skip
        if HAS_SOFTCAP:
            return trl_fold(
                tile, tile_stride, targets, running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum,
                max_before_target, target_logit, vocab_start, n_cols, logit_scale, softcap,
                inv_t, HAS_SOFTCAP, HAS_ENTROPY, HAS_LOG_SUM_SQ_PROBS, HAS_MEAN_LOGITS,
                HAS_IS_TOP1, BLOCK_SIZE,
            )  # fmt: skip
        z = tile.float()  # a copy of a bf16 tile, the tile itself in float32: scratch either way
        if logit_scale * inv_t != 1.0:
            z.mul_(logit_scale * inv_t)
        local = targets - vocab_start
        tile_max = z.amax(-1)
        if HAS_MEAN_LOGITS:
            z_sum += z.sum(-1)
        if HAS_IS_TOP1:
            # The largest logit before the label's index: the whole tile where the label comes
            # after it, a prefix of the tile in the rows whose label is inside it.
            after = local >= n_cols
            max_before_target.copy_(
                torch.where(after, torch.maximum(max_before_target, tile_max), max_before_target)
            )
            rows = ((local > 0) & (local < n_cols)).nonzero().squeeze(1)
            if rows.numel():
                before = torch.arange(n_cols, device=z.device) < local[rows].unsqueeze(-1)
                prefix_max = z[rows].masked_fill_(~before, -math.inf).amax(-1)
                max_before_target[rows] = torch.maximum(max_before_target[rows], prefix_max)
        new_max = torch.maximum(running_max, tile_max)
        rescale = torch.exp(running_max - new_max)
        in_tile = (local >= 0) & (local < n_cols)
        target_z = z.gather(-1, local.clamp(0, n_cols - 1).unsqueeze(-1)).squeeze(-1)
        target_logit.copy_(torch.where(in_tile, target_z, target_logit))
        e = z.sub(new_max.unsqueeze(-1)).exp_()
        sum_exp.mul_(rescale).add_(e.sum(-1))
        if HAS_ENTROPY:
            x_sum_exp.mul_(rescale).add_((e * z).sum(-1))
        if HAS_LOG_SUM_SQ_PROBS:
            sq_sum_exp.mul_(rescale * rescale).add_((e * e).sum(-1))
        running_max.copy_(new_max)

    fold.rlaif = True
    return fold


def _lean_backward_tile(trl_fold):
    """TRL's `_backward_tile` (the tile becomes the logits' gradient in place), lean."""

    def fold(
        tile, tile_stride, targets, log_z, entropy, grad_logprobs, grad_entropy, vocab_start,
        n_cols, logit_scale, softcap, inv_t, HAS_SOFTCAP, HAS_LOGPROB_GRAD, HAS_ENTROPY_GRAD,
        BLOCK_SIZE,
    ):  # fmt: skip
        if HAS_SOFTCAP:
            return trl_fold(
                tile, tile_stride, targets, log_z, entropy, grad_logprobs, grad_entropy,
                vocab_start, n_cols, logit_scale, softcap, inv_t, HAS_SOFTCAP, HAS_LOGPROB_GRAD,
                HAS_ENTROPY_GRAD, BLOCK_SIZE,
            )  # fmt: skip
        scale = logit_scale * inv_t
        log_p = tile.float()
        if scale != 1.0:
            log_p.mul_(scale)
        log_p.sub_(log_z.unsqueeze(-1))
        p = log_p.exp()
        if HAS_ENTROPY_GRAD:
            # d(entropy)/dz_j = -p_j (log p_j + entropy), built in log_p's buffer
            grad = log_p.add_(entropy.unsqueeze(-1)).mul_(p).mul_(-grad_entropy.unsqueeze(-1))
            if HAS_LOGPROB_GRAD:
                grad.sub_(p.mul_(grad_logprobs.unsqueeze(-1)))
        elif HAS_LOGPROB_GRAD:
            grad = p.mul_(-grad_logprobs.unsqueeze(-1))
        else:
            grad = p.zero_()
        if HAS_LOGPROB_GRAD:
            # d(log p_target)/dz_j = 1[j = target] - p_j: the 1 only where the label is here
            local = targets - vocab_start
            rows = ((local >= 0) & (local < n_cols)).nonzero().squeeze(1)
            grad[rows, local[rows]] += grad_logprobs[rows]
        if scale != 1.0:
            grad.mul_(scale)
        tile.copy_(grad)

    fold.rlaif = True
    return fold


def _autocast_addmm(trl_addmm):
    """`acc += a @ b`: for bf16 operands on CPU a bf16 GEMM (float32 accumulation inside it,
    the product rounded once), as autocast's own Linear backward does."""
    import torch

    def addmm(acc, a, b):
        if acc.device.type == "cpu" and a.dtype == torch.bfloat16:
            acc.add_(a @ b)
        else:
            trl_addmm(acc, a, b)

    return addmm
