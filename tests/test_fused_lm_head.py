"""TRL's fused LM head as rlaif runs it on CPU (rlaif/training/fused_lm_head.py): smaller
tiles, leaner folds, bf16 gradient GEMMs under autocast, only labelled positions scored. It must
give what the plain full-logits computation gives: log-probs, entropy, top-1 and their gradients."""

from __future__ import annotations

import contextlib

import pytest

from rlaif.training.fused_lm_head import CPU_LOGPROB_TILE, fitted_to_cpu

VOCAB = 1000


@pytest.fixture
def cpu_head():
    """A function that enters fitted_to_cpu(tile) for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda tile=CPU_LOGPROB_TILE: stack.enter_context(fitted_to_cpu(tile))


def _tiny_model(temperature: float = 1.0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).float()
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy", "is_top1"))
    return model


def _batch():
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 25))
    ids[0, 10] = ids[0, 11] = 7  # a repeated token, so some labels are the top-1 guess
    labels = ids.masked_fill(torch.arange(25) < 6, -100)  # a prompt the loss ignores
    return ids, labels


def _plain(model, ids, labels, temperature: float):
    """Log-probs, entropy and top-1 from the full (tokens, vocabulary) logits."""
    import torch

    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    logits = (hidden @ model.lm_head.weight.t()).float() / temperature
    log_softmax = torch.log_softmax(logits, dim=-1)
    targets = ids[:, 1:]
    mask = labels[:, 1:] != -100
    log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1).masked_fill(~mask, 0)
    top1 = (logits.argmax(-1) == targets) & mask
    return log_probs, entropy, top1


@pytest.mark.parametrize(
    "tile,temperature",
    [(CPU_LOGPROB_TILE, 1.0), ((7, 300), 1.0), ((7, 300), 0.7)],
    ids=["rlaif-tiles", "tiny-tiles", "tiny-tiles-temperature"],
)
def test_fused_head_equals_the_full_logits_computation(cpu_head, tile, temperature):
    """Tiles small enough to split both the tokens and the vocabulary unevenly; a GRPO-like
    temperature; a loss on log-probs and entropy, so both gradients are exercised."""
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    cpu_head(tile)
    assert (kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == tile
    model = _tiny_model(temperature)
    ids, labels = _batch()

    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    (out.log_probs.sum() + 0.3 * out.entropy.sum()).backward()
    fused_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()

    log_probs, entropy, top1 = _plain(model, ids, labels, temperature)
    (log_probs.sum() + 0.3 * entropy.sum()).backward()

    torch.testing.assert_close(out.log_probs, log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.entropy, entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.is_top1.bool(), top1) and top1.any()
    torch.testing.assert_close(fused_grad, model.lm_head.weight.grad, rtol=1e-4, atol=1e-5)


def test_only_labelled_positions_are_scored(cpu_head, monkeypatch):
    """A prompt of 6 and no padding: 3 x (24 - 5) labelled positions go through the head, not
    all 3 x 24."""
    import trl.kernels.chunked_logprob as kernel

    cpu_head()
    rows = []
    fold = kernel._forward_tile
    monkeypatch.setattr(
        kernel, "_forward_tile", lambda tile, *a, **k: (rows.append(len(tile)), fold(tile, *a, **k))
    )
    ids, labels = _batch()
    _tiny_model()(input_ids=ids, labels=labels, fused_lm_head=True)
    assert rows == [3 * 19]


def test_bf16_gradients_are_as_close_to_float32_as_plain_autocast(cpu_head):
    """Under bf16 autocast the head's gradient GEMMs run in bf16: their error against the
    float32 computation is no larger than autocast's own full-logits Linear gives."""
    import torch

    cpu_head((7, 300))
    model = _tiny_model()
    ids, labels = _batch()

    def head_grad(fused: bool, autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                log_probs = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
            else:
                log_probs = _plain(model, ids, labels, 1.0)[0]
        log_probs.sum().backward()
        return model.lm_head.weight.grad.clone()

    truth = head_grad(fused=False, autocast=False)
    error = lambda g: ((g - truth).norm() / truth.norm()).item()  # noqa: E731
    fused, plain = error(head_grad(True, True)), error(head_grad(False, True))
    assert 0 < fused <= 1.1 * plain, (fused, plain)


@pytest.mark.parametrize("vocab_tile", [300, 4], ids=["one-tile", "tile-apart"])
def test_top1_is_the_first_maximum_as_argmax_reads_it(cpu_head, vocab_tile):
    """Tokens 3 and 5 tie for the largest logit: only 3 is the top-1 guess (argmax's first
    maximum), whether the two share a vocabulary tile or not."""
    import torch
    import trl.kernels.chunked_logprob as kernel

    cpu_head((7, vocab_tile))
    hidden, weight = torch.ones(2, 4), torch.zeros(10, 4)
    weight[3] = weight[5] = 1.0
    targets = torch.tensor([5, 3])
    is_top1 = kernel.ChunkedLogProbFunction.apply(
        hidden, weight, None, targets, 1.0, vocab_tile, None, 1.0, ("log_probs", "is_top1")
    )[4]
    assert is_top1.tolist() == [False, True]
    assert (hidden @ weight.t()).argmax(-1).tolist() == [3, 3]
