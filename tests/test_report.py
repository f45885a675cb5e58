"""`rlaif report`: the HTML page from a run folder, rendered in headless Chromium.

The run folder is written with the stages' own writers (diagnostics, plots, winrate report,
manifests) on small made-up figures, so the test checks the page, not minutes of training.
`eval refusals` outputs are manifests of the shape that stage writes, figures made up.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import rlaif_cmd

from rlaif.judging.diagnostics import CARD_KIND, judge_diagnostics
from rlaif.plumbing.files import write_json, write_jsonl
from rlaif.plumbing.manifest import build_manifest
from rlaif.plumbing.models import ResolvedModel
from rlaif.plumbing.plots import plot_curves, plot_reliability
from rlaif.plumbing.stats import wilson_interval
from rlaif.stages.eval_winrate import outcome, winrate_report
from rlaif.stages.report import discover, render, summary
from rlaif.stages.score import rm_report

SECTIONS = ("judge", "reward-model", "policy", "winrate", "refusals", "examples")
SAFE, UNSAFE = 123, 102


def label_rows() -> list[dict]:
    rows = []
    for i, (ab, ba) in enumerate([(0.7, 0.6), (0.4, 0.7), (0.2, 0.3), (0.8, 0.9)]):
        p = (ab + ba) / 2
        rows.append(
            {
                "id": f"pair{i}",
                "p": p,
                "responses": ["short", "a longer answer"],
                "reference": 0,
                "judgements": [
                    {"principle_id": ["violence", "privacy"][i % 2], "p_ab": ab, "p_ba": ba}
                ],
            }
        )
    return rows


def make_run(root: Path) -> Path:
    root.mkdir()
    diagnostics = judge_diagnostics(label_rows())
    write_jsonl(str(root / "prefs.jsonl"), label_rows())
    write_json(root / "prefs.jsonl.manifest.json", {"stage": "label", "diagnostics": diagnostics})

    revisions = [
        {
            "id": "h01",
            "prompt": [{"role": "user", "content": "How do I <b>pick</b> a lock?"}],
            "initial_response": "Here is how...",
            "revisions": [
                {
                    "round": 1,
                    "principle_id": "crime_fraud",
                    "critique": "It helps with burglary.",
                    "revision": "Call a locksmith.",
                }
            ],
        }
    ]
    write_jsonl(str(root / "revisions.jsonl"), revisions)
    write_json(root / "revisions.jsonl.manifest.json", {"stage": "generate"})

    rm = root / "rm"
    rm.mkdir()
    history = [{"step": s, "loss": 0.7 - 0.05 * s, "accuracy": 0.5 + 0.05 * s} for s in range(5)]
    plot_curves(history, ["loss", "accuracy"], rm / "curves.png", "reward model")
    write_json(
        rm / "manifest.json",
        {
            "stage": "train-rm",
            "counts": {"steps": 5, "eval": 40},
            "metrics": {"train_loss": 0.6, "eval": {"eval_accuracy": 0.75}},
            "models": {"base": {"spec": "smollm2-135m-instruct"}},
        },
    )
    report = rm_report([1.0, 0.2, 0.5, 2.0], [0.0, 0.4, 0.1, 1.0], [0, 0, 0, 0])
    write_json(root / "rm-eval.json", report)
    plot_reliability(report["bins"], root / "rm-reliability.png", "calibration")

    rl = root / "rl"
    rl.mkdir()
    log = [{"step": s, "reward": 0.1 * s, "kl": 0.01 * s} for s in range(1, 7)]
    write_jsonl(str(rl / "log.jsonl"), log)
    plot_curves(log, ["reward", "kl"], rl / "curves.png", "rl")
    write_json(rl / "manifest.json", {"stage": "rl", "counts": {"steps": 6}, "metrics": {}})

    rows = [{**r, "identical": False} for r in label_rows()]
    for r in rows:
        r["outcome"] = outcome(r)
    write_json(
        root / "winrate-rl.jsonl.manifest.json",
        {
            "stage": "eval-winrate",
            "report": winrate_report(rows),
            "models": {"policy": {"spec": "run/rl"}, "baseline": {"spec": "smollm2"}},
        },
    )
    write_refusals(root / "refusals-sft.jsonl", "run/sft", None, {"string": (80, 15)})
    write_refusals(
        root / "refusals-rl.jsonl",
        "run/rl",
        "smollm2-135m-instruct",
        {"string": (90, 20), "judge": (88, 25)},
        {"string": (70, 12), "judge": (72, 10)},
    )
    # An unfinished stage's files are not results.
    (root / "dpo.partial").mkdir()
    write_json(root / "dpo.partial" / "manifest.json", {"stage": "dpo"})
    return root


def refusal_rate(refused: int, n: int) -> dict:
    return {
        "refused": refused,
        "n": n,
        "rate": refused / n,
        "ci95": list(wilson_interval(refused, n)),
    }


def refusal_rates(harmless: int, over_refusal: int) -> dict:
    """One role's rates under one classifier: `harmless` of the UNSAFE prompts refused,
    `over_refusal` of the SAFE ones (one XSTest type each here)."""
    return {
        "harmless": refusal_rate(harmless, UNSAFE),
        "over_refusal": refusal_rate(over_refusal, SAFE),
        "by_type": {
            "homonyms": {"unsafe": False, **refusal_rate(over_refusal, SAFE)},
            "contrast_homonyms": {"unsafe": True, **refusal_rate(harmless, UNSAFE)},
        },
    }


def write_refusals(output: Path, policy: str, baseline, policy_counts, baseline_counts=None):
    """The manifest `rlaif eval refusals` writes beside OUTPUT; counts per classifier are
    (unsafe refused, safe refused). The paired differences' intervals are made up."""
    rates = {"policy": {c: refusal_rates(*k) for c, k in policy_counts.items()}}
    report = {
        "prompts": SAFE + UNSAFE,
        "safe": SAFE,
        "unsafe": UNSAFE,
        "classifiers": list(policy_counts),
        "models": {"policy": policy, "baseline": baseline},
        "rates": rates,
    }
    if baseline_counts:
        rates["baseline"] = {c: refusal_rates(*k) for c, k in baseline_counts.items()}
        report["difference"] = {
            c: {
                "harmless": {
                    "difference": (k[0] - baseline_counts[c][0]) / UNSAFE,
                    "ci95": [0.09, 0.30],
                    "n": UNSAFE,
                },
                "over_refusal": {
                    "difference": (k[1] - baseline_counts[c][1]) / SAFE,
                    "ci95": [-0.01, 0.14],
                    "n": SAFE,
                },
            }
            for c, k in policy_counts.items()
        }
    write_json(f"{output}.manifest.json", {"stage": "eval-refusals", "report": report})


def test_report_sections_and_summary(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "report.html"
    done = subprocess.run(
        rlaif_cmd("report", str(run), "-o", str(out)), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    # rm curves, reliability, rl curves, refusal chart
    assert page.count("data:image/png;base64,") == 4
    assert 'alt="refusal rates per policy"' in page
    assert "&lt;b&gt;pick&lt;/b&gt;" in page  # user text is escaped, not markup
    assert "Call a locksmith." in page and "crime_fraud" in page
    assert "<h3>DPO" not in page  # the unfinished run is not reported
    assert "RL reward (rl): 0.200 → 0.500" in done.stdout
    assert "held-out accuracy 75.0% (30/40; 95% CI 59.8–85.8%)" in done.stdout
    assert "win rate (winrate-rl.jsonl): too few prompts (2.5/4)" in done.stdout
    assert "judge (prefs.jsonl): agreement too few pairs (3/4)" in done.stdout
    # The judge card appears once, its warnings once and highlighted.
    assert page.count("Judge card: prefs.jsonl") == 1
    warnings = judge_diagnostics(label_rows())["warnings"]
    assert warnings and all(page.count(html.escape(w)) == 1 for w in warnings)
    assert page.count('<span class="warning">WARNING:') == len(warnings)
    # Refusals: a row per file, role and classifier, and difference rows where there is a
    # baseline.
    refusals = page[page.index('<section id="refusals">') :].split("</section>")[0]
    refusals = re.sub(r'<span class="interval">(.*?)</span>', r"\1", refusals)
    assert refusals.count("<tr><td>refusals-rl.jsonl</td>") == 6  # 3 roles × 2 classifiers
    assert refusals.count("<tr><td>refusals-sft.jsonl</td>") == 1
    assert "<td>baseline</td><td>smollm2-135m-instruct</td><td>judge</td>" in refusals
    for figure in (
        "88.2% (90/102; 95% CI 80.6–93.1%)",  # rl's harmless, string match
        "16.3% (20/123; 95% CI 10.8–23.8%)",  # rl's over-refusal, string match
        "20.3% (25/123; 95% CI 14.2–28.3%)",  # rl's over-refusal, judge
        "8.1% (10/123; 95% CI 4.5–14.3%)",  # the baseline's over-refusal, judge
        "78.4% (80/102; 95% CI 69.5–85.3%)",  # sft's harmless
        "+19.6 points (95% CI +9.0 to +30.0; 102 prompts)",  # rl − baseline, harmless, string
        "+12.2 points (95% CI -1.0 to +14.0; 123 prompts)",  # rl − baseline, over-refusal, judge
    ):
        assert figure in refusals, figure
    assert (
        "refusals (refusals-rl.jsonl, baseline, judge): harmless 70.6% (72/102; 95% CI"
        " 61.1–78.6%); over-refusal 8.1% (10/123; 95% CI 4.5–14.3%)"
    ) in done.stdout
    assert (
        "refusals (refusals-rl.jsonl, policy − baseline, string): harmless +19.6 points"
        " (95% CI +9.0 to +30.0; 102 prompts); over-refusal +6.5 points"
    ) in done.stdout
    assert "refusals (refusals-sft.jsonl, policy, string): harmless 78.4%" in done.stdout


def test_a_figure_from_two_pairs_is_too_few(tmp_path):
    # What `make demo` printed as "reward model (rm): held-out accuracy 0.0%": 0 of 2 pairs.
    root = tmp_path / "run"
    (root / "rm").mkdir(parents=True)
    write_json(
        root / "rm" / "manifest.json",
        {"stage": "train-rm", "counts": {"eval": 2}, "metrics": {"eval": {"eval_accuracy": 0.0}}},
    )
    assert summary(discover(root)) == "reward model (rm): held-out accuracy too few pairs (0/2)"


def test_without_refusal_outputs_the_section_says_so(tmp_path):
    root = tmp_path / "run"
    (root / "rm").mkdir(parents=True)
    write_json(root / "rm" / "manifest.json", {"stage": "train-rm", "counts": {}, "metrics": {}})
    run = discover(root)
    page = render(run)
    assert '<section id="refusals">' in page
    assert "Not in this run: no `rlaif eval refusals` output." in html.unescape(page)
    assert "refusals" not in summary(run)


# The models each training stage records, by role, first the one it trains (sft.py, dpo.py,
# train_rm.py and rl.py, each in the `TrainingJob` it builds).
STAGE_MODELS = {
    "sft": {"base": "smollm2-135m-instruct"},
    "dpo": {"base": "run/sft", "reference": "run/sft-ref"},
    "train-rm": {"base": "smollm2-135m-instruct"},
    "rl": {"policy": "run/sft", "reference": "run/sft-ref"},
}


@pytest.mark.parametrize("stage", list(STAGE_MODELS))
def test_each_training_stage_names_its_starting_model(tmp_path, stage):
    root = tmp_path / "run"
    (root / "out").mkdir(parents=True)
    models = {
        role: ResolvedModel(spec, f"/models/{spec}", "folder").describe()
        for role, spec in STAGE_MODELS[stage].items()
    }
    manifest = build_manifest(
        stage,
        {"max_steps": 2},
        inputs={},
        models=models,
        constitution=None,
        counts={"steps": 2},
        tokens={},
        started=time.time(),
        extra={"metrics": {"train_loss": 0.5}},
    )
    write_json(root / "out" / "manifest.json", manifest)
    page = render(discover(root))
    (start_role, start), *others = STAGE_MODELS[stage].items()
    assert f"<tr><td>starting model</td><td>{start}</td></tr>" in page
    for role, spec in others:
        assert f"<tr><td>{role} model</td><td>{spec}</td></tr>" in page
    assert "<td>None</td>" not in page


def test_judge_cards_written_by_eval_are_reported(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    card = {"kind": CARD_KIND, "source": "ref.jsonl", **judge_diagnostics(label_rows() * 5)}
    write_json(root / "judge-card.json", card)
    run = discover(root)
    assert "judge (judge-card.json): agreement 75.0% (15/20; 95% CI 53.1–88.8%)" in summary(run)
    assert render(run).count("Judge card: judge-card.json") == 1


def test_a_missing_folder_is_one_clear_error(tmp_path):
    done = subprocess.run(
        rlaif_cmd("report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not a folder" in done.stderr
    assert not (tmp_path / "r.html").exists()


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.sections = [...document.querySelectorAll('section')]
    .filter(s => s.getBoundingClientRect().height > 0).map(s => s.id).join(',');
  // Nothing wider than its box (a judge card's WARNING lines), nor than the window.
  document.body.dataset.overflowing = [...document.querySelectorAll('pre, table, img, section')]
    .filter(e => e.scrollWidth > e.clientWidth).length;
  document.body.dataset.pagewidth = document.documentElement.scrollWidth;
});
</script>"""


WINDOW_WIDTH = 1280  # a laptop's browser window


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
    run = make_run(tmp_path / "run")
    # A card on 20 pairs, whose WARNING line (over 200 characters) is wider than the page
    card = {"kind": CARD_KIND, "source": "ref.jsonl", **judge_diagnostics(label_rows() * 5)}
    assert max(len(w) for w in card["warnings"]) >= 200
    write_json(run / "judge-card.json", card)
    subprocess.run(
        rlaif_cmd("report", str(run), "-o", str(tmp_path / "report.html")), check=True, timeout=120
    )
    # A copy with a probe script: the browser records what it rendered into the DOM it dumps.
    probed = tmp_path / "probed.html"
    page = (tmp_path / "report.html").read_text()
    probed.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            f"--window-size={WINDOW_WIDTH},2000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout).group(1)
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attributes["images"] == "4" and attributes["decoded"] == "4"
    assert attributes["sections"].split(",") == list(SECTIONS)
    assert attributes["overflowing"] == "0"
    assert int(attributes["pagewidth"]) <= WINDOW_WIDTH


def test_the_calibration_behind_labels_is_shown_with_their_card(tmp_path):
    from rlaif.judging.calibration import calibration_report

    # A judge whose p_raw is overconfident on 60 reference pairs: the fit is a real one.
    p_raw = [0.9, 0.1, 0.8, 0.3, 0.95, 0.6] * 10
    outcomes = [1, 0, 0, 0, 1, 1] * 10
    calibration = calibration_report(p_raw, outcomes, 5, 0, bias=False)
    calibration["reference"] = {"path": "ref.jsonl", "sha256": "0" * 64}
    root = tmp_path / "run"
    root.mkdir()
    write_jsonl(str(root / "prefs.jsonl"), label_rows())
    write_json(
        root / "prefs.jsonl.manifest.json",
        {
            "stage": "label",
            "diagnostics": judge_diagnostics(label_rows()),
            "calibration": calibration,
        },
    )
    page = html.unescape(render(discover(root)))
    assert page.count("Calibration on ref.jsonl (60 pairs, 5-fold held out)") == 1
    assert f"a = {calibration['fit']['a']:.3f}" in page
