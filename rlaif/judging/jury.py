"""Juries: several judges label the same pairs, and the label combines their log-odds.

A panel of small judges can beat one large judge at lower cost and with less self-preference
(Verga et al. 2024, "Replacing Judges with Juries"). `rlaif label --judge-model` takes several
judges, each as one of:

    MODEL                           a model spec, as for one judge (alias, folder, hub id, .gguf)
    MODEL engine=hf|vllm|openai     that judge on its own engine
    MODEL base-url=URL              that judge on its own OpenAI-compatible server (engine=openai)

given once per `--judge-model`, or as lines of a file (blank lines and `#` comments skipped).
The stage's engine options (`--engine`, `--base-url`, `--dtype`, ...) apply to every judge
unless its line says otherwise.

Every judge sees the same pairs, in the same seeded order, against the same sampled principles;
the row's p combines the judges' p's by their mean log-odds, σ(mean logit p_k).

Why the mean log-odds and not the mean probability: on synthetic judges of known quality
(`simulate` in tests/test_jury.py) it gave the lower log-loss against the truth in 6 of 7 juries,
e.g. 0.404 vs 0.473 for a strong judge beside one at chance, with the same agreement: the
log-odds mean lets a confident judge keep its confidence next to one that knows nothing, where
the mean probability halves it. The whole table: docs/judges.md, "Why a jury averages log-odds".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rlaif.engines import ENGINE_CHOICES, EngineSettings
from rlaif.judging.diagnostics import agreement_cell, consistency_cell, judge_diagnostics
from rlaif.judging.judge import (
    JudgingSettings,
    judge_chunk,
    mean_scores,
    rating_row,
    rating_scores,
    too_long,
)
from rlaif.judging.rating import best_and_worst
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import EMBEDDED_ALIAS
from rlaif.plumbing.options import option
from rlaif.plumbing.progress import Progress
from rlaif.plumbing.stats import cohen_kappa, format_rate, kappa_interval, logit, sigmoid, too_few

COMBINE = "mean log-odds"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Judge:
    """One juror: a model spec and, where its line says so, its own engine or server."""

    model: str
    engine: str | None = None
    base_url: tuple[str, ...] | None = None

    def settings(self, stage: EngineSettings) -> EngineSettings | None:
        """Its engine settings, or None when the stage's apply unchanged."""
        if self.engine is None and self.base_url is None:
            return None
        return replace(stage, engine=self.engine or stage.engine, base_url=self.base_url)


def parse_judge(text: str, where: str) -> Judge:
    """`MODEL [engine=NAME] [base-url=URL]` (see the module)."""
    model, *extras = text.split()
    engine, urls = None, []
    for extra in extras:
        key, sep, value = extra.partition("=")
        if key == "engine" and sep and value in ENGINE_CHOICES:
            engine = value
        elif key in ("base-url", "base_url") and sep and value:
            urls.append(value)
        else:
            raise UserError(
                f"{where}: '{extra}': a judge is MODEL [engine={'|'.join(ENGINE_CHOICES)}]"
                " [base-url=URL]"
            )
    if urls and engine not in (None, "openai"):
        raise UserError(f"{where}: base-url= is for engine=openai, not engine={engine}")
    if urls:
        engine = "openai"
    return Judge(model, engine, tuple(urls) or None)


def _lists_judges(value: str) -> bool:
    """A file (not a model folder, not a GGUF file) that lists judges one per line."""
    path = Path(value).expanduser()
    if len(value.split()) != 1 or value.endswith(".gguf") or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) != GGUF_MAGIC


def parse_judges(values: list[str]) -> list[Judge]:
    """Every `--judge-model` value, files of judges expanded, in order."""
    judges: list[tuple[Judge, str]] = []
    for value in values:
        if not value.strip():
            raise UserError("--judge-model: an empty value")
        if _lists_judges(value):
            lines = Path(value).expanduser().read_text(encoding="utf-8").splitlines()
            listed = [
                (parse_judge(text, f"{value}:{n}"), f"{value}:{n}")
                for n, line in enumerate(lines, 1)
                if (text := line.split("#", 1)[0].strip())
            ]
            if not listed:
                raise UserError(f"--judge-model {value}: the file lists no judge")
            judges += listed
        else:
            judges.append((parse_judge(value, f"--judge-model {value}"), "--judge-model"))
    seen: dict[Judge, str] = {}
    for judge, where in judges:
        if judge in seen:
            raise UserError(
                f"{where}: judge {judge.model} is already on the jury ({seen[judge]}); the same"
                " judge twice would only count its verdict twice"
            )
        seen[judge] = where
    return [judge for judge, _ in judges]


def roles(judges: list[Judge]) -> dict[str, Judge]:
    """Role names for the manifest and rows: `judge`, `judge-2`, `judge-3`, ..."""
    return {("judge" if i == 0 else f"judge-{i + 1}"): j for i, j in enumerate(judges)}


# --- combining --------------------------------------------------------------------------------


def combine(ps: list[float]) -> float:
    """The jury's p: σ(mean of the judges' log-odds) (see the module for why). A p of exactly
    0 or 1 (a parsed verdict, a clamp) has infinite log-odds, and one such judge would decide
    alone: `logit` clips it, so a verdict of 1 counts as log-odds 13.8."""
    return sigmoid(sum(logit(p) for p in ps) / len(ps))


def judge_chunk_jury(
    chunk,
    judges: list[tuple[str, object]],
    cfg: JudgingSettings,
    seed: int,
    constitution,
    tokens,
    progress=None,
) -> list[dict]:
    """One row per record of `chunk`, judged by every (role, engine) of `judges`, each judge
    filling its share of `progress` (a `progress.Progress`) in turn."""
    parts = (progress or Progress()).split(len(judges))
    shares = {role: part for (role, _), part in zip(judges, parts, strict=True)}
    by_role: dict[str, list[dict]] = {}
    if cfg.method == "rating":
        scores = {
            role: rating_scores(chunk, engine, cfg, seed, constitution, tokens, shares[role])
            for role, engine in judges
        }
        by_role = {role: [] for role, _ in judges}
        for record in chunk:
            # The jury picks best and worst by its mean score, so every judge rates the same pair.
            per_judge = [mean_scores(scores[role][record.id]) for role, _ in judges]
            jury_scores = [sum(col) / len(col) for col in zip(*per_judge, strict=True)]
            pick = best_and_worst(jury_scores, list(record.responses))
            for role, engine in judges:
                by_role[role].append(
                    rating_row(record, scores[role][record.id], engine.model_id, cfg, seed, pick)
                )
    else:
        for role, engine in judges:
            by_role[role] = judge_chunk(
                chunk, engine, cfg, seed, constitution, tokens, shares[role]
            )
    roles_ = [role for role, _ in judges]
    return [jury_row({role: by_role[role][i] for role in roles_}) for i in range(len(chunk))]


def jury_row(rows: dict[str, dict]) -> dict:
    """One label row from each judge's row of the same record (same pair, same order)."""
    first = next(iter(rows.values()))
    assert all(r["responses"] == first["responses"] for r in rows.values())
    p = combine([r["p"] for r in rows.values()])
    a, b = first["responses"]
    first_wins = p >= 0.5
    chosen, rejected = (a, b) if first_wins else (b, a)
    judges = []
    for role, r in rows.items():
        entry = {"role": role, "model": r["judge_model"], "p": r["p"]}
        if "scores" in r:
            entry["scores"] = r["scores"]
        judges.append(entry)
    consistent = [r["position_consistent"] for r in rows.values()]
    row = {
        **first,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p if first_wins else 1.0 - p,
        "p": p,
        "judgements": [{**j, "judge": role} for role, r in rows.items() for j in r["judgements"]],
        "position_consistent": None if None in consistent else all(consistent),
        "judge_model": " + ".join(r["judge_model"] for r in rows.values()),
        "judges": judges,
        "combine": COMBINE,
    }
    if "scores" in first:  # rating: the jury's mean score of each input response
        columns = zip(*(r["scores"] for r in rows.values()), strict=True)
        row["scores"] = [sum(c) / len(c) for c in columns]
    return row


# --- diagnostics ------------------------------------------------------------------------------


def judge_view(row: dict, role: str) -> dict:
    """A jury row as if `role` had judged alone (its p and its judgements)."""
    [entry] = [j for j in row["judges"] if j["role"] == role]
    return {
        **row,
        "p": entry["p"],
        "judgements": [j for j in row["judgements"] if j.get("judge") == role],
    }


def add_jury_figures(diagnostics: dict, rows: list[dict]) -> dict:
    """The judge diagnostics of label rows, plus each judge's figures and kappa when the rows
    are a jury's (label, merge and the judge card all describe labels this way)."""
    if rows and all("judges" in r for r in rows):
        diagnostics["jury"] = jury_diagnostics(rows)
    return diagnostics


def jury_diagnostics(rows: list[dict]) -> dict:
    """Each judge's own figures and every two judges' mutual agreement (Cohen's kappa on
    'prefers responses[0]', p > 0.5)."""
    if not rows:
        return {"combine": COMBINE, "judges": {}, "kappa": []}
    members = [(j["role"], j["model"]) for j in rows[0]["judges"]]
    per_judge = {
        role: {"model": model, **judge_diagnostics([judge_view(r, role) for r in rows])}
        for role, model in members
    }
    verdicts = {
        role: [next(j["p"] for j in r["judges"] if j["role"] == role) > 0.5 for r in rows]
        for role, _ in members
    }
    kappas = []
    for i, (first, _) in enumerate(members):
        for second, _ in members[i + 1 :]:
            a, b = verdicts[first], verdicts[second]
            interval = kappa_interval(a, b)
            kappas.append(
                {
                    "judges": [first, second],
                    "kappa": cohen_kappa(a, b),
                    "ci95": None if interval is None else list(interval),
                    "agreement": sum(x == y for x, y in zip(a, b, strict=True)) / len(a),
                    "n": len(a),
                }
            )
    return {"combine": COMBINE, "judges": per_judge, "kappa": kappas}


def format_jury(diag: dict) -> str:
    lines = [f"Jury ({len(diag['judges'])} judges; label = {diag['combine']} of their p)"]
    for role, d in diag["judges"].items():
        lines.append(
            f"  {role} ({d['model']}): agreement {agreement_cell(d['agreement'])},"
            f" position consistency {consistency_cell(d)},"
            f" mean confidence {d['mean_confidence']:.3f}"
        )
    for k in diag["kappa"]:
        names = f"{k['judges'][0]} vs {k['judges'][1]}"
        if k["kappa"] is None:
            kappa = "n/a (a judge gave one verdict throughout)"
        elif k.get("ci95") and too_few(k["ci95"], span=2):  # kappa ranges over [−1, 1]
            kappa = f"too few pairs ({k['n']})"
        else:
            low, high = k.get("ci95") or (None, None)
            kappa = f"{k['kappa']:+.3f}" + (
                "" if low is None else f" (95% CI {low:+.3f} to {high:+.3f})"
            )
        lines.append(
            f"  Cohen's kappa {names}: {kappa}; same verdict on"
            f" {format_rate(round(k['agreement'] * k['n']), k['n'])}"
        )
        if k["kappa"] is not None and k["kappa"] < 0.2:
            lines.append(
                "  WARNING: these judges agree little beyond chance: at least one of them is"
                " not reading the responses, or they judge different things."
            )
    return "\n".join(lines) + "\n"


# --- what `label` and `eval judge` share --------------------------------------------------------


def judge_model_option():
    """`-m/--judge-model`, as `label` and `eval judge` take it: one judge, or a jury."""
    return option(
        default_factory=lambda: [EMBEDDED_ALIAS],
        help="Judge: HF folder, hub id, .gguf or alias; give it several times, or a file listing"
        " one judge a line ('MODEL [engine=E] [base-url=URL]'), for a jury.",
        flags=("-m", "--judge-model"),
    )


def judge_roles(judge_model) -> dict[str, Judge]:
    """The judges of `--judge-model` by role ("judge", "judge-2", ...); a Python caller may give
    one model as a string."""
    return roles(parse_judges([judge_model] if isinstance(judge_model, str) else list(judge_model)))


def stage_judges(judges: dict[str, Judge], engine: EngineSettings) -> dict:
    """RecordStage's `models` and `engines` for these judges (a judge's own engine line)."""
    return {
        "models": {role: judge.model for role, judge in judges.items()},
        "engines": {
            role: settings
            for role, judge in judges.items()
            if (settings := judge.settings(engine)) is not None
        },
    }


def judge_records(
    chunk, roles: list[str], engine_of, judging, seed: int, constitution, tokens, progress
) -> list[dict]:
    """Label rows for `chunk`: from the one judge, or from every judge of a jury. `roles`: the
    judges' roles in the jury's order; `engine_of(role)`: the engine of one (built on first
    use)."""
    if len(roles) > 1:
        judges = [(role, engine_of(role)) for role in roles]
        return judge_chunk_jury(chunk, judges, judging, seed, constitution, tokens, progress)
    return judge_chunk(chunk, engine_of(roles[0]), judging, seed, constitution, tokens, progress)


def too_long_pairs(
    records, judges: list[tuple[str, object]], judging, seed: int, constitution
) -> list[str]:
    """Ids of the pairs whose judge prompts do not fit some local judge's context window (a
    server says so itself). `judges`: each judge's model folder and engine settings."""
    from transformers import AutoTokenizer

    found: list[str] = []
    for path, settings in judges:  # each local judge's own tokenizer and window
        if settings.engine == "openai" or not records:
            continue
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=settings.trust_remote_code
        )
        ids = too_long(records, judging, seed, constitution, tokenizer, settings.max_model_len)
        found += [i for i in ids if i not in found]
    return found
