"""The skeleton of every record-by-record stage (generate, sample, label, eval winrate).

    with RecordStage("label", cfg, StageInput("pairs", cfg.pairs, parse_pair_records),
                     models={"judge": cfg.judge_model}, constitution=cfg.constitution) as stage:
        result = stage.run_chunks(stage.records, process, steps_per_record=1)
        return stage.publish(result.rows, counts={...})

`RecordStage` reads and parses the input (and takes this shard's share of it), loads the
constitution, resolves the models for the engine, fingerprints the settings, builds each engine
the first time a chunk needs it (a resumed run with nothing left loads none) and closes them all
when the block ends, however it ends. `run_chunks` saves each finished chunk so a crash loses at
most one; `publish` writes the manifest and then the output, atomically.

Progress: one bar on stderr per run of chunks, counting what the user counts (pairs, prompts),
moved within a chunk as the engine finishes requests (`Progress`, the engines' `on_done`). At
the end of a run that used an engine, one line per role gives its tokens per second of engine
time, also in the manifest (`throughput`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from rlaif.engines import EngineSettings, result_settings
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import (
    STDIO,
    DatasetSettings,
    manifest_path,
    partial_path,
    read_jsonl,
    write_jsonl,
    write_with_manifest,
)
from rlaif.plumbing.manifest import build_manifest
from rlaif.plumbing.options import group, option, output_option, seed_option
from rlaif.plumbing.outputs import PartialRun, guard_output
from rlaif.plumbing.progress import Progress, TokenCounter, format_throughput
from rlaif.plumbing.shard import Shard, manifest_fields, parse_shard, select


@dataclass(kw_only=True)
class RunSettings:
    """The options of every run over records: seeds, chunks, engine. A stage that writes no
    file (eval judge) takes these alone."""

    seed: int = seed_option("Seed for principle sampling, pair order and generation.")
    # the engine sees every record of a chunk at once (the bar still moves within one, as
    # requests finish); also the resume granularity
    chunk_size: int = option(256, help="Records processed together and saved per step of progress.")
    engine: EngineSettings = group(EngineSettings)
    dataset: DatasetSettings = group(DatasetSettings)

    def __post_init__(self):
        if self.chunk_size < 1:
            raise UserError(f"--chunk-size {self.chunk_size}: must be at least 1")


@dataclass(kw_only=True)
class RecordSettings(RunSettings):
    """A record stage that writes a JSONL output, resumable."""

    output: str = output_option()
    force: bool = option(
        False,
        help="Discard an interrupted run with other settings.",
        flags=("--force",),
        fingerprint=False,
    )


@dataclass(kw_only=True)
class ShardedRecordSettings(RecordSettings):
    """A record stage whose shards `rlaif merge` can join."""

    # this machine's share of the records (--shard I/N)
    shard: Shard | None = option(
        None,
        help="Do only shard I of N (e.g. 2/4), chosen by record id; join them with `rlaif merge`.",
        parse=parse_shard,
    )


def settings_fingerprint(cfg, input_field: str, **resolved) -> dict:
    """What must not change for an interrupted run to be resumed: the settings (not those
    declared with `fingerprint=False`, such as where the output goes; the input by its hash,
    not its path) and `resolved` values."""
    ignored = {f.name for f in fields(cfg) if not f.metadata.get("fingerprint", True)}
    ignored.add(input_field)
    return {**{k: v for k, v in asdict(cfg).items() if k not in ignored}, **resolved}


@dataclass(frozen=True)
class StageInput:
    """An input file of a record stage: the option that names it, its path, and the parser of
    its rows (which names file and line in its errors)."""

    option: str  # the Config field, e.g. "pairs"
    path: str
    parse: Callable[[str, list], list]


@dataclass
class ReadInput:
    records: list
    sha256: str


@dataclass
class ChunkedRun:
    rows: list[dict]  # one per input record, in input order
    resumed: int  # records taken from an interrupted run's partial file


def run_in_chunks(
    *,
    output: str,
    fingerprint: dict,
    force: bool,
    records: Sequence,
    chunk_size: int,
    process_chunk: Callable[[list, Progress], list[dict]],
    description: str,
    unit: str = "record",
) -> ChunkedRun:
    """Process `records` chunk by chunk, saving each finished chunk so a crash loses at most one.

    `process_chunk(chunk, progress)` returns one row (with the record's `id`) per record and
    passes `progress`'s callbacks to the engine (see `Progress`), so the bar, counting `unit`s,
    moves as requests finish.
    """
    from tqdm import tqdm

    partial = PartialRun(output, fingerprint, force) if output != STDIO else None
    done: dict[str, dict] = dict(partial.done) if partial else {}
    resumed = len(done)
    if resumed:
        print(f"resuming: {resumed} of {len(records)} records already done", file=sys.stderr)
    pending = [r for r in records if r.id not in done]
    with tqdm(
        total=len(pending),
        desc=description,
        unit=unit,
        # tqdm's default, with the unit after the counts: "18/40 pairs"
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining},"
        " {rate_fmt}{postfix}]",
        file=sys.stderr,
        delay=1.0,  # a run that fails at once (a bad server, say) shows its error alone
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            progress = Progress(bar, len(chunk))
            rows = process_chunk(chunk, progress)
            progress.finish()
            if partial:
                partial.append(rows)
            done.update((row["id"], row) for row in rows)
    return ChunkedRun([done[r.id] for r in records], resumed)


def publish(output: str, rows: list[dict], manifest: dict, work: bool = False) -> None:
    """Publish the output and its manifest together, or neither, and drop the partial file
    (and with `work`, the stage's OUT.work/) as they appear.

    The manifest records the output's size and sha256; `outputs.existing_output` compares
    them later, to notice an edit by hand (see `files.write_with_manifest`).
    """
    if output == STDIO:
        write_jsonl(output, rows)
        return
    leftovers = [partial_path(output), *([work_dir(output)] if work else [])]
    write_with_manifest(output, rows, manifest_path(output), manifest, leftovers)


class RecordStage:
    """One run of a record stage; use it as a context manager so its engines are closed.

        with RecordStage("label", cfg, StageInput("pairs", cfg.pairs, parse_pair_records),
                         models={"judge": cfg.judge_model}) as stage:
            if stage.up_to_date: return stage.up_to_date
            ...

    `settings`: a `RecordSettings` (a stage that writes a JSONL output) or bare `RunSettings`
    (one that writes none). `more_inputs`: other input files, read and checked like the main
    one (`stage.inputs[option]`). `models` maps each role to a model spec (None: the first
    role's model, e.g. a policy that judges itself); one engine is built per distinct model.
    `engines` gives some roles engine settings of their own (a jury's judge on another engine
    or server); the others use `settings.engine`. A `ShardedRecordSettings` run takes its
    `--shard` of the records.

    Entering the block does the checks in order, each before anything slower: read and parse
    the inputs, guard the output, load the constitution, resolve the models, and compare the
    fingerprint with what is already there (`up_to_date`).
    """

    def __init__(
        self,
        name: str,
        settings: RunSettings,
        input: StageInput,
        *,
        models: dict[str, str | None],
        more_inputs: Sequence[StageInput] = (),
        constitution: str | None = None,
        engines: dict[str, EngineSettings] | None = None,
    ):
        self.started = time.time()
        self.name, self.cfg, self.input = name, settings, input
        self._more_inputs = list(more_inputs)
        self._model_specs = models
        self._constitution_spec = constitution
        self._role_engines = engines or {}
        self.tokens = TokenCounter()
        self._engines: dict[str, object] = {}
        self._dtypes: dict[tuple, dict[str, str]] = {}  # engine key -> use -> dtype it ran in

    @property
    def writes_output(self) -> bool:
        return isinstance(self.cfg, RecordSettings)

    def __enter__(self) -> RecordStage:
        self._read_inputs()
        self._guard_output()
        self._load_constitution()
        self._resolve_models()
        # The manifest of an output that is up to date: the stage has nothing to do.
        self.up_to_date = self.guard.up_to_date(self.fingerprint()) if self.guard else None
        return self

    def _read_inputs(self) -> None:
        self.inputs: dict[str, ReadInput] = {}
        for given in [self.input, *self._more_inputs]:
            rows, sha = read_jsonl(given.path, self.cfg.dataset)
            self.inputs[given.option] = ReadInput(given.parse(given.path, rows), sha)
        self.parsed = self.inputs[self.input.option].records  # the whole input
        self.shard = self.cfg.shard if isinstance(self.cfg, ShardedRecordSettings) else None
        self.records = select(self.parsed, self.shard)  # this shard's share
        if self.shard:
            print(
                f"shard {self.shard}: {len(self.records)} of {len(self.parsed)} records",
                file=sys.stderr,
            )

    def _guard_output(self) -> None:
        from rlaif.judging.constitution import resolve_constitution_path

        spec = self._constitution_spec
        self.constitution_path = resolve_constitution_path(spec) if spec else None
        self.guard = None
        if self.writes_output:
            self.guard = guard_output(
                self.cfg.output,
                inputs=[
                    *(i.path for i in [self.input, *self._more_inputs]),
                    self.constitution_path,
                    *(m for m in self._model_specs.values() if m),
                ],
                force=self.cfg.force,
                option="-o/--output",
            )

    def _load_constitution(self) -> None:
        from rlaif.judging.constitution import load_constitution

        path = self.constitution_path
        self.constitution = load_constitution(path) if path else None

    def _resolve_models(self) -> None:
        from rlaif.engines import resolve_engine_name
        from rlaif.plumbing.models import resolve_model_for

        self.engine_name = resolve_engine_name(self.cfg.engine.engine)
        self.settings = replace(self.cfg.engine, engine=self.engine_name)
        self.role_settings = {
            role: replace(s, engine=resolve_engine_name(s.engine))
            for role, s in self._role_engines.items()
        }
        first = next(iter(self._model_specs.values()))
        self.models = {
            role: resolve_model_for(spec or first, self.engine_settings(role).engine)
            for role, spec in self._model_specs.items()
        }
        # Once: a local model folder's identity stats every file in it.
        self._model_ids = {f"{role}_model_sha256": m.identity() for role, m in self.models.items()}

    @property
    def output(self) -> str:
        """Where the rows go: the stage's -o, or nowhere a partial file could be kept."""
        return self.cfg.output if self.writes_output else STDIO

    def engine_settings(self, role: str) -> EngineSettings:
        """The engine settings `role`'s model runs with (its own, or the stage's)."""
        return self.role_settings.get(role, self.settings)

    def fingerprint(self, **extra) -> dict:
        if self.role_settings:  # only then, so that other runs' fingerprints stay as they were
            extra["role_engines"] = {r: result_settings(s) for r, s in self.role_settings.items()}
        return settings_fingerprint(
            self.cfg,
            self.input.option,
            engine=result_settings(self.settings),
            input_sha256=self.inputs[self.input.option].sha256,
            **{f"{i.option}_sha256": self.inputs[i.option].sha256 for i in self._more_inputs},
            constitution_sha256=self.constitution.sha256 if self.constitution else None,
            **self._model_ids,
            **extra,
        )

    def engine(self, role: str, share: float | None = None):
        """The engine of `role`'s model, built on first use. `share`: the fraction of the
        accelerator it may take (default: split between the stage's distinct models)."""
        from rlaif.engines import make_engine
        from rlaif.plumbing.errors import UserError

        model, settings = self.models[role], self.engine_settings(role)
        key = self._engine_key(role)
        if key not in self._engines:
            distinct = len({m.path for m in self.models.values()})
            share = share or 1.0 / distinct
            engine = make_engine(model.path, settings, self.cfg.seed, share)
            self._engines[key] = engine
            served = [getattr(e, "model_id", None) for e in self._engines.values()]
            if len(served) > 1 and len(set(served)) < len(served):
                # One server answering two model names with its single model would, e.g.,
                # make the policy judge itself without anyone asking for it.
                raise UserError(
                    f"two of {', '.join(self.models)} reach the server's one model"
                    f" {engine.model_id!r}; serve each model under its own name"
                )
        return self._engines[key]

    def _engine_key(self, role: str) -> tuple:
        """One engine per model and the engine it runs on (a jury may hold one model twice)."""
        settings = self.engine_settings(role)
        return (self.models[role].path, settings.engine, settings.base_url)

    def engine_dtypes(self) -> dict[str, dict[str, str]]:
        """The dtype each role's model ran in, per use (e.g. judge: {"score": "bfloat16"}):
        --dtype auto resolves per machine and per use (`engines.resolved_dtype`)."""
        for key, engine in self._engines.items():
            # an engine that reports no dtypes (a stand-in) records none
            self._dtypes.setdefault(key, {}).update(getattr(engine, "dtypes", {}))
        used = {role: self._dtypes.get(self._engine_key(role)) for role in self.models}
        return {role: dtypes for role, dtypes in used.items() if dtypes}

    def close_engines(self) -> None:
        self.engine_dtypes()  # remembered for the manifest
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()

    def __exit__(self, exc_type, *exc) -> None:
        self.close_engines()
        if exc_type is None and self.tokens.engine_s:  # once, after all of the run's chunks
            print(format_throughput(self.tokens.throughput()), file=sys.stderr)

    def run_chunks(
        self,
        records: Sequence,
        process_chunk: Callable[[list, Progress], list[dict]],
        *,
        unit: str = "record",
        output: str | None = None,
        description: str | None = None,
        **fingerprint_extra,
    ) -> ChunkedRun:
        """`run_in_chunks` with this run's fingerprint, into `output` (default: the stage's);
        the bar counts `unit`s ("pair", "prompt")."""
        return run_in_chunks(
            output=output or self.output,
            fingerprint=self.fingerprint(**fingerprint_extra),
            force=self.writes_output and self.cfg.force,
            records=records,
            chunk_size=self.cfg.chunk_size,
            process_chunk=process_chunk,
            description=description or self.name,
            unit=unit,
        )

    def run_phase(
        self, name: str, process_chunk, *, unit: str, description: str, phase: str
    ) -> list[dict]:
        """Every record through `process_chunk` into OUT.work/NAME.jsonl, resumable on its own,
        then the engines closed: one step of a stage whose models run one after the other."""
        result = self.run_chunks(
            self.records,
            process_chunk,
            unit=unit,
            output=str(work_dir(self.output) / f"{name}.jsonl"),
            description=description,
            phase=phase,
        )
        self.close_engines()
        return result.rows

    def manifest(self, *, counts: dict, input_lines: list[int] | None = None, **extra) -> dict:
        """The run's manifest; `input_lines` (each output row's input line) make a shard's
        output mergeable."""
        shard_fields = manifest_fields(self.shard, input_lines or [])
        return build_manifest(
            self.name,
            self.cfg,
            inputs={
                i.option: {"path": i.path, "sha256": self.inputs[i.option].sha256}
                for i in [self.input, *self._more_inputs]
            },
            models={
                **{role: m.describe() for role, m in self.models.items()},
                "engine": self.engine_name,
                # servers (base_url) are where, not what: left out, as from fingerprints
                **{f"{role}_engine": s.engine for role, s in self.role_settings.items()},
            },
            constitution=self.constitution,
            counts=counts,
            tokens=self.tokens.tokens,
            started=self.started,
            extra={
                **extra,
                **shard_fields,
                "engine_dtypes": self.engine_dtypes(),
                # tokens per second of engine time, by role (what `tokens` took)
                "throughput": self.tokens.throughput(),
                "fingerprint": self.fingerprint(),
            },
        )

    def publish(self, rows: list[dict], work: bool = False, **manifest_args) -> dict:
        """`work`: the run kept intermediate files in OUT.work/ (`work_dir`), now done with."""
        manifest = self.manifest(**manifest_args)
        publish(self.output, rows, manifest, work)
        return manifest


def work_dir(output: str) -> Path:
    """`OUT.work/`: a stage's intermediate files (e.g. eval winrate's answers), kept until the
    run finishes so a rerun resumes."""
    return Path(output).with_name(Path(output).name + ".work")


def local_engines():
    """The engine options of a stage that runs several models here, one after the other (eval
    winrate, eval refusals): one server answers with one model, so --engine openai is not
    offered."""
    return group(
        EngineSettings,
        only=(
            "engine",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "batch_size",
            "trust_remote_code",
            "dtype",
        ),
        help={"engine": "Inference engine: auto (vLLM if installed), vllm or hf."},
        choices={"engine": ("auto", "vllm", "hf")},
    )


def answer_records(stage: RecordStage, role: str, sampling, salt: str) -> list[str]:
    """Each record's answer from `role`'s model, resumable in OUT.work/ROLE.jsonl; seeds come
    from the record id and `salt`, so every model answers a prompt with the same seed."""
    from rlaif.plumbing.seeds import derived_seed

    def process(chunk, progress):
        seeds = [derived_seed(stage.cfg.seed, salt, r.id) for r in chunk]
        # The models answer one after the other, so each may take the whole accelerator.
        engine = stage.engine(role, share=1.0)
        with stage.tokens.timed(role, engine):
            outs = engine.generate(
                [r.messages for r in chunk], sampling, seeds, on_done=progress.on_done(len(chunk))
            )
        stage.tokens.add_completions(role, outs)
        return [{"id": r.id, "text": o.text} for r, o in zip(chunk, outs, strict=True)]

    rows = stage.run_phase(role, process, unit="prompt", description=f"answer ({role})", phase=role)
    return [row["text"] for row in rows]
