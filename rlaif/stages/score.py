"""`rlaif score` and `rlaif eval rm`: a reward model's rewards, accuracy and calibration."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from rlaif.plumbing.errors import UserError, at
from rlaif.plumbing.files import folder_digest, read_jsonl
from rlaif.plumbing.manifest import build_manifest
from rlaif.plumbing.options import option, output_option
from rlaif.plumbing.outputs import (
    guard_output,
    json_report_written_by_rlaif,
    one_run,
    png_written_by_rlaif,
)
from rlaif.plumbing.pairs import parse_pair_records
from rlaif.plumbing.records import parse_prompt_records
from rlaif.plumbing.stats import (
    calibration_bins,
    expected_calibration_error,
    format_rate,
    too_few,
    wilson_interval,
)
from rlaif.stages.runner import publish
from rlaif.training.preference_data import is_labelled_row
from rlaif.training.reward_model import RewardModel, check_reward_model_folder

RM_HELP = "Reward model folder (from train-rm)."
BATCH_HELP = "Sequences per forward pass."


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def rm_report(r_first: list[float], r_second: list[float], reference: list[int]) -> dict:
    """Accuracy (with Wilson 95% CI) and calibration of σ(r_a − r_b) against the references."""
    probs = [sigmoid(a - b) for a, b in zip(r_first, r_second, strict=True)]  # P(first better)
    outcomes = [1 if ref == 0 else 0 for ref in reference]
    correct = sum((p > 0.5) == bool(y) for p, y in zip(probs, outcomes, strict=True))
    ties = sum(p == 0.5 for p in probs)
    # Each pair counted in both orders: inputs usually list the preferred response first, which
    # would leave every outcome 1 and the diagram degenerate; symmetrised, it spans [0, 1].
    bins = calibration_bins(probs + [1 - p for p in probs], outcomes + [1 - y for y in outcomes])
    n = len(probs)
    return {
        "pairs": n,
        "accuracy": correct / n if n else None,
        "correct": correct,
        "ties": ties,
        "ci95": list(wilson_interval(correct, n)),
        "too_few": too_few(wilson_interval(correct, n)),
        "mean_margin": sum(abs(a - b) for a, b in zip(r_first, r_second, strict=True)) / max(n, 1),
        "ece": expected_calibration_error(bins),
        "bins": bins,
    }


def format_rm_report(report: dict) -> str:
    n = report["pairs"]
    return (
        f"reward model accuracy  {format_rate(report['correct'], n)}, {report['ties']} ties\n"
        f"mean |reward margin|   {report['mean_margin']:.3f} ({n} pairs)\n"
        f"calibration (ECE)      {report['ece']:.3f} ({n} pairs, each in both orders;"
        f" {len(report['bins'])} bins)"
    )


def _is_chat(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    )


def label_row(path: str, line: int, row: dict, *, pair: bool = False) -> tuple[list, list[str]]:
    """The prompt and responses of an `rlaif label` row, checked: a row edited by hand fails
    here, naming its line, before the reward model loads. `pair`: exactly two responses (eval
    rm compares them)."""
    prompt, responses = row.get("prompt"), row.get("responses")
    if not _is_chat(prompt):
        raise at(path, line, "'prompt' of a label row must be a list of chat messages")
    if not (
        isinstance(responses, list) and responses and all(isinstance(r, str) for r in responses)
    ):
        raise at(path, line, "'responses' of a label row must be a list of texts")
    if pair and len(responses) != 2:
        raise at(path, line, "'responses' of a label row must be two texts, to compare")
    return prompt, list(responses)


@dataclass(kw_only=True)
class EvalRMConfig:
    """Reward-model accuracy against reference labels (95% CI) and its calibration (ECE).

    Examples:

      rlaif eval rm --rm rm ../shared/data/hh-harmless-dev.jsonl --plot reliability.png
    """

    pairs: str = option(help="Pairs with a reference preference (HH-RLHF too).", argument=True)
    rm: str = option(help=RM_HELP, flags=("--rm",))
    plot: str | None = option(None, help="Write a reliability diagram (PNG) here.")
    json_out: str | None = option(None, help="Write the report as JSON.", flags=("--json",))
    batch_size: int = option(8, help=BATCH_HELP)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")


@one_run
def evaluate_rm(cfg: EvalRMConfig) -> dict:
    for path, name, ours in (
        (cfg.plot, "--plot", png_written_by_rlaif),
        (cfg.json_out, "--json", json_report_written_by_rlaif),
    ):
        if path:
            guard_output(
                path, inputs=[cfg.pairs], force=False, option=name, kind=ours, stdout_ok=False
            )
    check_reward_model_folder(cfg.rm)
    rows, _ = read_jsonl(cfg.pairs)
    pairs = []
    for line, row in rows:
        if is_labelled_row(row):  # `rlaif label` output: its reference is the input's label
            if row.get("reference") is None:
                continue
            if row["reference"] not in (0, 1) or isinstance(row["reference"], bool):
                raise at(cfg.pairs, line, "'reference' of a label row must be 0 or 1")
            prompt, responses = label_row(cfg.pairs, line, row, pair=True)
            pairs.append((prompt, responses, row["reference"]))
    others = [(line, row) for line, row in rows if not is_labelled_row(row)]
    for record in parse_pair_records(cfg.pairs, others) if others else []:
        if record.reference is not None and not record.identical:
            pairs.append((record.prompt, record.responses, record.reference))
    if not pairs:
        raise at(cfg.pairs, None, "no pairs with a reference preference to evaluate against")
    rm = RewardModel(cfg.rm, cfg.batch_size)
    chats = [prompt + [{"role": "assistant", "content": r}] for prompt, rs, _ in pairs for r in rs]
    rewards = rm.score(chats)
    report = rm_report(rewards[0::2], rewards[1::2], [ref for _, _, ref in pairs])
    if cfg.plot:
        from rlaif.plumbing.plots import plot_reliability

        plot_reliability(report["bins"], cfg.plot, "reward model calibration")
    print(format_rm_report(report))
    if cfg.json_out:
        from rlaif.plumbing.files import write_json

        write_json(cfg.json_out, report)
    return report


@dataclass(kw_only=True)
class ScoreConfig:
    """Add the reward model's reward to each response.

    Rows with one `response` get `reward`; pairs (`responses`, chosen/rejected) get `rewards`.

    Examples:

      rlaif score --rm rm pairs.jsonl -o scored.jsonl
    """

    input: str = option(help="JSONL: prompt with response(s), or pairs.", argument=True)
    rm: str = option(help=RM_HELP, flags=("--rm",))
    output: str = output_option()
    batch_size: int = option(8, help=BATCH_HELP)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")


@one_run
def score_file(cfg: ScoreConfig) -> dict:
    """Add rewards: `reward` per response (a `rewards` list for rows with several)."""
    started = time.time()
    check_reward_model_folder(cfg.rm)
    guard = guard_output(cfg.output, inputs=[cfg.input], force=False, option="-o/--output")
    rows, input_sha = read_jsonl(cfg.input)
    fingerprint = {
        "input_sha256": input_sha,
        "rm_sha256": folder_digest(cfg.rm),
        "batch_size": cfg.batch_size,
    }
    existing = guard.up_to_date(fingerprint)
    if existing is not None:
        return existing
    items: list[tuple[dict, list[dict], list[str]]] = []  # (row, prompt, responses)
    for line, row in rows:
        if is_labelled_row(row):
            items.append((row, *label_row(cfg.input, line, row)))
        elif "responses" in row or ("chosen" in row and "rejected" in row):
            [record] = parse_pair_records(cfg.input, [(line, row)])
            items.append((row, record.prompt, list(record.responses)))
        elif "response" in row:
            [record] = parse_prompt_records(cfg.input, [(line, {"prompt": row.get("prompt")})])
            items.append((row, record.messages, [row["response"]]))
        else:
            raise at(
                cfg.input,
                line,
                "expected a prompt with 'response', 'responses' or 'chosen'/'rejected'",
            )
    rm = RewardModel(cfg.rm, cfg.batch_size)
    chats = [p + [{"role": "assistant", "content": r}] for _, p, rs in items for r in rs]
    rewards = iter(rm.score(chats))
    out_rows = []
    for row, _, responses in items:
        values = [next(rewards) for _ in responses]
        extra = {"reward": values[0]} if len(values) == 1 else {"rewards": values}
        out_rows.append({**row, **extra, "reward_model": cfg.rm})
    manifest = build_manifest(
        "score",
        cfg,
        inputs={"input": {"path": cfg.input, "sha256": input_sha}},
        models={"reward_model": cfg.rm},
        constitution=None,
        counts={"rows": len(out_rows), "responses": len(chats)},
        tokens={},
        started=started,
        extra={"fingerprint": fingerprint},
    )
    publish(cfg.output, out_rows, manifest)
    return manifest
