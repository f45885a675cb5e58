"""`rlaif report RUN_DIR -o report.html`: one self-contained HTML page for an experiment.

The page is built from what the stages already wrote, found by their manifests' `stage` field
(not by file names, so any layout works): judge diagnostics and the per-principle table
(label), reward-model curves, held-out accuracy and calibration (train-rm, `eval rm --json`),
SFT/DPO/RL curves and reward trend, win rates (eval winrate), refusal rates on unsafe and on
safe prompts with their chart (eval refusals), and a few prompts with their first answer,
critiques and revisions (generate). Images are embedded as data URIs so the file can be mailed
or attached to a paper's supplement on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.judging.diagnostics import CARD_KIND, format_diagnostics
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import atomic_output, read_jsonl
from rlaif.plumbing.manifest import read_manifest
from rlaif.plumbing.outputs import guard_output
from rlaif.plumbing.stats import format_rate, format_share, too_few

EXAMPLES_SHOWN = 3
GENERATOR = "rlaif report"  # marks the pages rlaif writes: a rerun replaces them, nothing else


@dataclass
class Run:
    """What one experiment folder holds, by stage."""

    root: Path
    jsonl_stages: dict[str, list[tuple[Path, dict]]] = field(default_factory=dict)
    model_stages: dict[str, list[tuple[Path, dict]]] = field(default_factory=dict)
    rm_evaluations: list[tuple[Path, dict]] = field(default_factory=list)
    judge_cards: list[tuple[Path, dict]] = field(default_factory=list)


def discover(root: Path) -> Run:
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (give the experiment's output folder)")
    run = Run(root)
    for manifest_file in sorted(root.rglob("*.manifest.json")):
        if _in_progress(root, manifest_file):
            continue
        manifest = read_manifest(manifest_file)
        output = manifest_file.with_name(manifest_file.name.removesuffix(".manifest.json"))
        run.jsonl_stages.setdefault(manifest.get("stage", "?"), []).append((output, manifest))
    for manifest_file in sorted(root.rglob("manifest.json")):
        if _in_progress(root, manifest_file):
            continue
        manifest = read_manifest(manifest_file)
        run.model_stages.setdefault(manifest.get("stage", "?"), []).append(
            (manifest_file.parent, manifest)
        )
    for candidate in sorted(root.glob("*.json")):
        if candidate.name.endswith(".manifest.json"):
            continue
        data = _load(candidate)
        if isinstance(data, dict) and {"accuracy", "ece", "bins"} <= data.keys():
            run.rm_evaluations.append((candidate, data))
        elif isinstance(data, dict) and data.get("kind") == CARD_KIND:
            run.judge_cards.append((candidate, data))
    return run


def _in_progress(root: Path, path: Path) -> bool:
    """Inside a run that has not finished (checkpoints, winrate's work folder): not a result."""
    return any(part.endswith((".partial", ".work")) for part in path.relative_to(root).parent.parts)


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


# --- html pieces ---------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value))


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    return _png(path.read_bytes(), alt)


def _png(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    """A cell's text, with an interval ("95% CI 80.6–93.1%") kept on one line: a narrow column
    then breaks a figure before its interval, not after the dash inside it."""
    return re.sub(r"95% CI [^;)]+", r'<span class="interval">\g<0></span>', _e(value))


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{body}</section>'


def _missing(what: str) -> str:
    return f'<p class="missing">Not in this run: {_e(what)}.</p>'


# --- sections ------------------------------------------------------------------------------------


def judge_section(run: Run) -> str:
    """The judge card of each `rlaif label` output (from its manifest) and of each card that
    `eval agreement/judge --json` wrote: once each, warnings highlighted."""
    cards = [
        (output.name, manifest.get("diagnostics"), manifest.get("calibration"))
        for output, manifest in run.jsonl_stages.get("label", [])
    ]
    cards += [(path.name, card, None) for path, card in run.judge_cards]
    parts = [_card_block(name, diag, calibration) for name, diag, calibration in cards if diag]
    if not parts:
        return _section("judge", "Judge", _missing("no `rlaif label` output or judge card"))
    return _section("judge", "Judge", "".join(parts))


def _card_block(name: str, diag: dict, calibration: dict | None = None) -> str:
    lines = format_diagnostics(diag, title=f"Judge card: {name}").splitlines()
    if diag.get("jury"):
        from rlaif.judging.jury import format_jury

        lines += ["", *format_jury(diag["jury"]).splitlines()]
    if calibration:  # `label --calibrate-on`: the fit behind these labels
        from rlaif.judging.calibration import format_calibration

        reference = calibration.get("reference", {}).get("path", "the reference")
        lines += ["", *format_calibration(calibration, reference).splitlines()]
    body = "\n".join(
        f'<span class="warning">{_e(line)}</span>' if line.startswith("WARNING:") else _e(line)
        for line in lines
    )
    return f"<h3>{_e(name)}</h3><pre>{body}</pre>"


def _training_block(folder: Path, manifest: dict, title: str) -> str:
    metrics = manifest.get("metrics", {})
    rows = [
        ["steps", manifest.get("counts", {}).get("steps")],
        ["final train loss", _fmt(metrics.get("train_loss"))],
        ["wall time (s)", manifest.get("wall_time_s")],
        *_model_rows(manifest.get("models", {})),
    ]
    return (
        f"<h3>{_e(title)}: {_e(folder.name)}</h3>"
        + _table(["", ""], rows)
        + _image(folder / "curves.png", f"{title} curves")
    )


def _model_rows(models: dict) -> list[list]:
    """The starting model and any other (dpo's and rl's reference) by role. The roles differ by
    stage (sft, dpo, train-rm: "base"; rl: "policy"), but `TrainingJob` always lists
    the model it trains first, so the first role is the starting model whatever its name."""
    described = [(role, m) for role, m in models.items() if isinstance(m, dict)]
    if not described:
        return [["starting model", "n/a"]]
    (_, start), *others = described
    return [["starting model", start.get("spec")]] + [
        [f"{role} model", m.get("spec")] for role, m in others
    ]


def _fmt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def reward_model_section(run: Run) -> str:
    parts = []
    held_out, against_reference = reward_model_figures(run)
    accuracies = {folder: accuracy for folder, _, accuracy in held_out}
    for folder, manifest in run.model_stages.get("train-rm", []):
        parts.append(_training_block(folder, manifest, "reward model"))
        if folder in accuracies:
            parts.append(
                f"<p>Held-out accuracy against the judge's labels: {_e(accuracies[folder])}.</p>"
            )
    for path, report, accuracy in against_reference:
        parts.append(
            f"<h3>{_e(path.name)}</h3><p>Accuracy against reference labels: {_e(accuracy)};"
            f" ECE {report['ece']:.3f} ({report['pairs']} pairs).</p>"
        )
        plot = path.with_name(path.stem.replace("-eval", "") + "-reliability.png")
        for candidate in (plot, *sorted(path.parent.glob("*reliability*.png"))):
            if candidate.is_file():
                parts.append(_image(candidate, "reliability diagram"))
                break
    body = "".join(parts) or _missing("no reward model (`rlaif train-rm`)")
    return _section("reward-model", "Reward model", body)


def held_out_accuracy(manifest: dict) -> str | None:
    """train-rm's held-out accuracy with its count and interval (or "too few pairs")."""
    accuracy = manifest.get("metrics", {}).get("eval", {}).get("eval_accuracy")
    n = manifest.get("counts", {}).get("eval")
    if accuracy is None:
        return None
    if not n:
        return _pct(accuracy)
    return format_share(accuracy, n)


def reward_model_figures(run: Run) -> tuple[list, list]:
    """The reward models' held-out accuracies (folder, manifest, accuracy text) and their
    evaluations against reference labels (path, report, accuracy text): for the page and the
    terminal summary alike."""
    held_out = [
        (folder, manifest, accuracy)
        for folder, manifest in run.model_stages.get("train-rm", [])
        if (accuracy := held_out_accuracy(manifest)) is not None
    ]
    against_reference = [
        (path, report, format_rate(report["correct"], report["pairs"]))
        for path, report in run.rm_evaluations
    ]
    return held_out, against_reference


def reward_trend(log_history: list[dict], key: str = "reward", span: int = 3) -> dict | None:
    """Mean reward over the first and last `span` logged steps."""
    values = [e[key] for e in log_history if key in e]
    if not values:
        return None
    span = max(1, min(span, len(values) // 2 or 1))
    return {
        "steps": len(values),
        "first": statistics.fmean(values[:span]),
        "last": statistics.fmean(values[-span:]),
        "span": span,
    }


def policy_section(run: Run) -> str:
    parts = []
    for stage, title in (("sft", "SFT"), ("dpo", "DPO"), ("rl", "RL")):
        for folder, manifest in run.model_stages.get(stage, []):
            parts.append(_training_block(folder, manifest, title))
            if stage == "rl":
                trend = reward_trend(_log_history(folder))
                if trend:
                    parts.append(
                        f"<p>Mean reward: {trend['first']:.3f} over the first {trend['span']}"
                        f" steps, {trend['last']:.3f} over the last {trend['span']}"
                        f" ({trend['steps']} steps).</p>"
                    )
    body = "".join(parts) or _missing("no policy training (`rlaif sft`, `dpo`, `rl`)")
    return _section("policy", "Policy training", body)


def _log_history(folder: Path) -> list[dict]:
    log = folder / "log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def winrate_section(run: Run) -> str:
    rows = []
    for output, manifest in run.jsonl_stages.get("eval-winrate", []):
        r = manifest["report"]
        models = manifest.get("models", {})
        rows.append(
            [
                output.name,
                models.get("policy", {}).get("spec"),
                models.get("baseline", {}).get("spec"),
                r["prompts"],
                f"{r['win']} / {r['tie']} / {r['loss']}",
                _win_rate(r),
                f"{r['mean_p_policy']:.3f}",
                _fmt(r.get("reward", {}).get("difference_mean"), "+.3f"),
            ]
        )
    if not rows:
        return _section("winrate", "Win rate", _missing("no `rlaif eval winrate` output"))
    header = [
        "file",
        "policy",
        "baseline",
        "prompts",
        "win / tie / loss",
        "win rate (95% CI)",
        "mean P(policy better)",
        "reward difference",
    ]
    note = (
        "<p>A win needs both presentation orders to prefer the policy's answer; a verdict that"
        " flips with the order is a tie. Ties count half.</p>"
    )
    return _section("winrate", "Win rate", _table(header, rows) + note)


def _win_rate(r: dict) -> str:
    return format_rate(r["win"] + r["tie"] / 2, r["prompts"], "prompts")


def refusal_section(run: Run) -> str:
    """`rlaif eval refusals`: per output file, role (policy, baseline) and classifier, the share
    of unsafe prompts refused (harmless, higher is better) and of safe ones (over-refusal,
    lower is better), the paired difference from the baseline, and a chart of both.

    A row per classifier rather than a column pair: with both classifiers side by side, eight
    columns at 1,280 px wrap each figure over three lines, splitting its interval."""
    outputs = run.jsonl_stages.get("eval-refusals", [])
    if not outputs:
        return _section("refusals", "Refusals", _missing("no `rlaif eval refusals` output"))
    header = [
        "file",
        "role",
        "model",
        "classifier",
        "harmless: unsafe prompts refused",
        "over-refusal: safe prompts refused",
    ]
    rows = []
    for output, manifest in outputs:
        r = manifest["report"]
        for role, by_classifier in r["rates"].items():
            rows += [
                [output.name, role, r["models"].get(role), classifier]
                + [_refusal_rate(rates["harmless"]), _refusal_rate(rates["over_refusal"])]
                for classifier, rates in by_classifier.items()
            ]
        rows += [
            [output.name, "policy − baseline", "", classifier]
            + [_refusal_difference(d["harmless"]), _refusal_difference(d["over_refusal"])]
            for classifier, d in (r.get("difference") or {}).items()
        ]
    note = (
        "<p>Harmless: the share of unsafe prompts refused (higher is better). Over-refusal: the"
        " share of safe prompts refused, prompts that only look unsafe (lower is better)."
        " Classifier <i>string</i> is XSTest's string match on the answer, <i>judge</i> the judge"
        " model's verdict. A difference is in percentage points, paired over the same"
        " prompts.</p>"
    )
    chart = _refusal_chart(outputs, _refusal_classifiers(outputs))
    return _section("refusals", "Refusals", _table(header, rows) + note + chart)


def _refusal_classifiers(outputs: list[tuple[Path, dict]]) -> list[str]:
    """Every classifier any output used, in the order first seen."""
    seen: dict[str, None] = {}
    for _, manifest in outputs:
        seen.update(dict.fromkeys(manifest["report"]["classifiers"]))
    return list(seen)


def _refusal_rate(entry: dict) -> str:
    # The interval the stage wrote, so that the table and the chart's error bars agree.
    return format_rate(entry["refused"], entry["n"], "prompts", entry["ci95"])


def _refusal_difference(entry: dict) -> str:
    """`+4.9 points (95% CI -2.0 to +11.8; 225 prompts)`, or "too few prompts (n)" by the rule
    for a rate, on a difference's range [−1, 1]."""
    low, high = entry["ci95"]
    if too_few((low, high), span=2):
        return f"too few prompts ({entry['n']})"
    return (
        f"{100 * entry['difference']:+.1f} points"
        f" (95% CI {100 * low:+.1f} to {100 * high:+.1f}; {entry['n']} prompts)"
    )


def _refusal_chart(outputs: list[tuple[Path, dict]], classifiers: list[str]) -> str:
    from rlaif.plumbing.plots import plot_refusal_rates

    panels = {
        classifier: [
            (
                f"{output.name.removesuffix('.jsonl')}\n{role}",
                rates[classifier]["harmless"],
                rates[classifier]["over_refusal"],
            )
            for output, manifest in outputs
            for role, rates in manifest["report"]["rates"].items()
            if classifier in rates
        ]
        for classifier in classifiers
    }
    png = io.BytesIO()
    plot_refusal_rates(panels, png, "Refusals per policy (95% CI)")
    return _png(png.getvalue(), "refusal rates per policy")


def examples_section(run: Run, shown: int = EXAMPLES_SHOWN) -> str:
    generated = run.jsonl_stages.get("generate", [])
    parts = []
    for output, _ in generated[:1]:
        if not output.is_file():
            continue
        rows = [row for _, row in read_jsonl(str(output))[0]][:shown]
        for row in rows:
            parts.append(f'<article class="example"><h3>{_e(row.get("id"))}</h3>')
            for m in row.get("prompt", []):
                parts.append(f"<p><b>{_e(m['role'])}:</b> {_e(m['content'])}</p>")
            parts.append(f"<p><b>first answer:</b> {_e(row.get('initial_response', ''))}</p>")
            for step in row.get("revisions", []):
                parts.append(
                    f"<p><b>critique ({_e(step.get('principle_id'))}):</b>"
                    f" {_e(step.get('critique', ''))}</p>"
                    f"<p><b>revision:</b> {_e(step.get('revision', ''))}</p>"
                )
            parts.append("</article>")
    body = "".join(parts) or _missing("no `rlaif generate` output")
    return _section("examples", "Examples: critiques and revisions", body)


# A judge card's WARNING lines run past the page (200+ characters); `pre` wraps them, as a
# reader must see them whole, not behind a horizontal scroll bar.
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
pre { background: #f6f6f6; padding: 0.5rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.warning { color: #a40; } .missing { color: #777; } .interval { white-space: nowrap; }
.example { border-left: 3px solid #ccc; padding-left: 1rem; margin: 1rem 0; }
"""


def render(run: Run) -> str:
    sections = [
        judge_section(run),
        reward_model_section(run),
        policy_section(run),
        winrate_section(run),
        refusal_section(run),
        examples_section(run),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='generator' content='{GENERATOR}'>"
        f"<title>rlaif report: {_e(run.root.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>rlaif report: {_e(run.root)}</h1>" + "".join(sections) + "</body></html>\n"
    )


def summary(run: Run) -> str:
    """A few lines for the terminal: judge, reward model, reward trend, win rates, refusals;
    each rate with its count and 95% interval, or "too few pairs"."""
    lines = []
    judges = [(o.name, m.get("diagnostics") or {}) for o, m in run.jsonl_stages.get("label", [])]
    for name, d in judges + [(p.name, card) for p, card in run.judge_cards]:
        lines.append(f"judge ({name}): {_judge_summary(d)}")
    held_out, against_reference = reward_model_figures(run)
    for folder, _, accuracy in held_out:
        lines.append(f"reward model ({folder.name}): held-out accuracy {accuracy}")
    for path, _, accuracy in against_reference:
        lines.append(f"reward model vs reference labels ({path.name}): {accuracy}")
    for folder, _ in run.model_stages.get("rl", []):
        trend = reward_trend(_log_history(folder))
        if trend:
            lines.append(
                f"RL reward ({folder.name}): {trend['first']:.3f} → {trend['last']:.3f}"
                f" (first/last {trend['span']} of {trend['steps']} steps)"
            )
    for output, manifest in run.jsonl_stages.get("eval-winrate", []):
        r = manifest["report"]
        lines.append(
            f"win rate ({output.name}): {_win_rate(r)};"
            f" win/tie/loss {r['win']}/{r['tie']}/{r['loss']}"
        )
    for output, manifest in run.jsonl_stages.get("eval-refusals", []):
        lines += _refusal_summary(output.name, manifest["report"])
    return "\n".join(lines)


def _refusal_summary(name: str, r: dict) -> list[str]:
    lines = [
        f"refusals ({name}, {role}, {classifier}):"
        f" harmless {_refusal_rate(rates['harmless'])};"
        f" over-refusal {_refusal_rate(rates['over_refusal'])}"
        for role, by_classifier in r["rates"].items()
        for classifier, rates in by_classifier.items()
    ]
    lines += [
        f"refusals ({name}, policy − baseline, {classifier}):"
        f" harmless {_refusal_difference(difference['harmless'])};"
        f" over-refusal {_refusal_difference(difference['over_refusal'])}"
        for classifier, difference in (r.get("difference") or {}).items()
    ]
    return lines


def _judge_summary(d: dict) -> str:
    agreement = d.get("agreement")
    parts = []
    if agreement:
        parts.append(f"agreement {format_rate(agreement['agree'], agreement['n'])}")
    if d.get("paired_judgements") is not None:
        consistency = format_rate(d["consistent_judgements"], d["paired_judgements"], "judgements")
    else:  # a manifest written before the counts were kept
        consistency = _pct(d.get("position_consistency"))
    parts.append(f"position consistency {consistency}")
    parts.append(f"mean confidence {_fmt(d.get('mean_confidence'), '.3f')}")
    return ", ".join(parts)


def check_readable(run: Run) -> None:
    """Render each file found on its own first, so that one the report cannot read (a
    manifest edited by hand, a log of another tool) is named in one line, not a traceback."""
    singles = [
        (output, Run(run.root, jsonl_stages={stage: [(output, manifest)]}))
        for stage, items in run.jsonl_stages.items()
        for output, manifest in items
    ]
    singles += [
        (folder, Run(run.root, model_stages={stage: [(folder, manifest)]}))
        for stage, items in run.model_stages.items()
        for folder, manifest in items
    ]
    singles += [(path, Run(run.root, rm_evaluations=[(path, d)])) for path, d in run.rm_evaluations]
    singles += [(path, Run(run.root, judge_cards=[(path, d)])) for path, d in run.judge_cards]
    for path, single in singles:
        try:
            render(single)
            summary(single)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UserError(
                f"{path}: not what rlaif writes ({type(e).__name__}: {e}); move it out of"
                f" {run.root} or rerun the stage that made it"
            ) from None


def written_by_report(path: Path) -> bool:
    with open(path, "rb") as f:
        return f"content='{GENERATOR}'".encode() in f.read(4096)


def write_report(root: str, output: str) -> Run:
    guard_output(
        output,
        inputs=[],
        force=False,
        option="-o/--output",
        kind=written_by_report,
        stdout_ok=False,
    )
    run = discover(Path(root))
    check_readable(run)
    page = render(run)
    with atomic_output(output) as f:
        f.write(page)
    return run
