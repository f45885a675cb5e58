"""rlaif/plumbing/internals.py is the one module that touches a library's private names: the
list is complete, docs/development.md shows it, the versions are checked, and patches are undone."""

from __future__ import annotations

import re
import tokenize
from importlib import metadata
from pathlib import Path

import pytest

from rlaif.plumbing import internals
from rlaif.plumbing.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def test_the_installed_libraries_are_the_ones_whose_internals_were_read():
    for library in internals.SUPPORTED:
        assert internals.supported_problem(library) is None, library


def test_a_library_outside_its_range_is_one_line_naming_the_range(monkeypatch):
    monkeypatch.setattr(internals.metadata, "version", lambda name: "2.0.1")
    with pytest.raises(UserError, match=r"trl 2\.0\.1 is installed; .*trl >=1\.16,<1\.17"):
        internals.require("trl")

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(internals.metadata, "version", missing)
    with pytest.raises(UserError, match="trl is not installed"):
        internals.require("trl")


def test_typer_and_transformers_are_checked_before_their_internals_are_read(monkeypatch):
    monkeypatch.setattr(internals.metadata, "version", lambda name: "9.0")
    # the CLI reads typer's click at import, before its one-line error path exists
    with pytest.raises(SystemExit, match=r"^error: typer 9\.0 is installed; .*>=0\.29,<0\.30"):
        internals.click_errors()
    with pytest.raises(UserError, match=r"transformers 9\.0 is installed; .*>=5\.19,<6"):
        with internals.model_path_read_as(object(), "elsewhere"):
            pass


def _private_parts() -> set[str]:
    """The names that make an access private: `_click`, `_forward_tile`, `TOKEN_CHUNK_SIZE`…"""
    parts = set()
    for internal in internals.PRIVATE_NAMES:
        private = [p for p in internal.name.split(".") if p.startswith("_")]
        parts.add(private[0] if private else internal.name.rsplit(".", 1)[1])
    return parts


def _code_names(path: Path) -> list[tuple[int, str]]:
    """The names a module's code uses, and strings that are just a name (getattr's): not its
    comments or docstrings, which may well mention what internals.py touches."""
    found = []
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.NAME:
                found.append((tok.start[0], tok.string))
            elif tok.type == tokenize.STRING and re.fullmatch(r"[rb]?['\"]\w+['\"]", tok.string):
                found.append((tok.start[0], tok.string.strip("rb'\"")))
    return found


def test_no_other_module_of_rlaif_names_a_private_name():
    private = _private_parts()
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in sorted((REPO / "rlaif").rglob("*.py"))
        if path.name != "internals.py"
        for line, name in _code_names(path)
        if name in private
    ]
    assert offenders == []


def test_no_module_of_rlaif_imports_a_private_module_of_a_library():
    private_import = re.compile(r"^\s*(from|import) (typer|trl|transformers|vllm)\S*\._", re.M)
    found = [
        str(p.relative_to(REPO))
        for p in (REPO / "rlaif").rglob("*.py")
        if p.name != "internals.py" and private_import.search(p.read_text())
    ]
    assert found == []


def test_the_docs_list_exactly_the_private_names():
    page = (REPO / "docs" / "development.md").read_text()
    section = page.split("## Library internals this code relies on", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^- `([^`]+)`: (.+?)\.$", section, re.M)
    assert listed == [(i.name, i.why) for i in internals.PRIVATE_NAMES]


def test_swapped_puts_back_what_it_replaced_however_the_block_ends():
    class Target:
        kept = 1

    with pytest.raises(RuntimeError), internals.swapped(Target, kept=2, added=3):
        assert (Target.kept, Target.added) == (2, 3)
        raise RuntimeError
    assert Target.kept == 1 and not hasattr(Target, "added")


def test_the_cpu_fused_lm_head_is_undone_after_its_block():
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    from rlaif.training.fused_lm_head import fitted_to_cpu

    names = [
        (kernel, "TOKEN_CHUNK_SIZE"), (kernel, "_forward_tile"), (kernel, "_backward_tile"),
        (kernel, "_addmm_fp32"), (trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"),
        (trl_utils, "_use_triton"),
    ]  # fmt: skip
    shipped = [getattr(module, name) for module, name in names]
    with fitted_to_cpu((7, 300)):
        inside = [getattr(module, name) for module, name in names]
        assert (kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == (7, 300)
        assert all(a is not b for a, b in zip(inside, shipped, strict=True))
    assert all(getattr(m, n) is v for (m, n), v in zip(names, shipped, strict=True))


def test_a_per_pair_smoothing_is_put_back_after_each_loss():
    class FakeDPO:  # stands in for TRL's DPOTrainer: what _compute_loss saw
        label_smoothing = 0.0

        def _compute_loss(self, model, inputs, return_outputs):
            return self.label_smoothing

    trainer = internals.dpo_trainer_with_per_pair_smoothing(FakeDPO, lambda p: 1 - p)()
    assert trainer._compute_loss(None, {"label_p": 0.75}, False) == 0.25
    assert trainer.label_smoothing == 0.0
    assert trainer._compute_loss(None, {}, False) == 0.0
