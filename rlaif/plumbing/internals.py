"""Every private name of a library that rlaif touches, in one place.

No public option reaches what these do. Each is listed in `PRIVATE_NAMES` with its reason; the
"Library internals" list of docs/development.md is tested against it (tests/test_internals.py),
as is the rule that no other module of rlaif names them. The versions they were read from are
checked before use: outside `SUPPORTED`, one line names the range instead of an AttributeError
deep in a trainer.

Patches are context managers that put back what they replaced, so a library call made after a
run (a test, a notebook) meets the library as it ships.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

from rlaif.plumbing.errors import UserError

# The releases whose internals were read: lowest included, highest excluded.
SUPPORTED = {
    "trl": ("1.16", "1.17"),
    "typer": ("0.29", "0.30"),
    "transformers": ("5.19", "6"),
}


@dataclass(frozen=True)
class Internal:
    library: str
    name: str  # dotted, from the library's top package
    why: str


PRIVATE_NAMES = (
    Internal(
        "typer",
        "typer._click.exceptions",
        "typer bundles its own click; a command line raises its exceptions, not click's",
    ),
    Internal(
        "trl",
        "trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE",
        "CPU fused LM head: tiles of 1,024 tokens instead of 4,096",
    ),
    Internal(
        "trl",
        "trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE",
        "CPU fused LM head: tiles of 8,192 vocabulary entries instead of 32,768",
    ),
    Internal(
        "trl",
        "trl.kernels.chunked_logprob._forward_tile",
        "CPU fused LM head: the forward fold with in-place ops",
    ),
    Internal(
        "trl",
        "trl.kernels.chunked_logprob._backward_tile",
        "CPU fused LM head: the backward fold with in-place ops",
    ),
    Internal(
        "trl",
        "trl.kernels.chunked_logprob._addmm_fp32",
        "CPU fused LM head: bf16 gradient GEMMs under autocast",
    ),
    Internal(
        "trl",
        "trl.kernels.chunked_logprob._use_triton",
        "CPU fused LM head: read, to leave the Triton kernel alone where it runs",
    ),
    Internal(
        "trl",
        "trl.trainer.utils._use_triton",
        "CPU fused LM head: score only labelled positions, as TRL does where Triton runs",
    ),
    Internal(
        "trl",
        "trl.DPOTrainer._compute_loss",
        "dpo --label-mode soft: one label_smoothing ε per pair (no public hook takes one)",
    ),
    Internal(
        "transformers",
        "transformers.PretrainedConfig._name_or_path",
        "rl --ref-model: GRPO and RLOO build their reference from the policy's path",
    ),
    Internal(
        "trl",
        "trl.DPOTrainer._total_train_tokens",
        "the manifest's train_tokens: TRL's own count of tokens trained on (SFTTrainer's too)",
    ),
)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def supported_problem(library: str) -> str | None:
    """None when the installed `library` is in its supported range, else the one-line error."""
    low, high = SUPPORTED[library]
    try:
        installed = metadata.version(library)
    except metadata.PackageNotFoundError:
        return f"{library} is not installed; rlaif needs {library} >={low},<{high}"
    if not _release(low) <= _release(installed) < _release(high):
        return (
            f"{library} {installed} is installed; rlaif touches internals of {library}"
            f" >={low},<{high} only (see rlaif/plumbing/internals.py): install a version in"
            " that range"
        )
    return None


def require(library: str) -> None:
    problem = supported_problem(library)
    if problem:
        raise UserError(problem)


def click_errors():
    """The exceptions typer's command lines raise (`typer._click.exceptions`). Read when the
    CLI is imported, before its one-line error path exists: outside the range, the command
    stops with the one line itself."""
    problem = supported_problem("typer")
    if problem:
        raise SystemExit(f"error: {problem}")
    from typer._click import exceptions

    return exceptions


@contextmanager
def swapped(target, **replacements) -> Iterator[None]:
    """Set `target`'s attributes for the block, and put the old values back however it ends."""
    missing = object()
    old = {name: getattr(target, name, missing) for name in replacements}
    for name, value in replacements.items():
        setattr(target, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is missing:
                delattr(target, name)
            else:
                setattr(target, name, value)


@contextmanager
def cpu_fused_lm_head(
    tile: tuple[int, int],
    lean_forward: Callable,
    lean_backward: Callable,
    autocast_addmm: Callable,
) -> Iterator[None]:
    """TRL's fused LM head with rlaif's CPU tiles and folds (see training/fused_lm_head.py)
    for the block. Each `lean_*`/`autocast_addmm` takes TRL's function and returns the one to
    use. Where the Triton kernel runs, nothing is changed."""
    require("trl")
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    if kernel._use_triton(torch.device("cuda" if torch.cuda.is_available() else "cpu")):
        yield  # the Triton kernel folds a tile without copies of it
        return
    triton_or_cpu = kernel._use_triton
    with (
        swapped(
            kernel,
            TOKEN_CHUNK_SIZE=tile[0],
            _forward_tile=lean_forward(kernel._forward_tile),
            _backward_tile=lean_backward(kernel._backward_tile),
            _addmm_fp32=autocast_addmm(kernel._addmm_fp32),
        ),
        swapped(
            trl_utils,
            _CHUNKED_LOGPROB_CHUNK_SIZE=tile[1],
            # `compact` in add_fused_lm_head: score only the labelled positions
            _use_triton=lambda device: device.type == "cpu" or triton_or_cpu(device),
        ),
    ):
        yield


def dpo_trainer_with_per_pair_smoothing(dpo_trainer_cls, smoothing_of: Callable):
    """A DPOTrainer subclass that, when a batch carries `label_p`, sets `label_smoothing` to
    `smoothing_of(label_p)` (a per-pair tensor, which broadcasts over the batch) for that
    batch's loss; batches without it are TRL's own."""
    import warnings

    require("trl")

    class PerPairSmoothingDPOTrainer(dpo_trainer_cls):
        def _compute_loss(self, model, inputs, return_outputs):
            p = inputs.pop("label_p", None)
            if p is None:
                return super()._compute_loss(model, inputs, return_outputs)
            shared = self.label_smoothing
            self.label_smoothing = smoothing_of(p)
            try:
                with warnings.catch_warnings():
                    # torch warns that torch.tensor() copies a tensor: harmless here
                    warnings.simplefilter("ignore", UserWarning)
                    return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self.label_smoothing = shared

    return PerPairSmoothingDPOTrainer


@contextmanager
def model_path_read_as(model, path: str) -> Iterator[None]:
    """While the block builds a GRPO or RLOO trainer, the policy's config names `path`, so the
    trainer loads its reference model from there."""
    require("transformers")
    with swapped(model.config, _name_or_path=path):
        yield


def total_train_tokens(trainer) -> int:
    """The tokens the trainer trained on, by its own count (0 when it kept none)."""
    return int(getattr(trainer, "_total_train_tokens", 0))
