"""The memory settings of the training stages: their defaults, and the smaller log-prob tiles
rlaif gives TRL's fused LM head on CPU (same numbers as the plain full-logits computation).

The memory figures themselves are measured by benchmarks/training_step_times.py, not here."""

from __future__ import annotations

import pytest

from rlaif import dpo, rl, sft, train_rm
from rlaif.training import CPU_LOGPROB_TILE, bound_logprob_tiles, trainer_args


@pytest.mark.parametrize(
    "config",
    [
        lambda: sft.SFTConfig(data="x.jsonl", output_dir="o"),
        lambda: dpo.DPOConfig(prefs="x.jsonl", output_dir="o"),
        lambda: train_rm.TrainRMConfig(prefs="x.jsonl", output_dir="o"),
    ],
    ids=["sft", "dpo", "train-rm"],
)
def test_offline_stages_default_to_checkpointing_and_4_x_2_accumulated(config, tmp_path):
    from trl import SFTConfig

    cfg = config()
    assert cfg.gradient_checkpointing
    assert (cfg.batch_size, cfg.gradient_accumulation_steps) == (4, 2)  # 8 per update
    args = trainer_args(SFTConfig, cfg, tmp_path)
    assert args.gradient_checkpointing and args.per_device_train_batch_size == 4


def test_rl_defaults_to_checkpointing():
    assert rl.RLConfig(prompts="p.jsonl", output_dir="o").gradient_checkpointing


def _plain_log_probs(hidden, weight, labels):
    """log p(label) from the full (tokens, vocabulary) logits: what the tiles must reproduce."""
    import torch

    logits = hidden[:, :-1] @ weight.t()
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("tile", [CPU_LOGPROB_TILE, (7, 300)], ids=["rlaif", "tiny"])
def test_tiled_log_probs_and_gradients_equal_the_full_logits_computation(tile, monkeypatch):
    """TRL's fused head with rlaif's CPU tiles (and tiles small enough to split both the tokens
    and the vocabulary unevenly) gives the plain computation's log-probs and gradients."""
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", kernel.TOKEN_CHUNK_SIZE)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    bound_logprob_tiles(tile)
    assert (kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == tile

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).float()
    add_fused_lm_head(model)
    ids = torch.randint(0, 1000, (3, 25))
    labels = ids.masked_fill(torch.arange(25) < 6, -100)  # a prompt the loss ignores

    fused = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    fused.sum().backward()
    fused_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()

    hidden = model.model(input_ids=ids).last_hidden_state
    plain = _plain_log_probs(hidden, model.lm_head.weight, ids)
    plain = plain.masked_fill(labels[:, 1:] == -100, 0.0)
    plain.sum().backward()

    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, model.lm_head.weight.grad, rtol=1e-4, atol=1e-5)
