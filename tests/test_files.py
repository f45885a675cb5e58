"""The file contract: JSONL parsing errors, atomic writes, the partial sidecar."""

from __future__ import annotations

import json
import os

import pytest

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import atomic_output, parse_jsonl, partial_path
from rlaif.plumbing.outputs import PartialRun


def test_parse_reports_line_of_invalid_json():
    with pytest.raises(UserError, match=r"^in.jsonl:3: line contains invalid json"):
        parse_jsonl("in.jsonl", b'{"a": 1}\n\n{"a": \n')


def test_parse_reports_line_of_bad_utf8():
    with pytest.raises(UserError, match=r"^in.jsonl:2: .*utf-8"):
        parse_jsonl("in.jsonl", b'{"a": 1}\n{"a": "\xff"}\n')


def test_parse_rejects_non_objects_and_empty_input():
    with pytest.raises(UserError, match=r"in.jsonl:1: expected a JSON object"):
        parse_jsonl("in.jsonl", b"[1, 2]\n")
    with pytest.raises(UserError, match="empty file"):
        parse_jsonl("in.jsonl", b"\n  \n")


def test_parse_keeps_line_numbers():
    rows = parse_jsonl("x", b'{"a": 1}\n\n{"a": 2}\n')
    assert rows == [(1, {"a": 1}), (3, {"a": 2})]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as f:
        f.write("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_partial_run_survives_a_torn_last_line(tmp_path):
    out = str(tmp_path / "out.jsonl")
    run = PartialRun(out, {"seed": 1}, force=False)
    run.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with open(partial_path(out), "a") as f:
        f.write('{"id": "c", "v"')  # a crash in the middle of a write
    reopened = PartialRun(out, {"seed": 1}, force=False)
    assert list(reopened.done) == ["a", "b"]
    reopened.append([{"id": "c", "v": 3}])
    lines = partial_path(out).read_text().splitlines()
    assert [json.loads(line).get("id") for line in lines[1:]] == ["a", "b", "c"]


def test_partial_run_refuses_other_settings_unless_forced(tmp_path):
    out = str(tmp_path / "out.jsonl")
    PartialRun(out, {"seed": 1, "rounds": 2}, force=False).append([{"id": "a"}])
    with pytest.raises(UserError, match=r"different settings exists \(changed: seed\).*--force"):
        PartialRun(out, {"seed": 2, "rounds": 2}, force=False)
    forced = PartialRun(out, {"seed": 2, "rounds": 2}, force=True)
    assert forced.done == {}


def test_signals_are_held_back_while_other_threads_run():
    """The kernel hands a signal sent to the process to any thread that does not block it, and
    Python then runs the handler in the main thread: a mask on the main thread alone let
    SIGTERM through in the middle of a publish once a library had started a thread."""
    import signal
    import threading
    import time

    from rlaif.plumbing.files import signals_held

    events = []

    def handler(signum, frame):
        events.append("handled")

    release = threading.Event()
    other = threading.Thread(target=release.wait)  # a library's idle worker thread
    other.start()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # for the kernel to hand the signal to a thread
            events.append("block done")
        assert events == ["block done", "handled"]
    finally:
        signal.signal(signal.SIGTERM, previous)
        release.set()
        other.join()
