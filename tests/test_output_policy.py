"""The one output policy: up to date, refused, replaced, or resumed, and nothing left behind
by a run that saved nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import folder_digest, partial_path, write_json
from rlaif.plumbing.outputs import (
    PartialRun,
    existing_output,
    folder_files,
    guard_output,
    refuse_output_as_input,
    release_output_locks,
    resume_or_refuse,
)

FINGERPRINT = {"seed": 1, "rounds": 2, "input_sha256": "aa"}


def rlaif_output(tmp_path: Path, fingerprint: dict = FINGERPRINT) -> Path:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n')
    write_json(Path(f"{out}.manifest.json"), {"stage": "label", "fingerprint": fingerprint})
    return out


def check_existing_output(
    output: str, fingerprint: dict, force: bool, *, folder: bool, option: str
) -> dict | None:
    """The one guard as a stage calls it: what lies at `output`, then the settings' check."""
    kind = "folder" if folder else "file"
    try:
        guard = guard_output(output, inputs=[], force=force, option=option, kind=kind)
        return guard.up_to_date(fingerprint)
    finally:
        release_output_locks()


def test_same_settings_and_inputs_is_up_to_date(tmp_path, capsys):
    out = rlaif_output(tmp_path)
    before = out.read_bytes()
    manifest = check_existing_output(str(out), FINGERPRINT, False, folder=False, option="-o")
    assert manifest["up_to_date"] and out.read_bytes() == before
    assert "up to date" in capsys.readouterr().err
    # --force redoes it
    assert check_existing_output(str(out), FINGERPRINT, True, folder=False, option="-o") is None


def test_other_settings_are_refused_naming_them_unless_forced(tmp_path):
    out = rlaif_output(tmp_path)
    other = {**FINGERPRINT, "seed": 2}
    with pytest.raises(UserError, match=r"other settings \(changed: seed\).*--force"):
        check_existing_output(str(out), other, False, folder=False, option="-o")
    assert check_existing_output(str(out), other, True, folder=False, option="-o") is None


def test_changed_inputs_with_the_same_settings_are_made_again(tmp_path):
    """What Make asks for when a prerequisite changed."""
    out = rlaif_output(tmp_path)
    newer = {**FINGERPRINT, "input_sha256": "bb"}
    assert check_existing_output(str(out), newer, False, folder=False, option="-o") is None


def test_a_file_rlaif_did_not_write_needs_force(tmp_path):
    mine = tmp_path / "notes.jsonl"
    mine.write_text("mine\n")
    with pytest.raises(UserError, match="notes.jsonl: exists and rlaif did not write it"):
        existing_output(str(mine), False, folder=False, option="-o")
    assert existing_output(str(mine), True, folder=False, option="-o") is None


def test_a_folder_rlaif_did_not_write_is_never_replaced(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"mine")
    for force in (False, True):
        with pytest.raises(UserError, match="a folder rlaif did not write"):
            existing_output(str(folder), force, folder=True, option="-o")
    # Its own folder with a file it did not write in it: refused too.
    write_json(folder / "manifest.json", {"stage": "sft", "files": ["config.json"]})
    with pytest.raises(UserError, match="holds weights.bin, which rlaif did not write"):
        existing_output(str(folder), True, folder=True, option="-o")
    (folder / "weights.bin").unlink()
    assert existing_output(str(folder), True, folder=True, option="-o")["stage"] == "sft"


def test_a_model_folder_edited_by_hand_is_refused_unless_forced(tmp_path):
    """As a training stage publishes it: its manifest records its files' digest."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights")
    os.utime(
        weights, (1e9, 1e9)
    )  # written long ago, as a trained model is by the time it is edited
    digest = folder_digest(folder)
    manifest = {"stage": "sft", "fingerprint": FINGERPRINT, "files": folder_files(folder)}
    write_json(folder / "manifest.json", {**manifest, "output": {"digest": digest}})
    up_to_date = check_existing_output(str(folder), FINGERPRINT, False, folder=True, option="-o")
    assert up_to_date["up_to_date"]  # its manifest touched (for Make), not counted
    weights.write_bytes(b"weightz")  # one byte changed by hand, the same size
    with pytest.raises(UserError, match=r"model: changed since rlaif wrote it \(a file's size"):
        existing_output(str(folder), False, folder=True, option="-o")
    assert existing_output(str(folder), True, folder=True, option="-o") is None


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink", "inside"])
def test_an_output_that_is_an_input_is_refused_however_spelled(tmp_path, spelling):
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    output = {
        "same": str(source),
        "dot": f"{tmp_path}/./in.jsonl",
        "symlink": str(tmp_path / "link.jsonl"),
        "hardlink": str(tmp_path / "hard.jsonl"),
        "inside": str(tmp_path),
    }[spelling]
    if spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(source)
    if spelling == "hardlink":
        os.link(source, tmp_path / "hard.jsonl")
    with pytest.raises(UserError, match="is also an input"):
        refuse_output_as_input(output, [str(source)], "-o")
    refuse_output_as_input(str(tmp_path / "other.jsonl"), [str(source)], "-o")  # fine


def test_a_partial_file_holding_no_record_never_blocks_a_rerun(tmp_path):
    out = str(tmp_path / "o.jsonl")
    PartialRun(out, {"seed": 1}, force=False)
    assert not partial_path(out).exists()  # created with the first finished records only
    partial_path(out).write_text(json.dumps({"__rlaif_partial__": {"seed": 1}}) + "\n")
    reopened = PartialRun(out, {"seed": 2}, force=False)  # other settings, but nothing to lose
    assert reopened.done == {} and not partial_path(out).exists()


def test_resume_or_refuse(tmp_path):
    work = tmp_path / "w"
    assert resume_or_refuse(work, None, FINGERPRINT, False) is False
    work.mkdir()
    assert resume_or_refuse(work, FINGERPRINT, FINGERPRINT, False) is True
    with pytest.raises(UserError, match=r"changed: rounds"):
        resume_or_refuse(work, {**FINGERPRINT, "rounds": 3}, FINGERPRINT, False)
    assert resume_or_refuse(work, {**FINGERPRINT, "rounds": 3}, FINGERPRINT, True) is False


# --- real stages ---------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(rlaif_cmd(*args), capture_output=True, text=True, timeout=900)


def test_label_twice_is_up_to_date_then_other_settings_are_refused(tmp_path, home_with_model):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join((DATA / "hh-harmless-64.jsonl").read_text().splitlines(True)[:2]))
    out = tmp_path / "prefs.jsonl"
    args = ["label", str(pairs), "-o", str(out), "--engine", "hf"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    written = out.read_bytes()

    again = cli(*args)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr[-2000:]
    assert "wrote" not in again.stderr and out.read_bytes() == written

    other = cli(*args, "--seed", "5")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: -o/--output {out}: was written with other settings (changed: seed); use the"
        " same settings, another path, or --force to replace it"
    ]
    assert out.read_bytes() == written

    forced = cli(*args, "--seed", "5", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["settings"]["seed"] == 5


def test_a_training_run_that_saves_no_checkpoint_leaves_nothing(tmp_path, home_with_model):
    """sft with every prompt longer than --max-length fails inside the trainer set-up, after
    DIR.partial was prepared: nothing may be left to block the corrected rerun."""
    data = tmp_path / "chats.jsonl"
    long_prompt = "Tell me about the sea. " * 20
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": long_prompt},
                    {"role": "assistant", "content": "Wet."},
                ]
            }
        )
        + "\n"
    )
    out = tmp_path / "model"
    failed = cli("sft", str(data), "-o", str(out), "--max-length", "16", "--max-steps", "1")
    assert failed.returncode == 2 and "raise --max-length" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.jsonl"]


def test_every_stage_checks_its_output_through_the_one_guard():
    """The policy's parts (output as input, not ours, up to date, changed settings) are called
    from outputs.py alone; stages and the training job call `guard_output` and its guard."""
    import re

    repo = Path(__file__).resolve().parent.parent
    parts = re.compile(
        r"\b(refuse_output_as_input|existing_output|check_overwrite)\("
        r"|(?<![.\w])up_to_date\("
    )
    callers = [
        str(p.relative_to(repo))
        for p in (repo / "rlaif").rglob("*.py")
        if p.name != "outputs.py" and parts.search(p.read_text())
    ]
    assert callers == []


def test_a_guard_refuses_an_input_it_learns_of_later(tmp_path):
    from rlaif.plumbing.outputs import guard_output

    out = tmp_path / "model"
    guard = guard_output(str(out), inputs=[], force=False, option="-o", kind="folder")
    with pytest.raises(UserError, match="is also an input"):
        guard.refuse_inputs([str(out)])
