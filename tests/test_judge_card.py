"""The judge card through the real CLI: `eval agreement` on made-up label rows (the arithmetic
is in test_diagnostics.py), its gate's exit code, its JSON and plot files; and `eval judge`
with the real embedded judge on a few XSTest pairs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, rlaif_cmd

from rlaif.judging.diagnostics import CARD_KIND, judge_diagnostics
from rlaif.plumbing.files import read_jsonl, write_jsonl

XSTEST = DATA / "xstest-dev.jsonl"


def labelled_rows() -> list[dict]:
    """20 label rows: the judge agrees with 14 of the 20 references (70%), groups a and b."""
    rows = []
    for i in range(20):
        right = i < 14
        p = 0.8 if right else 0.3  # the reference is always responses[0]
        rows.append(
            {
                "id": f"r{i}",
                "p": p,
                "responses": ["a longer answer", "short"],
                "reference": 0,
                "group": "a" if i % 2 else "b",
                "judgements": [{"principle_id": "harm", "p_ab": p, "p_ba": p}],
            }
        )
    return rows


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(rlaif_cmd(*args), capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.jsonl"
    write_jsonl(str(path), labelled_rows())
    return path


def test_gate_exits_3_below_the_threshold_and_0_at_it(labels):
    below = cli("eval", "agreement", str(labels), "--min-agreement", "0.75")
    assert below.returncode == 3, below.stderr
    assert below.stderr.strip().splitlines() == [
        "error: agreement 14/20 = 70.0% (95% CI 48.1%–85.5%) is below --min-agreement 0.75"
    ]
    assert "Judge card: " in below.stdout  # the card is printed before the gate closes
    at = cli("eval", "agreement", str(labels), "--min-agreement", "0.7")
    assert at.returncode == 0, at.stderr  # 70% is not below 70%


def test_gate_needs_references_and_a_rate(tmp_path):
    no_reference = tmp_path / "noref.jsonl"
    write_jsonl(str(no_reference), [{**r, "reference": None} for r in labelled_rows()])
    done = cli("eval", "agreement", str(no_reference), "--min-agreement", "0.5")
    assert done.returncode == 2
    assert "--min-agreement: " in done.stderr and "no pair with a reference" in done.stderr
    bad = cli("eval", "agreement", str(no_reference), "--min-agreement", "60")
    assert bad.returncode == 2 and "a rate in [0, 1]" in bad.stderr


def test_card_json_plot_and_groups(labels, tmp_path):
    card, plot = tmp_path / "card.json", tmp_path / "reliability.png"
    args = ["eval", "agreement", str(labels), "--group-by", "group", "--json", str(card)]
    done = cli(*args, "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    data = json.loads(card.read_text())
    assert data["kind"] == CARD_KIND and data["source"] == str(labels)
    assert data["agreement"]["agree"] == 14 and data["agreement"]["n"] == 20
    # The same pairs, the trivial rules: responses[0] is the reference and the longer one.
    assert data["baselines"]["prefer_first"]["rate"] == 1.0
    assert data["baselines"]["prefer_shorter"]["rate"] == 0.0
    assert list(data["groups"]["by_value"]) == ["a", "b"]
    assert data["groups"]["by_value"]["a"]["agreement"]["n"] == 10
    # 14 say .8 and are right, 6 say .7 (for the other response) and are wrong:
    # ECE = (14·|.8 − 1| + 6·|.7 − 0|) / 20 = (2.8 + 4.2) / 20 = .35.
    assert data["calibration"]["ece"] == pytest.approx(0.35)
    assert "by group" in done.stdout and "calibration (ECE, 10 bins)  0.350" in done.stdout
    assert "'prefer first' agrees with the references as often as the judge" in done.stdout

    from PIL import Image

    with Image.open(plot) as image:
        assert image.info.get("Software") == "rlaif"
    again = cli(*args, "--plot", str(plot))  # what rlaif wrote may be replaced
    assert again.returncode == 0, again.stderr


def test_json_to_stdout_is_pure_json(labels):
    done = cli("eval", "agreement", str(labels), "--json", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agreement"]["agree"] == 14
    assert "Judge card" in done.stderr


def test_outputs_follow_the_output_policy(labels, tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}\n')
    done = cli("eval", "agreement", str(labels), "--json", str(foreign))
    assert done.returncode == 2 and "rlaif did not write it" in done.stderr
    assert foreign.read_text() == '{"mine": true}\n'
    done = cli("eval", "agreement", str(labels), "--plot", str(labels))
    assert done.returncode == 2 and "--plot" in done.stderr
    assert read_jsonl(str(labels))[0]  # the input is untouched


def test_group_by_a_field_no_row_has(labels):
    done = cli("eval", "agreement", str(labels), "--group-by", "unsafe")
    assert done.returncode == 2
    assert "--group-by unsafe: no row of" in done.stderr and "group" in done.stderr


# --- eval judge: the real embedded judge --------------------------------------------------------


@pytest.fixture
def xstest_six(tmp_path) -> Path:
    """Six XSTest pairs, three on unsafe prompts and three on safe ones."""
    rows = [row for _, row in read_jsonl(str(XSTEST))[0]]
    picked = [r for r in rows if r["unsafe"]][:3] + [r for r in rows if not r["unsafe"]][:3]
    path = tmp_path / "xstest-6.jsonl"
    write_jsonl(str(path), picked)
    return path


def test_eval_judge_prints_the_card_label_would_give(xstest_six, tmp_path, home_with_model):
    """`eval judge` judges as `rlaif label` does (same judge, seed, options), writes no label
    file, and its card is the card of label's output on the same pairs."""
    from rlaif.stages import label

    before = set(tmp_path.iterdir())
    card_path = tmp_path / "card.json"
    done = cli(
        "eval",
        "judge",
        str(xstest_six),
        "--engine",
        "hf",
        "--group-by",
        "unsafe",
        "--json",
        str(card_path),
        "--min-agreement",
        "0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(tmp_path.iterdir()) - before == {card_path}  # no label file, no partial file
    card = json.loads(card_path.read_text())
    assert card["pairs"] == 6 and card["agreement"]["n"] == 6
    assert card["paired_judgements"] == 6  # one principle per pair, both orders
    assert set(card["groups"]["by_value"]) == {"true", "false"}
    assert all(g["pairs"] == 3 for g in card["groups"]["by_value"].values())
    # Six pairs cannot size a judge up, and the card says so rather than print a rate.
    assert f"too few pairs ({card['agreement']['agree']}/6)" in done.stdout

    out = tmp_path / "labels.jsonl"
    label.run(label.LabelConfig(pairs=str(xstest_six), output=str(out), engine=_hf()))
    rows = [row for _, row in read_jsonl(str(out))[0]]
    from_label = json.loads(json.dumps(judge_diagnostics(rows, group_by="unsafe")))
    for key in ("agreement", "baselines", "position_consistency", "groups", "calibration"):
        assert card[key] == from_label[key], key


def _hf():
    from rlaif.engines import EngineSettings

    return EngineSettings(engine="hf")


def test_eval_judge_checks_before_loading_a_model(xstest_six, tmp_path):
    done = cli("eval", "judge", str(xstest_six), "--engine", "hf", "--group-by", "kind")
    assert done.returncode == 2
    assert "--group-by kind: no row of" in done.stderr and "unsafe" in done.stderr
    responses_only = tmp_path / "unlabelled.jsonl"
    write_jsonl(
        str(responses_only),
        [{"prompt": "Hi?", "responses": ["Hello.", "Go away."]}],
    )
    done = cli("eval", "judge", str(responses_only), "--engine", "hf", "--min-agreement", "0.6")
    assert done.returncode == 2 and "no pair with a reference" in done.stderr
