"""benchmarks/judge_quality.py: its table from label rows of synthetic judges of known quality
(the arithmetic), and once end to end on the real hf engine (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlaif.plumbing.stats import format_rate

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "judge_quality", REPO / "benchmarks" / "judge_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_rows(n: int, wrong: tuple, confidence: float, consistent: int) -> list[dict]:
    """Label rows of a judge that picks the reference's response except in pairs i with
    i % 8 in `wrong`, with p = `confidence` for its pick, and the same response in both orders
    in the first `consistent` pairs; `unsafe` and the reference's slot alternate."""
    rows = []
    for i in range(n):
        reference = i % 2
        picks_first = (reference == 0) == (i % 8 not in wrong)
        p = confidence if picks_first else 1 - confidence
        # both orders' p for responses[0]: the same side when consistent, else one flipped
        p_ab, p_ba = (p, p) if i < consistent else (p, 1 - p)
        rows.append(
            {
                "id": f"r{i}",
                "responses": ["a" * (10 + i), "b" * 12],
                "p": p,
                "reference": reference,
                "unsafe": i % 2 == 0,
                "judgements": [{"principle_id": "x", "p_ab": p_ab, "p_ba": p_ba}],
            }
        )
    return rows


def test_the_table_shows_the_cards_figures_and_the_held_out_calibration():
    bench = load_benchmark()
    # 30 of 40 right, always saying 0.95: overconfident (ECE about 0.2), which Platt fixes
    rows = synthetic_rows(40, wrong=(3, 6), confidence=0.95, consistent=24)
    result = bench.summarise(rows, "unsafe", wall=12.0, load=2.0)
    result |= {"dataset": "xs", "method": "probabilities", "judges": "1: j"}
    assert result["pairs_per_s"] == pytest.approx(40 / 10.0)
    assert result["card"]["agreement"]["agree"] == 30
    raw, calibrated = result["card"]["calibration"]["ece"], result["calibration"]["ece_after"]
    assert raw == pytest.approx(0.2, abs=0.01)
    # held out (each pair calibrated by a fit on the other 4 folds, shrunk and gated as
    # `calibrate` does): 0.045 here, not 0, since 32 pairs a fit leave noise (0.043 at 200
    # pairs; it was 0.126 here under the old likelihood-ratio rule)
    assert calibrated < 0.7 * raw

    table = bench.format_table([result])
    line = table.splitlines()[2]
    assert format_rate(30, 40) in line
    assert format_rate(24, 40, "judgements") in line
    assert f"{raw:.3f}" in line and f"{calibrated:.3f}" in line and "4.00" in line
    groups = result["card"]["groups"]["by_value"]
    for value in ("true", "false"):
        g = groups[value]["agreement"]
        assert f"unsafe={value}" in table and format_rate(g["agree"], g["n"]) in table


def test_few_pairs_read_too_few_and_rating_has_no_position_figure():
    bench = load_benchmark()
    rows = synthetic_rows(6, wrong=(1, 2, 3), confidence=0.6, consistent=6)
    for row in rows:
        row["judgements"] = [{"principle_id": "x", "p_ab": row["p"], "p_ba": None}]
    result = bench.summarise(rows, None, wall=3.0, load=0.0)
    result |= {"dataset": "hh", "method": "rating", "judges": "jury of 2"}
    line = bench.format_table([result]).splitlines()[2]
    assert "too few pairs (3/6)" in line
    assert "n/a (rating)" in line
    assert "unsafe=" not in bench.format_table([result])


def test_rows_are_picked_from_every_group(tmp_path):
    bench = load_benchmark()
    picked = [json.loads(line) for line in bench.pick_rows(DATA / "xstest-dev.jsonl", 6, "unsafe")]
    assert [r["unsafe"] for r in picked].count(True) == 3
    assert len(bench.pick_rows(DATA / "hh-harmless-64.jsonl", 0, None)) == 64


def test_options_are_checked():
    bench = load_benchmark()
    assert bench.parse_args(["--methods", "rating,cot"]).methods == ["rating", "cot"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "probabilities,vibes"])


def test_engine_loads_are_timed_and_the_loader_restored():
    bench = load_benchmark()
    import rlaif.engines as engines

    original, seconds = engines.make_engine, []
    with bench.timed_engine_loads(seconds):
        assert engines.make_engine is not original
        with pytest.raises(Exception):  # noqa: B017  (any failure still counts its time)
            engines.make_engine("/no/such/model", None)
    assert engines.make_engine is original and len(seconds) == 1


@pytest.mark.slow
def test_the_benchmark_runs_the_real_label_stage(home_with_model, tmp_path, capsys):
    """Two pairs a dataset, probabilities, the embedded judge alone and as a jury, on hf."""
    bench = load_benchmark()
    out = tmp_path / "jq.json"
    results = bench.main(
        ["--limit", "2", "--methods", "probabilities", "--engine", "hf", "--json", str(out)]
    )
    assert [(r["dataset"], r["judges"]) for r in results] == [
        ("xstest-dev", "1: smollm2-135m-instruct"),
        ("xstest-dev", "jury of 2"),
        ("hh-dev", "1: smollm2-135m-instruct"),
        ("hh-dev", "jury of 2"),
    ]
    assert all(r["pairs"] == 2 for r in results)
    # the jury's rows hold both judges' judgements: twice the single judge's
    assert results[1]["card"]["judgements"] == 2 * results[0]["card"]["judgements"] > 0
    printed = capsys.readouterr().out
    assert "too few pairs" in printed and "same weights twice" in printed
    assert json.loads(out.read_text())["results"][0]["pairs"] == 2
