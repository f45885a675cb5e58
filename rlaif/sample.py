"""`rlaif sample`: several sampled responses per prompt, written as pairs for `rlaif label`.

As in Constitutional AI, the pairs a preference model learns from can come from any policy
(there, the SL-CAI model); this stage makes them with one batched engine call per chunk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from rlaif.engines import EngineSettings, Sampling, make_engine, resolve_engine_name
from rlaif.errors import UserError
from rlaif.files import read_jsonl
from rlaif.generate import derived_seed
from rlaif.manifest import build_manifest
from rlaif.models import EMBEDDED_ALIAS, resolve_model_for
from rlaif.records import parse_prompt_records
from rlaif.stage import publish, run_in_chunks, settings_fingerprint


@dataclass
class SampleConfig:
    prompts: str
    output: str
    model: str = EMBEDDED_ALIAS
    n: int = 2  # responses per prompt; each consecutive two make one pair
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    chunk_size: int = 256
    force: bool = False
    engine: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self):
        if self.n < 2 or self.n % 2:
            raise UserError(f"--n {self.n}: an even number >= 2 (responses are written as pairs)")
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}: must be > 0 to sample")
        if not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.chunk_size < 1:
            raise UserError("--top-p in (0, 1]; --max-new-tokens and --chunk-size >= 1")


def sample_chunk(chunk, engine, cfg: SampleConfig, tokens: dict, advance) -> list[dict]:
    chats = [r.messages for r in chunk for _ in range(cfg.n)]
    seeds = [derived_seed(cfg.seed, "sample", r.id, k) for r in chunk for k in range(cfg.n)]
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    outs = engine.generate(chats, sampling, seeds)
    tokens["prompt_tokens"] += sum(o.prompt_tokens for o in outs)
    tokens["completion_tokens"] += sum(o.completion_tokens for o in outs)
    advance(len(chunk))
    rows = []
    for i, record in enumerate(chunk):
        texts = [o.text for o in outs[i * cfg.n : (i + 1) * cfg.n]]
        rows.append({"id": record.id, "prompt": record.messages, "samples": texts})
    return rows


def pairs_of(row: dict) -> list[dict]:
    """The `responses` pair rows for `rlaif label` from one prompt's samples."""
    samples = row["samples"]
    n_pairs = len(samples) // 2
    return [
        {
            "id": row["id"] if n_pairs == 1 else f"{row['id']}:{k}",
            "prompt": row["prompt"],
            "responses": samples[2 * k : 2 * k + 2],
        }
        for k in range(n_pairs)
    ]


def run(cfg: SampleConfig) -> dict:
    started = time.time()
    rows, input_sha = read_jsonl(cfg.prompts)
    records = parse_prompt_records(cfg.prompts, rows)
    engine_name = resolve_engine_name(cfg.engine.engine)
    model = resolve_model_for(cfg.model, engine_name)
    settings = replace(cfg.engine, engine=engine_name)
    fingerprint = settings_fingerprint(
        cfg,
        "prompts",
        engine=asdict(settings),
        input_sha256=input_sha,
        model_sha256=model.source_sha256,
    )
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    engine = None

    def process(chunk, advance):
        nonlocal engine
        if engine is None:
            engine = make_engine(model.path, settings, cfg.seed)
        return sample_chunk(chunk, engine, cfg, tokens, advance)

    result = run_in_chunks(
        output=cfg.output,
        fingerprint=fingerprint,
        force=cfg.force,
        records=records,
        chunk_size=cfg.chunk_size,
        steps_per_record=1,
        process_chunk=process,
        description="sample",
    )
    pair_rows = [pair for row in result.rows for pair in pairs_of(row)]
    identical = sum(p["responses"][0] == p["responses"][1] for p in pair_rows)
    manifest = build_manifest(
        "sample",
        cfg,
        inputs={"prompts": {"path": cfg.prompts, "sha256": input_sha}},
        models={"policy": model.describe(), "engine": engine_name},
        constitution=None,
        counts={
            "prompts": len(result.rows),
            "pairs": len(pair_rows),
            "resumed": result.resumed,
            "identical_pairs": identical,
        },
        tokens=tokens,
        started=started,
    )
    publish(cfg.output, pair_rows, manifest)
    if engine is not None:
        engine.close()
    return manifest
