"""`rlaif eval winrate`: is the new policy better than the baseline, by the judge's verdict?

Both models answer every prompt with the same sampling settings and the same per-prompt seeds.
The pairs (policy answer, baseline answer) then go through `rlaif label` unchanged: each pair
is judged against sampled principles in both orders. A prompt counts as

- a **win** when both orders prefer the policy's answer, a **loss** when both prefer the
  baseline's, and a **tie** when the orders disagree (the verdict does not survive swapping the
  positions, so it says more about the judge than the answers) or the answers are identical.

With `--method rating` each answer is rated alone (the scorer `label --method rating` and
`rl --reward judge` use): no order exists, so a prompt is a win when p > 0.5, a loss when
p < 0.5 and a tie only at exactly 0.5 or for identical answers.

The win rate counts ties as half: (W + T/2) / N, with a Wilson 95% interval on W + T/2
successes out of N. The judge's mean probability that the policy is better is reported
too. With `--rm`, each side's mean reward from a reward model is added.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass

from rlaif.engines import EngineSettings, Sampling
from rlaif.judging.constitution import constitution_option
from rlaif.judging.diagnostics import Judgement, judge_diagnostics, wilson_interval
from rlaif.judging.judge import JudgingSettings, judge_chunk
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import EMBEDDED_ALIAS
from rlaif.plumbing.options import group, option, output_option
from rlaif.plumbing.outputs import one_run
from rlaif.plumbing.pairs import PairRecord
from rlaif.plumbing.records import parse_prompt_records
from rlaif.stages.runner import (
    RecordSettings,
    RecordStage,
    StageInput,
    answer_records,
    local_engines,
    work_dir,
)

OUTCOMES = ("win", "tie", "loss")


@dataclass(kw_only=True)
class WinrateConfig(RecordSettings):
    """Win rate of a policy against a baseline, judged against the constitution.

    Both models answer each prompt with the same settings and seeds; the judge compares each
    pair in both orders. A win must hold in both orders; a verdict that flips with the order
    is a tie. Prints win/tie/loss with 95% intervals; the rows (answers, verdicts) go to -o
    and the report to its manifest.

    Examples:

      rlaif eval winrate examples/prompts.jsonl --policy dpo-model -o winrate.jsonl

      rlaif eval winrate prompts.jsonl --policy rl-model --baseline sft-model --rm rm -o wr.jsonl
    """

    prompts: str = option(help="JSONL of prompts, as for generate.", argument=True)
    output: str = output_option("JSONL of compared answers and verdicts.")
    policy: str = option(help="The model under test: HF folder (e.g. from dpo/rl), hub id, alias.")
    baseline: str = option(
        EMBEDDED_ALIAS, help="The model to beat (default: the embedded starting model)."
    )
    judge_model: str = option(EMBEDDED_ALIAS, help="Judge: HF folder, hub id, .gguf or alias.")
    constitution: str = constitution_option()
    judging: JudgingSettings = group(JudgingSettings, only=("principles_per_pair", "method", "tau"))
    reward_model: str | None = option(
        None, help="Also report each side's mean reward.", flags=("--rm",)
    )
    max_new_tokens: int = option(128, help="Longest answer.")
    # greedy by default: the comparison then has no sampling noise
    temperature: float = option(0.0, help="Sampling temperature for both models (0: greedy).")
    top_p: float = option(1.0, help="Nucleus sampling mass.")
    # One server answers with one model; the policy, baseline and judge run here.
    engine: EngineSettings = local_engines()

    def __post_init__(self):
        super().__post_init__()
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise UserError("--temperature >= 0, --top-p in (0, 1], --max-new-tokens >= 1")
        if self.output == "-":
            raise UserError("-o: winrate keeps intermediate files beside its output; give a path")


def outcome(row: dict) -> str:
    """Win / tie / loss for the first response (the policy's) in one labelled row."""
    if row.get("identical"):
        return "tie"
    if row.get("method") == "rating":  # pointwise: no order to survive, p decides
        return "win" if row["p"] > 0.5 else "loss" if row["p"] < 0.5 else "tie"
    judgements = [Judgement.from_dict(j) for j in row["judgements"]]
    paired = [j for j in judgements if j.paired]
    if not paired:
        return "tie"
    p_ab = statistics.fmean(j.p_ab for j in paired)
    p_ba = statistics.fmean(j.p_ba for j in paired)
    if p_ab > 0.5 and p_ba > 0.5:
        return "win"
    if p_ab < 0.5 and p_ba < 0.5:
        return "loss"
    return "tie"


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval (a single value: the point itself)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = z * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def winrate_report(rows: list[dict], rewards: dict | None = None) -> dict:
    """The figures of a winrate run from its rows (each with `outcome` and `p`)."""
    n = len(rows)
    if n == 0:
        raise UserError("no prompts to compare")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    rate = (counts["win"] + counts["tie"] / 2) / n
    # Wilson's interval on W + T/2 "successes" of N: conservative (a tie varies less than a
    # coin flip) and, unlike mean ± 1.96·sd/√N, it does not shrink to a point when every
    # verdict is the same, e.g. all ties from a judge that cannot tell the answers apart.
    low, high = wilson_interval(counts["win"] + counts["tie"] / 2, n)
    decisive = counts["win"] + counts["loss"]
    p_mean, p_low, p_high = mean_interval([r["p"] for r in rows])
    report = {
        "prompts": n,
        **counts,
        "win_rate": rate,
        "win_rate_ci95": [low, high],
        "decisive": decisive,
        "win_share_of_decisive": counts["win"] / decisive if decisive else None,
        "win_share_of_decisive_ci95": list(wilson_interval(counts["win"], decisive))
        if decisive
        else None,
        "mean_p_policy": p_mean,
        "mean_p_policy_ci95": [p_low, p_high],
    }
    if rewards is not None:
        diffs = [r["reward_policy"] - r["reward_baseline"] for r in rows]
        d_mean, d_low, d_high = mean_interval(diffs)
        report["reward"] = {
            "policy_mean": statistics.fmean(r["reward_policy"] for r in rows),
            "baseline_mean": statistics.fmean(r["reward_baseline"] for r in rows),
            "difference_mean": d_mean,
            "difference_ci95": [d_low, d_high],
            **rewards,
        }
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_report(report: dict) -> str:
    from rlaif.plumbing.stats import format_rate  # the win rate with its n and 95% CI, or "too few"

    n = report["prompts"]
    lines = [
        f"win rate of the policy against the baseline over {n} prompts (ties count half):"
        f" {format_rate(report['win'] + report['tie'] / 2, n, 'prompts')}",
        f"  win {report['win']} ({_pct(report['win'] / n)}) | tie {report['tie']}"
        f" ({_pct(report['tie'] / n)}) | loss {report['loss']} ({_pct(report['loss'] / n)})",
    ]
    if report["decisive"]:
        d_low, d_high = report["win_share_of_decisive_ci95"]
        lines.append(
            f"  decisive verdicts: {report['decisive']}; policy won"
            f" {_pct(report['win_share_of_decisive'])} of them"
            f" (95% CI {_pct(d_low)}–{_pct(d_high)})"
        )
    p_low, p_high = report["mean_p_policy_ci95"]
    lines.append(
        f"  judge's mean P(policy better) {report['mean_p_policy']:.3f}"
        f" (95% CI {p_low:.3f}–{p_high:.3f})"
    )
    if report["tie"] > n / 2:
        lines.append(
            "  WARNING: most verdicts are ties: the judge's choice flips when the answers swap"
            " places (position bias) or the answers are identical; the win rate says little."
        )
    if "reward" in report:
        r = report["reward"]
        lines.append(
            f"  reward model: policy {r['policy_mean']:.3f}, baseline {r['baseline_mean']:.3f},"
            f" difference {r['difference_mean']:+.3f}"
            f" (95% CI {r['difference_ci95'][0]:+.3f} to {r['difference_ci95'][1]:+.3f})"
        )
    return "\n".join(lines)


def _judge(stage: RecordStage, pairs: list[PairRecord]) -> dict[str, dict]:
    cfg = stage.cfg

    def process(chunk, progress):
        judge = stage.engine("judge", share=1.0)
        return judge_chunk(
            chunk, judge, cfg.judging, cfg.seed, stage.constitution, stage.tokens, progress
        )

    output = str(work_dir(cfg.output) / "labels.jsonl")
    result = stage.run_chunks(
        pairs, process, unit="pair", output=output, description="judge", phase="judge"
    )
    stage.close_engines()
    return {row["id"]: row for row in result.rows}


@one_run
def run(cfg: WinrateConfig) -> dict:
    if cfg.engine.engine == "openai":
        raise UserError(
            "eval winrate runs both models here (--engine vllm or hf); --engine openai is for"
            " generate, sample and label"
        )
    if cfg.reward_model:
        from rlaif.training.reward_model import check_reward_model_folder

        check_reward_model_folder(cfg.reward_model)  # before minutes of generation
    with RecordStage(
        "eval-winrate",
        cfg,
        StageInput("prompts", cfg.prompts, parse_prompt_records),
        models={"policy": cfg.policy, "baseline": cfg.baseline, "judge": cfg.judge_model},
        constitution=cfg.constitution,
    ) as stage:
        if stage.up_to_date:
            return stage.up_to_date
        records = stage.records
        sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        answers = {
            role: answer_records(stage, role, sampling, "winrate")
            for role in ("policy", "baseline")
        }
        pairs = [
            PairRecord(r.id, r.messages, (a, b), None, "winrate", r.line)
            for r, a, b in zip(records, answers["policy"], answers["baseline"], strict=True)
        ]
        judged = [p for p in pairs if p.responses[0].strip() != p.responses[1].strip()]
        labelled = _judge(stage, judged) if judged else {}

        out_rows = []
        for pair in pairs:
            row = labelled.get(pair.id)
            if row is not None:
                row = policy_first(row, pair.responses[0])
            base = {
                "id": pair.id,
                "prompt": pair.prompt,
                "policy_response": pair.responses[0],
                "baseline_response": pair.responses[1],
            }
            if row is None:  # identical answers: nothing to judge
                out_rows.append({**base, "p": 0.5, "identical": True, "judgements": []})
            else:
                out_rows.append({**base, "p": row["p"], "identical": False, **_verdicts(row)})
        for row in out_rows:
            row["outcome"] = outcome(row)

        rewards = None
        if cfg.reward_model:
            rewards = _score_rewards(cfg.reward_model, out_rows)
        report = winrate_report(out_rows, rewards)
        manifest = stage.publish(
            out_rows,
            work=True,  # the answers in OUT.work/ go as the output appears
            counts={"prompts": len(out_rows), "judged": len(judged)},
            report=report,
            judge_diagnostics=judge_diagnostics(list(labelled.values())) if labelled else None,
        )
    print(format_report(report), file=sys.stderr)
    return manifest


def policy_first(row: dict, policy_answer: str) -> dict:
    """A label row seen from the policy's side. The judging shows each pair in a seeded random
    order and writes its row in that order, so in about half of the rows responses[0] is the
    baseline's answer: there p, each order's p and the scores are the baseline's, and are
    turned round here (P(policy) shown first = 1 − P(baseline) shown second)."""
    if row["responses"][0] == policy_answer:
        return row
    judgements = []
    for j in row["judgements"]:
        flipped = {**j, "p": 1.0 - j["p"]}
        flipped["p_ab"] = None if j.get("p_ba") is None else 1.0 - j["p_ba"]
        flipped["p_ba"] = None if j.get("p_ab") is None else 1.0 - j["p_ab"]
        if "scores" in j:
            flipped["scores"] = j["scores"][::-1]
        judgements.append(flipped)
    return {
        **row,
        "p": 1.0 - row["p"],
        "responses": row["responses"][::-1],
        "judgements": judgements,
    }


def _verdicts(label_row: dict) -> dict:
    return {
        "judgements": label_row["judgements"],
        "principle_ids": label_row["principle_ids"],
        "method": label_row["method"],
    }


def _score_rewards(path: str, rows: list[dict]) -> dict:
    from rlaif.training.reward_model import RewardModel

    model = RewardModel(path)
    chats = [
        [*r["prompt"], {"role": "assistant", "content": r[side]}]
        for r in rows
        for side in ("policy_response", "baseline_response")
    ]
    scores = model.score(chats)
    for i, r in enumerate(rows):
        r["reward_policy"], r["reward_baseline"] = scores[2 * i], scores[2 * i + 1]
    return {"reward_model": path}
