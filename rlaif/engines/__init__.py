"""Engines behind one interface (see `base.Engine`); `make_engine` picks and builds one."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.engines.base import Chat, Completion, Engine, OptionScores, Sampling
from rlaif.errors import UserError

__all__ = [
    "Chat",
    "Completion",
    "Engine",
    "EngineSettings",
    "OptionScores",
    "Sampling",
    "make_engine",
]

ENGINE_CHOICES = ("auto", "vllm", "hf", "openai")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineSettings:
    engine: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096
    batch_size: int = 16  # transformers only; vLLM schedules its own batches
    trust_remote_code: bool = False
    # "auto": float32 on a CPU (see the engines for why), the model's own dtype on a GPU.
    dtype: str = "auto"
    # --engine openai: the server's API root (with /v1), where the model runs instead of here.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name, so no key lands in configs or logs
    max_concurrency: int = 8  # requests in flight; the server batches them
    request_timeout: float = 120.0  # seconds per request
    max_retries: int = 5  # on rate limits, server errors, timeouts and dropped connections

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}")
        if self.engine == "openai":
            from rlaif.engines.openai_engine import checked_base_url

            # Checked with the settings, before a stage starts its output, not when the
            # engine is first needed.
            checked_base_url(self.base_url)


def vllm_available() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


def resolve_engine_name(name: str) -> str:
    if name not in ENGINE_CHOICES:
        raise UserError(f"--engine {name}: choose one of {', '.join(ENGINE_CHOICES)}")
    if name == "auto":  # never "openai": that needs a server the user names
        return "vllm" if vllm_available() else "hf"
    if name == "vllm" and not vllm_available():
        raise UserError(
            "--engine vllm: vLLM is not installed; pip install 'rlaif-cli[vllm]' (GPU) or"
            " 'rlaif-cli[cpu]' (CPU), or use --engine hf"
        )
    return name


def make_engine(
    model_path: str, settings: EngineSettings, seed: int = 0, share: float = 1.0
) -> Engine:
    """Build the engine named in `settings` for a resolved model folder or hub id.

    `seed` seeds the engine as a whole (per-request seeds go with each call). `share` is the
    fraction of the accelerator this engine may take, for stages that hold two models at once.
    With `--engine openai` the model runs on the server at `settings.base_url` and `model_path`
    only names it (see `openai_engine`).
    """
    name = resolve_engine_name(settings.engine)
    if name == "openai":
        from rlaif.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model_path, settings)
    if name == "vllm":
        from rlaif.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, settings, seed, share)
    from rlaif.engines.hf_engine import HFEngine

    return HFEngine(model_path, settings)
