"""Engines behind one interface (see `base.Engine`); `make_engine` picks and builds one."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.engines.base import Chat, Completion, Engine, OptionScores, Sampling
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.options import option

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
USES = ("generate", "score")  # what an engine is asked to do; --dtype auto resolves per use


@dataclass(frozen=True)
class EngineSettings:
    """Where and how a model runs: the options of every stage that generates or judges."""

    engine: str = option(
        "auto",
        help="Inference engine: auto (vLLM if installed), vllm, hf, or openai (a server at"
        " --base-url).",
    )
    tensor_parallel_size: int = option(1, help="vLLM: GPUs to shard each model over.")
    gpu_memory_utilization: float = option(
        0.85, help="vLLM: fraction of GPU memory to use (split when two models)."
    )
    max_model_len: int = option(4096, help="vLLM: longest prompt + answer in tokens.")
    # transformers only; vLLM schedules its own batches
    batch_size: int = option(16, help="transformers engine: sequences per batch.")
    trust_remote_code: bool = option(
        False, help="Run model code from the hub (off: safer).", flags=("--trust-remote-code",)
    )
    # "auto": see resolved_dtype (per use: generation and scoring may differ on a CPU).
    dtype: str = option(
        "auto",
        help="Weights' dtype: auto (on a CPU: float32 to generate, bfloat16 to score where the"
        " CPU has bf16 arithmetic, else float32; on a GPU: the engine's choice), float32,"
        " bfloat16 or float16.",
    )
    # --engine openai: the server's API root (with /v1), where the model runs instead of here.
    # Several: one engine over a fleet of servers of one model (see engines/fleet.py).
    base_url: list[str] | None = option(
        None,
        help="openai engine: the server's API root, e.g. http://127.0.0.1:8000/v1; give it once"
        " per server of the same model, or a file listing one URL per line.",
    )
    # the variable's name, so no key lands in configs or logs
    api_key_env: str = option(
        "OPENAI_API_KEY", help="openai engine: environment variable holding the API key."
    )
    # requests in flight; the server batches them
    max_concurrency: int = option(8, help="openai engine: requests in flight.")
    request_timeout: float = option(120.0, help="openai engine: seconds per request.")
    # on rate limits, server errors, timeouts and dropped connections
    max_retries: int = option(5, help="openai engine: retries on 429/5xx/timeouts, with backoff.")

    def __post_init__(self):
        if self.engine not in ENGINE_CHOICES:
            raise UserError(f"--engine {self.engine}: choose one of {', '.join(ENGINE_CHOICES)}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}")
        for name in ("tensor_parallel_size", "max_model_len", "batch_size", "max_concurrency"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} {getattr(self, name)}: must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(
                f"--gpu-memory-utilization {self.gpu_memory_utilization}: a fraction in (0, 1]"
            )
        if self.request_timeout <= 0 or self.max_retries < 0:
            raise UserError("--request-timeout must be > 0 and --max-retries >= 0")
        if self.engine == "openai":
            from rlaif.engines.openai_engine import checked_base_urls

            # Checked with the settings, before a stage starts its output, not when the
            # engine is first needed; kept as the list of servers it names.
            object.__setattr__(self, "base_url", tuple(checked_base_urls(self.base_url)))


# Where and how fast the servers answer, not what: left out of fingerprints, so a run may resume
# (or a shard merge) with other servers of the same model.
SERVING_ONLY = ("base_url", "api_key_env", "max_concurrency", "request_timeout", "max_retries")


def result_settings(settings: EngineSettings) -> dict:
    """The engine settings that can change what a stage writes."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(settings).items() if k not in SERVING_ONLY}


def resolved_dtype(dtype: str, use: str, on_gpu: bool) -> str:
    """`--dtype` for one use of a model on this machine: "generate" (answers, rationales,
    verdicts) or "score" (option log-probabilities: label's and rl's judge).

    On a GPU, auto stays "auto": the engine's own choice (vLLM: the model's dtype;
    transformers: bfloat16 where the GPU has it). On a CPU, auto generates in float32 (in
    bf16, vLLM's CPU default, greedy answers of the small model change) and scores in bfloat16
    where the CPU has bf16 arithmetic (`hardware.cpu_has_bf16`), else in float32: bf16 scoring
    is 1.5-2.6x faster and flips only near-ties (benchmarks/label_dtype.py; the figures are in
    docs/models-and-engines.md). `--dtype float32` gives the float32 labels.
    """
    if use not in USES:
        raise ValueError(f"unknown engine use {use!r}")
    if dtype != "auto":
        return dtype
    if on_gpu:
        return "auto"
    if use == "generate":
        return "float32"
    from rlaif.plumbing import hardware

    return "bfloat16" if hardware.cpu_has_bf16() else "float32"


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
