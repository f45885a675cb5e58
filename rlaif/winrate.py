"""`rlaif eval winrate`: is the new policy better than the baseline, by the judge's verdict?

Both models answer every prompt with the same sampling settings and the same per-prompt seeds.
The pairs (policy answer, baseline answer) then go through `rlaif label` unchanged: each pair
is judged against sampled principles in both orders. A prompt counts as

- a **win** when both orders prefer the policy's answer, a **loss** when both prefer the
  baseline's, and a **tie** when the orders disagree (the verdict does not survive swapping the
  positions, so it says more about the judge than the answers) or the answers are identical.

The win rate counts ties as half: (W + T/2) / N, with a Wilson 95% interval on W + T/2
successes out of N. The judge's mean probability that the policy is better is reported
too. With `--rm`, each side's mean reward from a reward model is added.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rlaif.diagnostics import Judgement, wilson_interval
from rlaif.engines import EngineSettings, Sampling, make_engine, resolve_engine_name
from rlaif.errors import UserError
from rlaif.files import manifest_path, read_jsonl, write_json, write_jsonl
from rlaif.generate import derived_seed
from rlaif.label import LabelConfig
from rlaif.label import run as label_run
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, resolve_model
from rlaif.records import parse_prompt_records
from rlaif.stage import publish, run_in_chunks, settings_fingerprint

OUTCOMES = ("win", "tie", "loss")


@dataclass
class WinrateConfig:
    prompts: str
    output: str
    policy: str
    baseline: str = EMBEDDED_ALIAS
    judge_model: str = EMBEDDED_ALIAS
    constitution: str = "harmless"
    principles_per_pair: str = "1"
    reward_model: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0  # greedy by default: the comparison then has no sampling noise
    top_p: float = 1.0
    seed: int = 0
    chunk_size: int = 256
    force: bool = False
    engine: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise UserError("--temperature >= 0, --top-p in (0, 1], --max-new-tokens >= 1")
        if self.output == "-":
            raise UserError("-o: winrate keeps intermediate files beside its output; give a path")


def outcome(row: dict) -> str:
    """Win / tie / loss for the first response (the policy's) in one labelled row."""
    if row.get("identical"):
        return "tie"
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
    n = report["prompts"]
    low, high = report["win_rate_ci95"]
    lines = [
        f"win rate of the policy against the baseline over {n} prompts (ties count half):"
        f" {_pct(report['win_rate'])} (95% CI {_pct(low)}–{_pct(high)})",
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


def _answer(cfg: WinrateConfig, model, settings, records, output: Path, name: str) -> list[str]:
    """Each prompt's answer from one model, resumable; the same seed per prompt for both."""
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    engine = None

    def process(chunk, advance):
        nonlocal engine
        if engine is None:
            engine = make_engine(model.path, settings, cfg.seed)
        seeds = [derived_seed(cfg.seed, "winrate", r.id) for r in chunk]
        outs = engine.generate([r.messages for r in chunk], sampling, seeds)
        advance(len(chunk))
        return [{"id": r.id, "text": o.text} for r, o in zip(chunk, outs, strict=True)]

    fingerprint = {
        "model_sha256": model.source_sha256,
        "model": model.spec,
        "sampling": asdict(sampling),
        "seed": cfg.seed,
    }
    if output.exists():  # finished before an interruption later in the run
        return [row["text"] for _, row in read_jsonl(str(output))[0]]
    result = run_in_chunks(
        output=str(output),
        fingerprint=fingerprint,
        force=cfg.force,
        records=records,
        chunk_size=cfg.chunk_size,
        steps_per_record=1,
        process_chunk=process,
        description=f"answer ({name})",
    )
    publish(str(output), result.rows, {"stage": "winrate-answers", "fingerprint": fingerprint})
    if engine is not None:
        engine.close()
    return [row["text"] for row in result.rows]


def run(cfg: WinrateConfig) -> dict:
    started = time.time()
    rows, input_sha = read_jsonl(cfg.prompts)
    records = parse_prompt_records(cfg.prompts, rows)
    if cfg.reward_model:
        from rlaif.score import check_reward_model_folder

        check_reward_model_folder(cfg.reward_model)  # before minutes of generation
    engine_name = resolve_engine_name(cfg.engine.engine)
    if engine_name == "openai":
        # One server answers with one model; two models behind one URL cannot be told apart.
        raise UserError(
            "eval winrate runs both models here (--engine vllm or hf); --engine openai is for"
            " generate, sample and label"
        )
    settings = replace(cfg.engine, engine=engine_name)
    policy, baseline = resolve_model(cfg.policy), resolve_model(cfg.baseline)
    work = _work_dir(cfg, input_sha, policy, baseline)

    answers = {
        name: _answer(cfg, model, settings, records, work / f"{name}.jsonl", name)
        for name, model in (("policy", policy), ("baseline", baseline))
    }
    pairs = [
        {"id": r.id, "prompt": r.messages, "responses": [a, b]}
        for r, a, b in zip(records, answers["policy"], answers["baseline"], strict=True)
    ]
    judged = [p for p in pairs if p["responses"][0].strip() != p["responses"][1].strip()]
    labelled: dict[str, dict] = {}
    label_manifest = None
    if judged:
        if not (work / "pairs.jsonl").exists():
            write_jsonl(str(work / "pairs.jsonl"), judged)
        label_cfg = LabelConfig(
            pairs=str(work / "pairs.jsonl"),
            output=str(work / "labels.jsonl"),
            constitution=cfg.constitution,
            judge_model=cfg.judge_model,
            principles_per_pair=cfg.principles_per_pair,
            seed=cfg.seed,
            chunk_size=cfg.chunk_size,
            force=cfg.force,
            engine=settings,
        )
        if Path(label_cfg.output).exists():  # labelled before an interruption
            label_manifest = json.loads(Path(manifest_path(label_cfg.output)).read_text())
        else:
            label_manifest = label_run(label_cfg)
        labelled = {row["id"]: row for _, row in read_jsonl(label_cfg.output)[0]}

    out_rows = []
    for pair in pairs:
        row = labelled.get(pair["id"])
        base = {
            "id": pair["id"],
            "prompt": pair["prompt"],
            "policy_response": pair["responses"][0],
            "baseline_response": pair["responses"][1],
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
    manifest = build_manifest(
        "eval-winrate",
        cfg,
        inputs={"prompts": {"path": cfg.prompts, "sha256": input_sha}},
        models={
            "policy": policy.describe(),
            "baseline": baseline.describe(),
            "judge": (label_manifest or {}).get("models", {}).get("judge"),
            "engine": engine_name,
        },
        constitution=None,
        counts={"prompts": len(out_rows), "judged": len(judged)},
        tokens=(label_manifest or {}).get("tokens", {}),
        started=started,
        extra={
            "report": report,
            "constitution": (label_manifest or {}).get("constitution"),
            "judge_diagnostics": (label_manifest or {}).get("diagnostics"),
        },
    )
    publish(cfg.output, out_rows, manifest)
    shutil.rmtree(work, ignore_errors=True)
    print(format_report(report), file=sys.stderr)
    return manifest


def _work_dir(cfg: WinrateConfig, input_sha: str, policy, baseline) -> Path:
    """`OUT.work/`: answers and labels of this run, kept until it finishes so that a rerun
    with the same settings resumes; other settings are refused unless --force."""
    work = Path(cfg.output).with_name(Path(cfg.output).name + ".work")
    fingerprint = {
        **settings_fingerprint(cfg, "prompts"),
        "input_sha256": input_sha,
        "policy_sha256": policy.source_sha256,
        "baseline_sha256": baseline.source_sha256,
    }
    settings_file = work / "settings.json"
    if work.exists():
        if not settings_file.exists() or json.loads(settings_file.read_text()) != fingerprint:
            if not cfg.force:
                raise UserError(
                    f"{work}: an interrupted run with other settings exists; rerun with the"
                    " same settings to resume, or add --force to start over"
                )
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, fingerprint)
    return work


def _verdicts(label_row: dict) -> dict:
    return {"judgements": label_row["judgements"], "principle_ids": label_row["principle_ids"]}


def _score_rewards(path: str, rows: list[dict]) -> dict:
    from rlaif.score import RewardModel

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
