"""What a shell or a Makefile does to a command that the in-process table (test_bad_inputs.py)
cannot: closed standard streams, signals, a full disk, a lock left by a killed run, and files
compressed or edited by hand. Each runs the real CLI in a subprocess."""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd

PROMPTS = b'{"id": "a", "prompt": "Hi?"}\n{"id": "b", "prompt": "Bye?"}\n'


def run(shell_prefix: str, *args: str, cwd: Path, timeout: float = 120):
    """`rlaif ARGS` after a shell redirection such as `exec 0<&-`."""
    command = " ".join(f"'{a}'" for a in rlaif_cmd(*args))
    return subprocess.run(
        ["bash", "-c", f"{shell_prefix}; exec {command}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("prefix", "args", "expect"),
    [
        ("exec 0<&-", ["generate", "-", "-o", "out.jsonl"], "-: standard input is closed"),
        ("exec 0<&-", ["label", "-", "-o", "out.jsonl"], "-: standard input is closed"),
        ("exec 0<&-", ["show", "-"], "-: standard input is closed"),
        (
            "exec 1>&-",
            ["generate", "p.jsonl", "-o", "-"],
            "-o/--output -: standard output is closed",
        ),
        ("exec 1>&-", ["sample", "p.jsonl", "-o", "-"], "-o/--output -: standard output is closed"),
    ],
    ids=["generate-stdin", "label-stdin", "show-stdin", "generate-stdout", "sample-stdout"],
)
def test_a_closed_standard_stream_is_one_line(tmp_path, prefix, args, expect):
    (tmp_path / "p.jsonl").write_bytes(PROMPTS)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert expect in one_error_line(run(prefix, *args, cwd=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_version():
    result = subprocess.run(rlaif_cmd("--version"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("rlaif ")


# 0.2-0.4 s: the libraries loading, where CI once saw exit -2 and a silent exit 130
@pytest.mark.parametrize("delay", [0.05, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.8, 1.1])
def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path, delay):
    """During imports (the first second) as well as later: no traceback at any moment."""
    (tmp_path / "p.jsonl").write_bytes(PROMPTS)
    proc = subprocess.Popen(
        rlaif_cmd("generate", "p.jsonl", "-o", "out.jsonl", "--engine", "hf"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("finished before the signal")  # not on this machine: it takes seconds
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c_and_the_rerun_resumes(tmp_path):
    """SIGTERM once a chunk is saved: exit 143, one line, no temporary file left; the rerun
    resumes and writes the rows an undisturbed run writes."""
    prompts = "".join(
        json.dumps({"id": f"p{i}", "prompt": f"Name a colour, {i}."}) + "\n" for i in range(6)
    )
    (tmp_path / "p.jsonl").write_text(prompts)
    args = ["sample", "p.jsonl", "-o", "out.jsonl", "--engine", "hf", "--chunk-size", "2",
            "--n", "2", "--max-new-tokens", "8"]  # fmt: skip
    proc = subprocess.Popen(rlaif_cmd(*args), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.jsonl.partial.jsonl"
    deadline = time.time() + 300
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not list(tmp_path.glob(".*tmp-*")) and not (tmp_path / "out.jsonl").exists()
    resumed = subprocess.run(rlaif_cmd(*args), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-2000:]
    whole = subprocess.run(
        rlaif_cmd(*[a if a != "out.jsonl" else "whole.jsonl" for a in args]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not (tmp_path / ".out.jsonl.lock").exists()


def test_sigterm_while_an_output_is_published_is_exit_143_and_leaves_nothing(tmp_path, capsys):
    """The fast, in-process kind of the test above: the signal arrives while the rows are
    written to the temporary file, through the CLI's own error path."""
    import os

    import typer

    from rlaif.plumbing.commands import run_cli
    from rlaif.plumbing.files import manifest_path, write_with_manifest

    out = str(tmp_path / "out.jsonl")

    def rows():
        yield {"id": "a"}
        os.kill(os.getpid(), signal.SIGTERM)  # handled before the next row is asked for
        yield {"id": "b"}

    with pytest.raises(typer.Exit) as stopped:
        run_cli(lambda: write_with_manifest(out, rows(), manifest_path(out), {"stage": "t"}))
    assert stopped.value.exit_code == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: interrupted: finished records are kept; run the same command again to resume"
    ]
    assert list(tmp_path.iterdir()) == []  # no output, manifest or temporary file


def test_a_signal_held_back_while_publishing_takes_the_partial_file_along(
    tmp_path, capsys, monkeypatch
):
    """A signal sent during the renames is delivered once they are done. The output is whole
    then, and what only a resumed run reads (OUT.partial.jsonl, OUT.work/) must be gone with
    it: the rerun finds the output up to date and would never remove them."""
    import os

    import typer

    from rlaif.plumbing.commands import run_cli
    from rlaif.plumbing.outputs import PartialRun
    from rlaif.stages.runner import publish, work_dir

    out = str(tmp_path / "out.jsonl")
    PartialRun(out, {"seed": 1}, force=False).append([{"id": "a"}])
    work_dir(out).mkdir()
    (work_dir(out) / "answers.jsonl").write_text('{"id": "a"}\n')
    replace = os.replace

    def replace_then_signal(source, target):
        replace(source, target)
        os.kill(os.getpid(), signal.SIGTERM)  # held back until the block of renames ends

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(typer.Exit) as stopped:
        run_cli(lambda: publish(out, [{"id": "a"}], {"stage": "t"}, work=True))
    assert stopped.value.exit_code == 143
    assert "error: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.manifest.json"]


def test_a_lock_left_by_a_killed_run_does_not_block_a_rerun(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl").write_bytes(PROMPTS)
    holder = subprocess.Popen(
        [sys.executable, "-c", "from rlaif.plumbing.outputs import lock_output as l;"
         " l('out.jsonl', '-o'); print('held', flush=True); import time; time.sleep(60)"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout.readline() == b"held\n"
    refused = run("true", "generate", "in.jsonl", "-o", "out.jsonl", "--engine", "hf", cwd=tmp_path)
    assert "another rlaif run" in one_error_line(refused)
    holder.kill()
    holder.wait()
    assert (tmp_path / ".out.jsonl.lock").exists()  # left behind by SIGKILL
    from rlaif.plumbing.outputs import lock_output, release_output_locks

    monkeypatch.chdir(tmp_path)
    lock_output("out.jsonl", "-o")  # taken at once: the kernel dropped the killed run's lock
    release_output_locks()
    assert not (tmp_path / ".out.jsonl.lock").exists()


def test_gzip_input_reads_as_the_plain_file(tmp_path):
    plain = DATA / "xstest-prompts-8.jsonl"
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    from rlaif.plumbing.files import read_jsonl

    rows, sha = read_jsonl(str(tmp_path / "in.jsonl.gz"))
    assert rows == read_jsonl(str(plain))[0]
    assert sha == read_jsonl(str(plain))[1]  # the records read, however they were stored


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` at `folder`: a real full disk (needs root to mount; skipped elsewhere)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_leaves_neither_output_nor_manifest(tmp_path):
    from rlaif.plumbing.errors import UserError
    from rlaif.plumbing.files import manifest_path, write_with_manifest

    with small_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "out.jsonl"
        rows = [{"id": str(i), "text": "x" * 1000} for i in range(200)]  # 200 kB
        with pytest.raises(UserError, match=r"out\.jsonl: No space left on device while writing"):
            write_with_manifest(str(out), rows, manifest_path(str(out)), {"stage": "t"})
        assert list(disk.iterdir()) == []  # no output, no manifest, no temporary file
        write_with_manifest(str(out), rows[:5], manifest_path(str(out)), {"stage": "t"})
        manifest = json.loads(manifest_path(str(out)).read_text())
        assert manifest["output"]["size"] == out.stat().st_size


def test_a_full_disk_while_finished_records_are_saved_names_the_partial_file(tmp_path):
    """The disk a long run fills is most likely filled while it saves finished records."""
    from rlaif.plumbing.errors import UserError
    from rlaif.plumbing.outputs import PartialRun

    with small_disk(tmp_path / "disk", "64k") as disk:
        out = str(disk / "out.jsonl")
        PartialRun(out, {"seed": 1}, force=False).append([{"id": "a"}])
        more = [{"id": str(i), "text": "x" * 1000} for i in range(200)]  # 200 kB
        with pytest.raises(UserError) as error:
            PartialRun(out, {"seed": 1}, force=False).append(more)
        assert str(error.value).startswith(
            f"{out}.partial.jsonl: no space left on device while writing finished records"
        )
        assert "MiB free there" in str(error.value)
        assert "a" in PartialRun(out, {"seed": 1}, force=False).done  # those saved are kept


@pytest.mark.slow
def test_a_model_that_does_not_fit_on_the_disk_is_one_line_and_leaves_nothing(
    tmp_path, home_with_model
):
    """safetensors says a disk is full with its own error type, not an OSError: CI once printed
    it as 'unexpected SafetensorError ... (a bug in rlaif ...)'. The 135M model needs ~270 MB."""
    with small_disk(tmp_path / "disk", "32m") as disk:
        done = subprocess.run(
            rlaif_cmd("train-rm", str(DATA / "hh-harmless-64.jsonl"), "-o", str(disk / "rm"),
                      "--eval-fraction", "0", "--max-steps", "1", "--batch-size", "2",
                      "--max-length", "128"),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        # one error line (tqdm may draw its bar once more as the process exits)
        [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert error.startswith(f"error: {disk / 'rm'}: no space left on device while writing")
        assert "MiB free there" in error and "Traceback" not in done.stderr
        assert list(disk.iterdir()) == []  # no model folder, no half-written one, no checkpoints


@pytest.mark.slow
def test_sigterm_while_a_model_is_published_leaves_nothing_and_the_rerun_publishes(
    tmp_path, home_with_model
):
    """SIGTERM once the trained model is being written into OUT.partial/final: exit 143, one
    line, no model folder, no half-written one; the rerun resumes from the checkpoint."""
    out = tmp_path / "rm"
    args = rlaif_cmd("train-rm", str(DATA / "hh-harmless-64.jsonl"), "-o", str(out),
                     "--eval-fraction", "0", "--max-steps", "2", "--save-steps", "2",
                     "--batch-size", "2", "--max-length", "128")  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / "rm.partial" / "final"
    deadline = time.time() + 600
    while not staging.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "published before the signal could be sent"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and not staging.exists() and not list(tmp_path.glob(".rm*"))
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "resuming" in rerun.stderr, rerun.stderr[-2000:]
    assert (out / "manifest.json").is_file() and not (tmp_path / "rm.partial").exists()


@pytest.mark.slow
def test_an_output_edited_by_hand_is_refused_then_made_again_with_force(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(PROMPTS)
    args = ["sample", "p.jsonl", "-o", "out.jsonl", "--engine", "hf", "--max-new-tokens", "4"]
    first = subprocess.run(rlaif_cmd(*args), cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(rlaif_cmd(*args), cwd=tmp_path, capture_output=True, text=True)
    assert "up to date" in again.stderr
    out = tmp_path / "out.jsonl"
    written = out.read_bytes()
    out.write_bytes(written.splitlines(keepends=True)[0])  # one row removed by hand
    edited = run("true", *args, cwd=tmp_path)
    assert "out.jsonl: changed since rlaif wrote it" in one_error_line(edited)
    assert out.read_bytes() == written.splitlines(keepends=True)[0]  # untouched
    forced = subprocess.run(
        rlaif_cmd(*args, "--force"), cwd=tmp_path, capture_output=True, text=True
    )
    assert forced.returncode == 0 and out.read_bytes() == written


def test_standard_output_appended_to_the_input_is_refused(tmp_path):
    """`rlaif generate in.jsonl -o - >> in.jsonl`: refused, as GNU cat refuses `cat f >> f`."""
    (tmp_path / "p.jsonl").write_bytes(PROMPTS)
    result = run("exec 1>>p.jsonl", "generate", "p.jsonl", "-o", "-", cwd=tmp_path)
    assert "standard output is the input p.jsonl" in one_error_line(result)
    assert (tmp_path / "p.jsonl").read_bytes() == PROMPTS


def test_parquet_and_datasets_folders_read_as_the_jsonl_they_hold(tmp_path):
    """As TRL users keep preference data: parquet, and `datasets` folders (save_to_disk, one
    dataset or a DatasetDict's train split). Rows are numbered from 1, as lines are."""
    import datasets

    from rlaif.plumbing.files import read_jsonl

    plain = read_jsonl(str(DATA / "xstest-prompts-8.jsonl"))[0]
    data = datasets.Dataset.from_list([row for _, row in plain])
    data.to_parquet(str(tmp_path / "p.parquet"))
    data.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dict"))
    read = [read_jsonl(str(tmp_path / name)) for name in ("p.parquet", "one", "dict")]
    assert all(rows == plain for rows, _ in read)
    assert len({sha for _, sha in read}) == 1  # the same rows, however they were stored


def test_the_split_of_a_datasets_folder_is_chosen_as_trl_names_the_option(tmp_path):
    """`--dataset-train-split`, as TRL's scripts call it: any split of a DatasetDict folder; a
    split that is not there is one line naming the folder and the splits it has."""
    import datasets

    from rlaif.plumbing.files import DatasetSettings, read_jsonl

    plain = read_jsonl(str(DATA / "xstest-prompts-8.jsonl"))[0]
    rows = [row for _, row in plain]
    folder = tmp_path / "dict"
    splits = {"train": rows[:5], "test": rows[5:]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    ).save_to_disk(str(folder))
    test = read_jsonl(str(folder), DatasetSettings(dataset_train_split="test"))[0]
    assert [row for _, row in test] == rows[5:]
    assert [row for _, row in read_jsonl(str(folder))[0]] == rows[:5]
    args = ["sample", str(folder), "-o", "out.jsonl", "--dataset-train-split", "validation"]
    error = one_error_line(run("true", *args, cwd=tmp_path))
    assert f"{folder}: no 'validation' split (splits: train, test)" in error
    assert not (tmp_path / "out.jsonl").exists()


def test_a_hub_dataset_is_read_with_trls_config_and_split_names(monkeypatch):
    """What reaches `datasets.load_dataset` (no network here: the call is recorded, not made;
    reading the hub for real is not tested offline)."""
    import datasets

    from rlaif.plumbing import files

    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"id": "a", "prompt": "Hi?"}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no reachability check
    settings = files.DatasetSettings(dataset_config="default", dataset_train_split="test")
    files.read_jsonl("hf:trl-lib/ultrafeedback_binarized", settings)
    files.read_jsonl("hf:trl-lib/ultrafeedback_binarized:validation", settings)
    files.read_jsonl("hf:trl-lib/ultrafeedback_binarized")
    assert calls == [
        ("trl-lib/ultrafeedback_binarized", "default", "test"),
        ("trl-lib/ultrafeedback_binarized", "default", "validation"),  # the reference's own
        ("trl-lib/ultrafeedback_binarized", None, "train"),
    ]


def test_a_stage_runs_on_a_parquet_file(tmp_path):
    """`eval agreement` (no model) on label rows kept as parquet: the same card as from JSONL."""
    import datasets

    rows = []
    for i in range(12):
        p = [0.9, 0.7, 0.4, 0.2][i % 4]
        rows.append(
            {
                "id": f"r{i}",
                "prompt": [{"role": "user", "content": f"Question {i}?"}],
                "responses": ["yes", "no"],
                "p_chosen": p,
                "p": p,
                "judgements": [{"principle_id": "x", "p_ab": p, "p_ba": p, "p": p}],
                "reference": i % 2,
            }
        )
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "labels.parquet"))
    cards = [
        subprocess.run(
            rlaif_cmd("eval", "agreement", str(path)), capture_output=True, text=True, timeout=120
        )
        for path in (labels, tmp_path / "labels.parquet")
    ]
    assert all(c.returncode == 0 for c in cards), [c.stderr[-2000:] for c in cards]
    assert "agreement" in cards[0].stdout
    assert cards[0].stdout.replace(str(labels), "X") == cards[1].stdout.replace(
        str(tmp_path / "labels.parquet"), "X"
    )
