"""How good is this judge, by judging method, alone and as a jury: one table.

For each dataset (xstest-dev, grouped by `unsafe`; hh-dev), each method (probabilities, cot,
generate, rating) and each judge set-up (the first --judge-model alone; the --judge-model's as a
jury), the pairs go through the real `rlaif label` (rlaif.stages.label.run with a LabelConfig,
output in a temporary folder), and the table shows, from the label rows:

  agreement   with the pairs' reference, Wilson 95% CI, overall and per group (the judge
              card's figures: rlaif.judging.diagnostics.judge_diagnostics, printed by
              rlaif.plumbing.stats.format_rate, so a figure whose interval is wider than half
              of [0, 1]
              reads "too few pairs (k/n)")
  position    share of judgements choosing the same response in both orders (the card's);
              n/a for rating, which judges each response alone (no order to be biased by)
  ECE raw     the card's expected calibration error of the labels (10 bins of confidence)
  ECE cal.    the held-out ECE after Platt calibration on the same rows: k-fold
              cross-validated, each pair calibrated by a fit that did not see it
              (rlaif.judging.calibration.calibration_report, as `label --calibrate-on` computes it).
              Shown only where the raw ECE passes the too-few rule (same pairs, same bins).
  pairs/s     pairs / judging time: the label run's wall time less the engines' construction
              (model load, timed around rlaif.engines.make_engine); a jury's pair counts once
              though every juror judges it.

Default: the embedded SmolLM2-135M judge on the hf engine; the jury is the embedded model and
its converted folder, i.e. the SAME weights twice. Such a jury shows the mechanics (two judges,
combined log-odds, twice the judging time), not a quality gain. The embedded judge is at
chance, so every row is expected at chance (agreement near 50%, intervals spanning it); the
benchmark exists for a user's own judge:

  python benchmarks/judge_quality.py -m Qwen/Qwen2.5-7B-Instruct \\
      -m meta-llama/Llama-3.1-8B-Instruct --engine vllm --limit 118 --json judge-quality.json

The offline judge with real signal (`make judge-model` first; never the default):

  python benchmarks/judge_quality.py -m qwen2.5-coder-1.5b-instruct \\
      -m smollm2-135m-instruct --engine vllm --limit 20 --json judge-quality-1.5b.json

(its jury row is the 1.5B judge with the embedded one).

Defaults: --limit 12 pairs per dataset (the fewest for which an agreement near 50% is printed
as a number at all; the intervals are then ~50 points wide: use --limit 0, every pair, to size
a real judge) and --max-new-tokens 24. Cost: 16 label runs; a jury row judges every pair once
per juror. Measured on 2 CPU cores shared with four other jobs (load average ~6, hf engine),
the xstest-dev rows took 76 s (probabilities, one judge), 193 s (its jury), 237 s (cot) and
531 s (cot's jury), so the whole default run takes about 50 minutes there (estimated from
those rows), not the 10 aimed at: for a quick look, --methods probabilities,rating. A partial
run keeps what it has: the progress lines on stderr, and --json rewritten after every row.

Usage: python benchmarks/judge_quality.py [-m JUDGE]... [--engine hf] [--limit 12]
         [--methods probabilities,cot,generate,rating] [--max-new-tokens 24]
         [--xstest FILE] [--hh FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rlaif.judging.calibration import calibration_report, reference_outcomes  # noqa: E402
from rlaif.judging.diagnostics import judge_diagnostics  # noqa: E402
from rlaif.plumbing.stats import format_rate  # noqa: E402

XSTEST = REPO / "tests" / "data" / "xstest-dev.jsonl"
HH = REPO / "tests" / "data" / "hh-harmless-64.jsonl"
METHODS = ("probabilities", "cot", "generate", "rating")
FOLDS = 5
SAME_WEIGHTS_NOTE = (
    "the jury is the same weights twice: it shows the mechanics (two judges, combined"
    " log-odds, twice the judging time), not a quality gain"
)


def pick_rows(path: str, limit: int, group_by: str | None) -> list[str]:
    """The first `limit` lines (0: all), alternating between the `group_by` values so that
    every group is represented however small the limit."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not limit or limit >= len(lines):
        return lines
    if group_by is None:
        return lines[:limit]
    groups: dict[str, list[str]] = {}
    for line in lines:
        groups.setdefault(json.dumps(json.loads(line).get(group_by)), []).append(line)
    picked, queues = [], list(groups.values())
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def judging_settings(method: str, max_new_tokens: int):
    from rlaif.judging.judge import JudgingSettings

    if method == "cot":
        return JudgingSettings(method="probabilities", cot=True, max_new_tokens=max_new_tokens)
    return JudgingSettings(method=method, max_new_tokens=max_new_tokens)


@contextlib.contextmanager
def timed_engine_loads(seconds: list[float]):
    """Adds the time spent constructing engines (loading models) to `seconds`: RecordStage
    imports make_engine from rlaif.engines when it builds one, so wrapping it there catches
    every load."""
    import rlaif.engines as engines

    original = engines.make_engine

    def make_engine(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    engines.make_engine = make_engine
    try:
        yield
    finally:
        engines.make_engine = original


def label_rows(pairs: str, judges: list[str], method: str, args, workdir: Path, log) -> tuple:
    """Label `pairs` through rlaif.stages.label.run; returns (rows, wall seconds, load seconds)."""
    from rlaif.engines import EngineSettings
    from rlaif.stages import label

    out = workdir / "prefs.jsonl"
    cfg = label.LabelConfig(
        pairs=pairs,
        output=str(out),
        judge_model=judges,
        judging=judging_settings(method, args.max_new_tokens),
        engine=EngineSettings(engine=args.engine),
        seed=args.seed,
    )
    loads: list[float] = []
    start = time.perf_counter()
    # the stage's card and warnings go to the log: the table is the output here
    with timed_engine_loads(loads), contextlib.redirect_stderr(log):
        label.run(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return rows, wall, sum(loads)


def summarise(
    rows: list[dict],
    group_by: str | None,
    wall: float,
    load: float,
    seed: int = 0,
    folds: int = FOLDS,
) -> dict:
    """One table row's figures from label rows (with `reference`): the judge card, the
    held-out calibration report and the throughput."""
    card = judge_diagnostics(rows, group_by=group_by)
    known = [r for r in rows if r.get("reference") is not None]
    calibration = None
    if len(known) >= 2:
        p_raw, outcomes = reference_outcomes(known)
        # bias=False as `label --calibrate-on` fits it: p is for the seeded first response
        calibration = calibration_report(p_raw, outcomes, min(folds, len(known)), seed, bias=False)
    judging = max(wall - load, 1e-9)
    return {
        "pairs": len(rows),
        "card": {k: v for k, v in card.items() if k != "per_principle"},
        "calibration": calibration,
        "wall_s": wall,
        "load_s": load,
        "judging_s": judging,
        "pairs_per_s": len(rows) / judging,
    }


def _consistency(result: dict) -> str:
    card = result["card"]
    if result["method"] == "rating":
        return "n/a (rating)"
    return format_rate(card["consistent_judgements"], card["paired_judgements"], "judgements")


def _ece(result: dict) -> tuple[str, str]:
    c, report = result["card"]["calibration"], result["calibration"]
    if c is None or report is None:
        return "n/a", "n/a"
    if c["too_few"]:
        few = f"too few pairs ({c['pairs']})"
        return few, few
    return f"{c['ece']:.3f}", f"{report['ece_after']:.3f}"


def _agreement(figure: dict | None) -> str:
    return "n/a (no reference)" if figure is None else format_rate(figure["agree"], figure["n"])


def format_table(results: list[dict]) -> str:
    """The table: one line per (dataset, method, judges), then one per group of that run."""
    header = (
        "dataset",
        "method",
        "judges",
        "agreement (95% CI)",
        "position consistency",
        "ECE raw",
        "ECE cal.",
        "pairs/s",
    )
    cells = []
    for r in results:
        raw, calibrated = _ece(r)
        cells.append(
            (
                r["dataset"],
                r["method"],
                r["judges"],
                _agreement(r["card"]["agreement"]),
                _consistency(r),
                raw,
                calibrated,
                f"{r['pairs_per_s']:.2f}",
            )
        )
        groups = r["card"].get("groups")
        for value, g in (groups or {}).get("by_value", {}).items():
            cells.append(
                ("", "", f"  {groups['field']}={value}", _agreement(g["agreement"]), "", "", "", "")
            )
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row):
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in cells)]) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring (benchmarks/judge_quality.py) for what each column is.",
    )
    parser.add_argument(
        "-m",
        "--judge-model",
        action="append",
        help="A judge (as `rlaif label -m` takes it); give it twice or more for the jury rows."
        " Default: the embedded model, and the jury of it and its converted folder.",
    )
    parser.add_argument("--engine", default="hf", help="Engine of every judge (default hf).")
    parser.add_argument(
        "--limit", type=int, default=12, help="Pairs per dataset, 0 for all (default 12)."
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"Comma-separated, of {', '.join(METHODS)} (default all).",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=24,
        help="cot: longest rationale; generate: longest verdict (default 24).",
    )
    parser.add_argument("--xstest", default=str(XSTEST), help="xstest-dev pairs (unsafe groups).")
    parser.add_argument("--hh", default=str(HH), help="hh-dev pairs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Write every figure (the cards included) to this file.")
    parser.add_argument("--log", help="Where the label runs' own output goes (default: dropped).")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: {', '.join(unknown) or 'none given'}; choose from {METHODS}")
    if args.limit < 0:
        parser.error("--limit: 0 (all) or more")
    return args


def default_judges() -> tuple[list[str], str | None]:
    """The embedded judge, and a jury of it and its converted folder (the same weights)."""
    from rlaif.plumbing.models import EMBEDDED_ALIAS, resolve_model

    return [EMBEDDED_ALIAS, resolve_model(EMBEDDED_ALIAS).path], SAME_WEIGHTS_NOTE


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    note = None
    judges = args.judge_model
    if not judges:
        judges, note = default_judges()
    setups = [("1: " + Path(judges[0]).name, judges[:1])]
    if len(judges) > 1:
        setups.append((f"jury of {len(judges)}", judges))
    datasets = [("xstest-dev", args.xstest, "unsafe"), ("hh-dev", args.hh, None)]
    log = open(args.log, "a", encoding="utf-8") if args.log else io.StringIO()  # noqa: SIM115
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="judge-quality-") as tmp:
        for dataset, path, group_by in datasets:
            pairs = Path(tmp) / f"{dataset}.jsonl"
            pairs.write_text("\n".join(pick_rows(path, args.limit, group_by)) + "\n")
            for method in args.methods:
                for name, members in setups:
                    workdir = Path(tmp) / f"{dataset}-{method}-{len(members)}"
                    workdir.mkdir()
                    rows, wall, load = label_rows(str(pairs), members, method, args, workdir, log)
                    result = summarise(rows, group_by, wall, load, args.seed)
                    result |= {"dataset": dataset, "method": method, "judges": name}
                    result["members"] = members
                    results.append(result)
                    write_json(args, note, results)  # a run cut short keeps its rows
                    print(
                        f"[{time.perf_counter() - start:6.0f} s] {dataset} {method} {name}:"
                        f" {len(rows)} pairs, judging {result['judging_s']:.1f} s"
                        f" + load {load:.1f} s;"
                        f" agreement {_agreement(result['card']['agreement'])}",
                        file=sys.stderr,
                        flush=True,
                    )
    total = time.perf_counter() - start
    print(format_table(results))
    print(
        f"engine {args.engine}; judges: {', '.join(judges)}; --limit {args.limit or 'all'} pairs"
        f" per dataset; cot/generate --max-new-tokens {args.max_new_tokens}; seed {args.seed};"
        f" {total:.0f} s in all. pairs/s excludes model load."
    )
    if note:
        print(f"note: {note}.")
        print(
            "note: the embedded 135M judge is at chance: every row is expected near 50% with an"
            " interval spanning it. Run this on your own judge (-m, --engine, --limit 0)."
        )
    write_json(args, note, results)
    return results


def write_json(args, note: str | None, results: list[dict]) -> None:
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "note": note, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
