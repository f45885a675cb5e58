"""The `rlaif` command: a thin layer that fills each stage's Config and calls its `run`.

Heavy libraries (torch, transformers, vLLM) are imported inside the commands, so `--help` is
instant.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from rlaif.errors import UserError

app = typer.Typer(
    help="RLAIF and Constitutional AI: generate → sft → sample → label → train-rm / dpo → rl.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Plain help: rich mode keeps docstring line breaks and reads [a, b] as markup.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
constitution_app = typer.Typer(help="Check and inspect constitution files.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
eval_app = typer.Typer(help="Evaluate labels, reward models and policies.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

EMBEDDED = "smollm2-135m-instruct"

# Options several stages share, defined once so their help can't drift apart.
OutputOpt = Annotated[
    str | None, typer.Option("-o", "--output", help="Output JSONL file ('-' for stdout).")
]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", help="YAML file of flag values; flags given here override it."),
]
ConstitutionOpt = Annotated[
    str,
    typer.Option("-c", "--constitution", help="Constitution YAML file, or a bundled name."),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for principle sampling and generation.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Discard an interrupted run with other settings.")
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="Inference engine: auto (vLLM if installed), vllm, hf, or openai (a server at"
        " --base-url)."
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(help="openai engine: the server's API root, e.g. http://127.0.0.1:8000/v1."),
]
ApiKeyEnvOpt = Annotated[
    str, typer.Option(help="openai engine: environment variable holding the API key.")
]
MaxConcurrencyOpt = Annotated[int, typer.Option(help="openai engine: requests in flight.")]
RequestTimeoutOpt = Annotated[float, typer.Option(help="openai engine: seconds per request.")]
MaxRetriesOpt = Annotated[
    int, typer.Option(help="openai engine: retries on 429/5xx/timeouts, with backoff.")
]
TensorParallelOpt = Annotated[int, typer.Option(help="vLLM: GPUs to shard each model over.")]
GpuMemOpt = Annotated[
    float, typer.Option(help="vLLM: fraction of GPU memory to use (split when two models).")
]
MaxModelLenOpt = Annotated[int, typer.Option(help="vLLM: longest prompt + answer in tokens.")]
BatchSizeOpt = Annotated[int, typer.Option(help="transformers engine: sequences per batch.")]
DtypeOpt = Annotated[
    str,
    typer.Option(help="Weights' dtype: auto (float32 on CPU), float32, bfloat16 or float16."),
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run model code from the hub (off: safer).")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        help="Do only shard I of N (e.g. 2/4), chosen by record id; join them with `rlaif merge`."
    ),
]

# Options of the training stages (train-rm, sft, dpo, rl).
TrainModelOpt = Annotated[
    str,
    typer.Option("-m", "--model", help="Starting model: HF folder, hub id, .gguf or alias."),
]
TrainOutputOpt = Annotated[
    str | None, typer.Option("-o", "--output-dir", help="Folder for the trained model.")
]
LoraOpt = Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (merged at the end).")]
LoraROpt = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlphaOpt = Annotated[int, typer.Option(help="LoRA alpha.")]
EpochsOpt = Annotated[float, typer.Option(help="Passes over the training data.")]
MaxStepsOpt = Annotated[int, typer.Option(help="Stop after this many steps (-1: epochs).")]
LearningRateOpt = Annotated[
    float, typer.Option("--lr", "--learning-rate", help="Peak learning rate.")
]
GradAccumOpt = Annotated[int, typer.Option(help="Steps per optimiser update.")]
SaveStepsOpt = Annotated[int, typer.Option(help="Checkpoint every this many steps.")]
GradCheckpointOpt = Annotated[
    bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")
]
NumProcessesOpt = Annotated[
    int, typer.Option(help="Data-parallel processes (runs itself under torch.distributed).")
]
LabelModeOpt = Annotated[
    str,
    typer.Option(
        help="soft: fit the judge's probability; hard: its choice; filter: confident only."
    ),
]
MinConfidenceOpt = Annotated[
    float, typer.Option(help="filter: keep pairs with |p - 0.5| at least this.")
]
TRAINING_KEYS = (
    "model",
    "lora",
    "lora_r",
    "lora_alpha",
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "save_steps",
    "gradient_checkpointing",
    "seed",
    "force",
    "trust_remote_code",
)


def _run_stage(fn):
    """Run a stage: user errors become one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: finished records are kept; run the same command again to resume",
            err=True,
        )
        raise typer.Exit(130) from None


def _engine_settings(v: dict):
    from rlaif.engines import EngineSettings

    return EngineSettings(
        engine=v["engine"],
        tensor_parallel_size=v["tensor_parallel_size"],
        gpu_memory_utilization=v["gpu_memory_utilization"],
        max_model_len=v["max_model_len"],
        batch_size=v["batch_size"],
        trust_remote_code=v["trust_remote_code"],
        dtype=v["dtype"],
        base_url=v.get("base_url"),
        api_key_env=v.get("api_key_env", "OPENAI_API_KEY"),
        max_concurrency=v.get("max_concurrency", 8),
        request_timeout=v.get("request_timeout", 120.0),
        max_retries=v.get("max_retries", 5),
    )


def _require_output(output: str | None) -> str:
    if not output:
        raise UserError("missing -o/--output (a JSONL path, or '-' for stdout)")
    return output


@app.command()
def generate(
    ctx: typer.Context,
    prompts: Annotated[
        str,
        typer.Argument(
            help='JSONL of {"prompt": ...} or {"messages": [...]} rows (\'-\' for stdin).'
        ),
    ],
    output: OutputOpt = None,
    constitution: ConstitutionOpt = "harmless",
    policy_model: Annotated[
        str,
        typer.Option(
            "-m", "--policy-model", help="Model that answers: HF folder, hub id, .gguf or alias."
        ),
    ] = EMBEDDED,
    judge_model: Annotated[
        str | None,
        typer.Option(help="Model that critiques and revises (default: the policy model)."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Critique→revision rounds per prompt.")] = 2,
    seed: SeedOpt = 0,
    max_new_tokens: Annotated[
        int, typer.Option(help="Longest answer, critique or revision.")
    ] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    chunk_size: Annotated[
        int, typer.Option(help="Prompts batched together and saved per step of progress.")
    ] = 256,
    force: ForceOpt = False,
    engine: EngineOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = 0.85,
    max_model_len: MaxModelLenOpt = 4096,
    batch_size: BatchSizeOpt = 16,
    trust_remote_code: TrustRemoteCodeOpt = False,
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: MaxConcurrencyOpt = 8,
    request_timeout: RequestTimeoutOpt = 120.0,
    max_retries: MaxRetriesOpt = 5,
    shard: ShardOpt = None,
    config: ConfigOpt = None,
):
    """Answer prompts, then critique and revise each answer against a constitution.

    Each output row keeps every step (principle, critique, revision) and TRL-ready fields:
    prompt/chosen/rejected (revision preferred to the first answer) and messages (for SFT).
    An interrupted run resumes from OUT.partial.jsonl when run again.

    Examples:

      rlaif generate examples/prompts.jsonl -o revisions.jsonl

      rlaif generate prompts.jsonl -o out.jsonl -c constitutions/helpful.yaml --rounds 3 --engine hf

      rlaif generate prompts.jsonl -o part-2.jsonl --shard 2/4
    """
    from rlaif.config import merged_params

    def stage():
        from rlaif import generate as generate_stage
        from rlaif.shard import parse_shard

        v = merged_params(ctx)
        cfg = generate_stage.GenerateConfig(
            prompts=v["prompts"],
            output=_require_output(v["output"]),
            constitution=v["constitution"],
            policy_model=v["policy_model"],
            judge_model=v["judge_model"],
            rounds=v["rounds"],
            seed=v["seed"],
            max_new_tokens=v["max_new_tokens"],
            temperature=v["temperature"],
            top_p=v["top_p"],
            chunk_size=v["chunk_size"],
            force=v["force"],
            engine=_engine_settings(v),
            shard=parse_shard(v["shard"]),
        )
        manifest = generate_stage.run(cfg)
        if cfg.output != "-":
            typer.echo(
                f"wrote {manifest['counts']['records']} records to {cfg.output}"
                f" ({manifest['wall_time_s']:.1f} s)",
                err=True,
            )

    _run_stage(stage)


@app.command()
def label(
    ctx: typer.Context,
    pairs: Annotated[
        str,
        typer.Argument(
            help="JSONL of pairs: prompt+responses, prompt+chosen/rejected, HH-RLHF"
            " chosen/rejected dialogues, or `rlaif generate` output ('-' for stdin)."
        ),
    ],
    output: OutputOpt = None,
    constitution: ConstitutionOpt = "harmless",
    judge_model: Annotated[
        str, typer.Option("-m", "--judge-model", help="Judge: HF folder, hub id, .gguf or alias.")
    ] = EMBEDDED,
    principles_per_pair: Annotated[
        str,
        typer.Option(
            "-k", "--principles-per-pair", help="Principles sampled per pair (averaged), or 'all'."
        ),
    ] = "1",
    method: Annotated[
        str,
        typer.Option(
            help="probabilities: read the option letters' probabilities; generate: parse a"
            " generated verdict (for engines without log-probabilities)."
        ),
    ] = "probabilities",
    cot: Annotated[
        bool, typer.Option("--cot", help="Generate a rationale first, then score the answer.")
    ] = False,
    clamp_low: Annotated[float, typer.Option(help="--cot: lowest probability kept.")] = 0.4,
    clamp_high: Annotated[float, typer.Option(help="--cot: highest probability kept.")] = 0.6,
    max_new_tokens: Annotated[
        int, typer.Option(help="Longest rationale (--cot) or verdict (--method generate).")
    ] = 256,
    seed: SeedOpt = 0,
    chunk_size: Annotated[int, typer.Option(help="Pairs judged together and saved.")] = 256,
    force: ForceOpt = False,
    engine: EngineOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = 0.85,
    max_model_len: MaxModelLenOpt = 4096,
    batch_size: BatchSizeOpt = 16,
    trust_remote_code: TrustRemoteCodeOpt = False,
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: MaxConcurrencyOpt = 8,
    request_timeout: RequestTimeoutOpt = 120.0,
    max_retries: MaxRetriesOpt = 5,
    shard: ShardOpt = None,
    config: ConfigOpt = None,
):
    """Label pairs of responses with the judge's preference (soft labels, both orders).

    For each pair and sampled principle the judge sees the pair as (A, B) and swapped; the
    probabilities of the letters are averaged into p (first response preferred). Rows are in
    TRL preference format (prompt, chosen, rejected) plus p_chosen, per-principle and per-order
    probabilities and position_consistent. Judge diagnostics are printed at the end and stored
    in the manifest. Any preference already in the input is kept as `reference`, used only
    for agreement figures.

    Examples:

      rlaif label pairs.jsonl -o prefs.jsonl

      rlaif label hh.jsonl -o prefs.jsonl -k all --engine hf

      rlaif label revisions.jsonl -o check.jsonl --method generate

      rlaif label pairs.jsonl -o prefs-3.jsonl --shard 3/8
    """
    from rlaif.config import merged_params

    def stage():
        from rlaif import label as label_stage
        from rlaif.shard import parse_shard

        v = merged_params(ctx)
        cfg = label_stage.LabelConfig(
            pairs=v["pairs"],
            output=_require_output(v["output"]),
            constitution=v["constitution"],
            judge_model=v["judge_model"],
            principles_per_pair=v["principles_per_pair"],
            method=v["method"],
            cot=v["cot"],
            clamp_low=v["clamp_low"],
            clamp_high=v["clamp_high"],
            max_new_tokens=v["max_new_tokens"],
            seed=v["seed"],
            chunk_size=v["chunk_size"],
            force=v["force"],
            engine=_engine_settings(v),
            shard=parse_shard(v["shard"]),
        )
        manifest = label_stage.run(cfg)
        if cfg.output != "-":
            typer.echo(
                f"wrote {manifest['counts']['records']} labelled pairs to {cfg.output}"
                f" ({manifest['wall_time_s']:.1f} s)",
                err=True,
            )

    _run_stage(stage)


@app.command()
def merge(
    shards: Annotated[
        list[str],
        typer.Argument(help="Outputs of `--shard I/N` runs, each with its OUT.manifest.json."),
    ],
    output: OutputOpt = None,
):
    """Join the outputs of `generate` or `label` run with --shard I/N into one output.

    Refuses shards of different jobs (stage, settings, input hash, constitution, models or
    shard count differ), a missing or repeated shard, and a record in two shards. Rows come
    out in input order, as one unsharded run writes them; the manifest sums counts and tokens,
    lists the shards and, for label, recomputes the judge diagnostics over all rows.

    Examples:

      rlaif merge prefs-1.jsonl prefs-2.jsonl prefs-3.jsonl -o prefs.jsonl

      rlaif merge revisions-*.jsonl -o revisions.jsonl
    """

    def stage():
        from rlaif.merge import MergeConfig
        from rlaif.merge import run as merge_run

        manifest = merge_run(MergeConfig(shards=shards, output=_require_output(output)))
        if output != "-":
            typer.echo(
                f"merged {len(shards)} shards: {manifest['counts'].get('records', 0)} records"
                f" to {output}",
                err=True,
            )

    _run_stage(stage)


@app.command()
def sample(
    ctx: typer.Context,
    prompts: Annotated[str, typer.Argument(help="JSONL of prompts, as for generate ('-': stdin).")],
    output: OutputOpt = None,
    model: Annotated[
        str, typer.Option("-m", "--model", help="Policy: HF folder, hub id, .gguf or alias.")
    ] = EMBEDDED,
    n: Annotated[
        int, typer.Option("--n", help="Responses per prompt (even; written as pairs).")
    ] = 2,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Longest response.")] = 256,
    seed: SeedOpt = 0,
    chunk_size: Annotated[int, typer.Option(help="Prompts sampled together and saved.")] = 256,
    force: ForceOpt = False,
    engine: EngineOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = 0.85,
    max_model_len: MaxModelLenOpt = 4096,
    batch_size: BatchSizeOpt = 16,
    trust_remote_code: TrustRemoteCodeOpt = False,
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: MaxConcurrencyOpt = 8,
    request_timeout: RequestTimeoutOpt = 120.0,
    max_retries: MaxRetriesOpt = 5,
    config: ConfigOpt = None,
):
    """Sample responses per prompt, written as pairs (a prompt and two responses) for labelling.

    Examples:

      rlaif sample examples/prompts.jsonl -o pairs.jsonl --n 2

      rlaif sample prompts.jsonl -o pairs.jsonl -m ./sft-model --n 4 --temperature 0.9
    """
    from rlaif.config import merged_params

    def stage():
        from rlaif import sample as sample_stage

        v = merged_params(ctx)
        cfg = sample_stage.SampleConfig(
            prompts=v["prompts"],
            output=_require_output(v["output"]),
            model=v["model"],
            n=v["n"],
            temperature=v["temperature"],
            top_p=v["top_p"],
            max_new_tokens=v["max_new_tokens"],
            seed=v["seed"],
            chunk_size=v["chunk_size"],
            force=v["force"],
            engine=_engine_settings(v),
        )
        manifest = sample_stage.run(cfg)
        if cfg.output != "-":
            typer.echo(
                f"wrote {manifest['counts']['pairs']} pairs to {cfg.output}"
                f" ({manifest['wall_time_s']:.1f} s)",
                err=True,
            )

    _run_stage(stage)


@eval_app.command("agreement")
def eval_agreement(
    file: Annotated[str, typer.Argument(help="Output of `rlaif label` ('-' for stdin).")],
):
    """Print the judge diagnostics of a labelled file: consistency, position bias, agreement.

    Examples:

      rlaif eval agreement prefs.jsonl
    """

    def stage():
        from rlaif.diagnostics import format_diagnostics, judge_diagnostics
        from rlaif.files import read_jsonl

        rows = [row for _, row in read_jsonl(file)[0]]
        missing = [k for k in ("p", "responses", "judgements") if k not in rows[0]]
        if missing:
            raise UserError(f"{file}: not an `rlaif label` output (missing {', '.join(missing)})")
        typer.echo(format_diagnostics(judge_diagnostics(rows)))

    _run_stage(stage)


def _training_stage(ctx: typer.Context, make_config, run, what: str) -> None:
    """The shared shell of training commands: merged flags, optional data-parallel relaunch,
    the stage's run, one line on completion."""
    from rlaif.config import merged_params

    def stage():
        v = merged_params(ctx)
        if v["num_processes"] > 1:
            _relaunch_under_accelerate(v["num_processes"])
        if not v["output_dir"]:
            raise UserError("missing -o/--output-dir (the folder for the trained model)")
        cfg = make_config(v, {k: v[k] for k in TRAINING_KEYS} | {"output_dir": v["output_dir"]})
        manifest = run(cfg)
        if manifest:  # only the main process of a data-parallel run writes
            typer.echo(
                f"wrote the {what} to {cfg.output_dir} ({manifest['wall_time_s']:.1f} s)", err=True
            )

    _run_stage(stage)


@app.command("train-rm")
def train_rm(
    ctx: typer.Context,
    prefs: Annotated[
        str,
        typer.Argument(
            help="Preference JSONL: `rlaif label` output, TRL chosen/rejected rows or HH-RLHF."
        ),
    ],
    output_dir: TrainOutputOpt = None,
    model: TrainModelOpt = EMBEDDED,
    label_mode: LabelModeOpt = "soft",
    min_confidence: MinConfidenceOpt = 0.1,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    lora_alpha: LoraAlphaOpt = 32,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = -1,
    learning_rate: LearningRateOpt = 1e-5,
    batch_size: Annotated[int, typer.Option(help="Pairs per device per step.")] = 8,
    gradient_accumulation_steps: GradAccumOpt = 1,
    max_length: Annotated[
        int, typer.Option(help="Longest prompt + response in tokens; longer pairs are dropped.")
    ] = 1024,
    eval_fraction: Annotated[float, typer.Option(help="Seeded share of pairs held out.")] = 0.1,
    save_steps: SaveStepsOpt = 50,
    gradient_checkpointing: GradCheckpointOpt = False,
    group_by_length: Annotated[
        bool, typer.Option(help="Batch pairs of similar length (less padding).")
    ] = True,
    num_processes: NumProcessesOpt = 1,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    config: ConfigOpt = None,
):
    """Train a reward model on preference labels (TRL RewardTrainer).

    Writes a normal Hugging Face folder (AutoModelForSequenceClassification), with
    metrics.json, curves.png and manifest.json. Checkpoints go to DIR.partial; an interrupted
    run resumes from the last one. Data parallel: --num-processes N, or on GPUs
    `accelerate launch --config_file examples/accelerate/CONFIG.yaml -m rlaif train-rm ...`.

    Examples:

      rlaif train-rm prefs.jsonl -o rm --label-mode soft --epochs 1

      rlaif train-rm hh.jsonl -o rm --label-mode hard --lora --max-steps 200
    """

    def make_config(v, common):
        from rlaif.train_rm import TrainRMConfig

        return TrainRMConfig(
            prefs=v["prefs"],
            **common,
            **{
                k: v[k]
                for k in ("label_mode", "min_confidence", "eval_fraction", "group_by_length")
            },
        )

    def run(cfg):
        from rlaif import train_rm as train_rm_stage

        return train_rm_stage.run(cfg)

    _training_stage(ctx, make_config, run, "reward model")


@app.command()
def sft(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Argument(
            help="Chat JSONL with 'messages' ending in the answer: `rlaif generate` output"
            " (prompt + final revision) or any such file."
        ),
    ],
    output_dir: TrainOutputOpt = None,
    model: TrainModelOpt = EMBEDDED,
    completion_only_loss: Annotated[
        bool, typer.Option(help="Loss on the answer only, not on the prompt.")
    ] = True,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    lora_alpha: LoraAlphaOpt = 32,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = -1,
    learning_rate: LearningRateOpt = 2e-5,
    batch_size: Annotated[int, typer.Option(help="Conversations per device per step.")] = 8,
    gradient_accumulation_steps: GradAccumOpt = 1,
    max_length: Annotated[
        int, typer.Option(help="Longest conversation in tokens; longer ones are truncated.")
    ] = 1024,
    save_steps: SaveStepsOpt = 50,
    gradient_checkpointing: GradCheckpointOpt = False,
    num_processes: NumProcessesOpt = 1,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    config: ConfigOpt = None,
):
    """Supervised fine-tuning on revisions (SL-CAI), with TRL's SFTTrainer.

    Trains on each row's last assistant turn given the turns before it. Writes a normal Hugging
    Face folder (AutoModelForCausalLM; LoRA merged) with metrics.json, curves.png and
    manifest.json; resumes from DIR.partial after a crash. Data parallel as for train-rm.

    Examples:

      rlaif sft revisions.jsonl -o sft-model --epochs 2

      rlaif sft chats.jsonl -o sft-model -m HuggingFaceTB/SmolLM2-360M-Instruct --lora
    """

    def make_config(v, common):
        from rlaif.sft import SFTConfig

        return SFTConfig(data=v["data"], completion_only_loss=v["completion_only_loss"], **common)

    def run(cfg):
        from rlaif import sft as sft_stage

        return sft_stage.run(cfg)

    _training_stage(ctx, make_config, run, "fine-tuned model")


@app.command()
def dpo(
    ctx: typer.Context,
    prefs: Annotated[
        str,
        typer.Argument(
            help="Preference JSONL: `rlaif label` output, TRL chosen/rejected rows or HH-RLHF."
        ),
    ],
    output_dir: TrainOutputOpt = None,
    model: TrainModelOpt = EMBEDDED,
    ref_model: Annotated[
        str | None,
        typer.Option(help="Reference model for the KL leash (default: the starting model)."),
    ] = None,
    beta: Annotated[
        float, typer.Option(help="Strength of the leash to the reference model.")
    ] = 0.1,
    loss_type: Annotated[
        str | None,
        typer.Option(
            help="A TRL DPO loss: sigmoid, ipo, hinge, robust, exo_pair, ... (default: sigmoid;"
            " exo_pair for soft labels)."
        ),
    ] = None,
    label_smoothing: Annotated[
        float, typer.Option(help="TRL's ε for the robust and exo_pair losses on hard labels.")
    ] = 0.0,
    label_mode: Annotated[
        str,
        typer.Option(
            help="hard: the judge's choice; filter: confident pairs only; soft: fit the judge's"
            " probability (exo_pair loss, one ε = 1 - p per pair)."
        ),
    ] = "hard",
    min_confidence: MinConfidenceOpt = 0.1,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    lora_alpha: LoraAlphaOpt = 32,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = -1,
    learning_rate: LearningRateOpt = 5e-6,
    batch_size: Annotated[int, typer.Option(help="Pairs per device per step.")] = 8,
    gradient_accumulation_steps: GradAccumOpt = 1,
    max_length: Annotated[
        int, typer.Option(help="Longest prompt + response in tokens; longer ones are truncated.")
    ] = 1024,
    save_steps: SaveStepsOpt = 50,
    gradient_checkpointing: GradCheckpointOpt = False,
    num_processes: NumProcessesOpt = 1,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    config: ConfigOpt = None,
):
    """Direct preference optimisation on AI (or human) labels, with TRL's DPOTrainer.

    Writes a normal Hugging Face folder (AutoModelForCausalLM; LoRA merged) with
    metrics.json, curves.png and manifest.json; resumes from DIR.partial after a crash. Data
    parallel as for train-rm.

    Examples:

      rlaif dpo prefs.jsonl -o dpo-model --beta 0.1

      rlaif dpo prefs.jsonl -o dpo-model -m sft-model --label-mode soft --lora
    """

    def make_config(v, common):
        from rlaif.dpo import DPOConfig

        return DPOConfig(
            prefs=v["prefs"],
            **common,
            **{
                k: v[k]
                for k in (
                    "ref_model",
                    "beta",
                    "loss_type",
                    "label_smoothing",
                    "label_mode",
                    "min_confidence",
                )
            },
        )

    def run(cfg):
        from rlaif import dpo as dpo_stage

        return dpo_stage.run(cfg)

    _training_stage(ctx, make_config, run, "DPO model")


@app.command()
def rl(
    ctx: typer.Context,
    prompts: Annotated[str, typer.Argument(help="JSONL of prompts, as for generate.")],
    output_dir: TrainOutputOpt = None,
    algo: Annotated[str, typer.Option(help="grpo, rloo or online-dpo (TRL's trainers).")] = "grpo",
    reward: Annotated[
        str | None,
        typer.Option(
            help="judge: the judge rates each completion (direct RLAIF); model: --reward-model;"
            " or module:function, a Python reward (default: model if --reward-model, else judge)."
        ),
    ] = None,
    reward_model: Annotated[
        str | None, typer.Option(help="Reward model folder from `rlaif train-rm`.")
    ] = None,
    judge_model: Annotated[
        str, typer.Option(help="--reward judge: the judge (HF folder, hub id, .gguf, alias).")
    ] = EMBEDDED,
    constitution: ConstitutionOpt = "harmless",
    judge_engine: Annotated[
        str, typer.Option(help="--reward judge: engine for the judge (hf shares the process).")
    ] = "hf",
    model: Annotated[
        str,
        typer.Option(
            "-m", "--policy-model", "--model", help="Starting policy: HF folder, hub id, alias."
        ),
    ] = EMBEDDED,
    ref_model: Annotated[
        str | None, typer.Option(help="Reference model for the KL term (default: the policy).")
    ] = None,
    kl_coef: Annotated[
        float, typer.Option(help="KL coefficient (TRL's beta); 0: no leash.")
    ] = 0.05,
    num_generations: Annotated[
        int, typer.Option(help="grpo/rloo: completions per prompt (the group).")
    ] = 4,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion.")] = 64,
    temperature: Annotated[float, typer.Option(help="Rollout sampling temperature.")] = 1.0,
    use_vllm: Annotated[
        bool, typer.Option("--use-vllm", help="Rollouts on vLLM (TRL colocate mode; GPU only).")
    ] = False,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    lora_alpha: LoraAlphaOpt = 32,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = -1,
    learning_rate: LearningRateOpt = 1e-6,
    batch_size: Annotated[
        int,
        typer.Option(
            help="grpo/rloo: completions per device per step (a multiple of the group);"
            " online-dpo: prompts per step."
        ),
    ] = 8,
    gradient_accumulation_steps: GradAccumOpt = 1,
    max_length: Annotated[int, typer.Option(help="online-dpo: longest prompt + answer.")] = 1024,
    save_steps: SaveStepsOpt = 50,
    gradient_checkpointing: GradCheckpointOpt = False,
    num_processes: NumProcessesOpt = 1,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    config: ConfigOpt = None,
):
    """Optimise a policy on-line (GRPO, RLOO or online DPO) against a reward model or the judge.

    Writes a normal Hugging Face folder (AutoModelForCausalLM; LoRA merged) with log.jsonl
    (per step: reward, KL, completion length, entropy, ...), metrics.json, curves.png and
    manifest.json; resumes from DIR.partial after a crash.

    Examples:

      rlaif rl prompts.jsonl -o policy --reward-model rm --algo grpo --max-steps 200

      rlaif rl prompts.jsonl -o policy --reward judge -c harmless --algo rloo --lora

      rlaif rl prompts.jsonl -o policy --reward mypkg.rewards:brevity --kl-coef 0
    """

    def make_config(v, common):
        from rlaif.rl import RLConfig

        judge = _engine_settings(
            {
                "engine": v["judge_engine"],
                "tensor_parallel_size": 1,
                "gpu_memory_utilization": 0.3,
                "max_model_len": 4096,
                "batch_size": 16,
                "trust_remote_code": v["trust_remote_code"],
                "dtype": "auto",
            }
        )
        return RLConfig(
            prompts=v["prompts"],
            judge_engine=judge,
            **common,
            **{
                k: v[k]
                for k in (
                    "algo",
                    "reward",
                    "reward_model",
                    "judge_model",
                    "constitution",
                    "ref_model",
                    "kl_coef",
                    "num_generations",
                    "max_new_tokens",
                    "temperature",
                    "use_vllm",
                )
            },
        )

    def run(cfg):
        from rlaif import rl as rl_stage

        return rl_stage.run(cfg)

    _training_stage(ctx, make_config, run, "policy")


def _relaunch_under_accelerate(n: int) -> None:
    """Run this same command as `n` data-parallel processes, then exit with their status."""
    import subprocess

    args = [a for a in sys.argv[1:]]
    for i, a in enumerate(args):  # drop --num-processes N / --num-processes=N
        if a == "--num-processes":
            del args[i : i + 2]
            break
        if a.startswith("--num-processes="):
            del args[i]
            break
    # torch's launcher sets the rank variables that accelerate reads inside the Trainer; it
    # picks NCCL on GPUs and gloo on CPUs (accelerate's own --cpu launcher starts one process).
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
    ]
    code = subprocess.call([*launch, "-m", "rlaif", *args])
    raise typer.Exit(code)


@app.command()
def score(
    input: Annotated[str, typer.Argument(help="JSONL: prompt with response(s), or pairs.")],
    rm: Annotated[str, typer.Option("--rm", help="Reward model folder (from train-rm).")],
    output: OutputOpt = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
):
    """Add the reward model's reward to each response.

    Rows with one `response` get `reward`; pairs (`responses`, chosen/rejected) get `rewards`.

    Examples:

      rlaif score --rm rm pairs.jsonl -o scored.jsonl
    """

    def stage():
        from rlaif.score import ScoreConfig, score_file

        score_file(
            ScoreConfig(rm=rm, input=input, output=_require_output(output), batch_size=batch_size)
        )

    _run_stage(stage)


@eval_app.command("rm")
def eval_rm(
    pairs: Annotated[str, typer.Argument(help="Pairs with a reference preference (HH-RLHF too).")],
    rm: Annotated[str, typer.Option("--rm", help="Reward model folder (from train-rm).")],
    plot: Annotated[
        str | None, typer.Option(help="Write a reliability diagram (PNG) here.")
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
):
    """Reward-model accuracy against reference labels (95% CI) and its calibration (ECE).

    Examples:

      rlaif eval rm --rm rm ../shared/data/hh-harmless-dev.jsonl --plot reliability.png
    """

    def stage():
        from rlaif.files import write_json
        from rlaif.score import EvalRMConfig, evaluate_rm, format_rm_report

        report = evaluate_rm(EvalRMConfig(rm=rm, pairs=pairs, plot=plot, batch_size=batch_size))
        typer.echo(format_rm_report(report))
        if json_out:
            write_json(json_out, report)

    _run_stage(stage)


@eval_app.command("winrate")
def eval_winrate(
    ctx: typer.Context,
    prompts: Annotated[str, typer.Argument(help="JSONL of prompts, as for generate.")],
    policy: Annotated[
        str, typer.Option(help="The model under test: HF folder (e.g. from dpo/rl), hub id, alias.")
    ],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="JSONL of compared answers and verdicts.")
    ] = None,
    baseline: Annotated[
        str, typer.Option(help="The model to beat (default: the embedded starting model).")
    ] = EMBEDDED,
    judge_model: Annotated[
        str, typer.Option(help="Judge: HF folder, hub id, .gguf or alias.")
    ] = EMBEDDED,
    constitution: ConstitutionOpt = "harmless",
    principles_per_pair: Annotated[
        str,
        typer.Option(
            "-k", "--principles-per-pair", help="Principles sampled per pair (averaged), or 'all'."
        ),
    ] = "1",
    rm: Annotated[
        str | None, typer.Option("--rm", help="Also report each side's mean reward.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 128,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature for both models (0: greedy).")
    ] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: SeedOpt = 0,
    chunk_size: Annotated[int, typer.Option(help="Prompts processed together and saved.")] = 256,
    force: ForceOpt = False,
    engine: EngineOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = 0.85,
    max_model_len: MaxModelLenOpt = 4096,
    batch_size: BatchSizeOpt = 16,
    trust_remote_code: TrustRemoteCodeOpt = False,
    dtype: DtypeOpt = "auto",
    config: ConfigOpt = None,
):
    """Win rate of a policy against a baseline, judged against the constitution.

    Both models answer each prompt with the same settings and seeds; the judge compares each
    pair in both orders. A win must hold in both orders; a verdict that flips with the order
    is a tie. Prints win/tie/loss with 95% intervals; the rows (answers, verdicts) go to -o
    and the report to its manifest.

    Examples:

      rlaif eval winrate examples/prompts.jsonl --policy dpo-model -o winrate.jsonl

      rlaif eval winrate prompts.jsonl --policy rl-model --baseline sft-model --rm rm -o wr.jsonl
    """
    from rlaif.config import merged_params

    def stage():
        from rlaif import winrate

        v = merged_params(ctx)
        if not v["output"]:
            raise UserError("missing -o/--output (a JSONL path for the compared answers)")
        cfg = winrate.WinrateConfig(
            prompts=v["prompts"],
            output=v["output"],
            policy=v["policy"],
            baseline=v["baseline"],
            judge_model=v["judge_model"],
            constitution=v["constitution"],
            principles_per_pair=v["principles_per_pair"],
            reward_model=v["rm"],
            max_new_tokens=v["max_new_tokens"],
            temperature=v["temperature"],
            top_p=v["top_p"],
            seed=v["seed"],
            chunk_size=v["chunk_size"],
            force=v["force"],
            engine=_engine_settings(v),
        )
        winrate.run(cfg)

    _run_stage(stage)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="An experiment's output folder.")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="HTML file to write.")
    ] = None,
):
    """One self-contained HTML page for an experiment, from its manifests and metrics.

    Finds every stage's output in RUN_DIR by its manifest: judge diagnostics with the
    per-principle table, reward-model curves and accuracy, SFT/DPO/RL curves and reward trend,
    win rates, and a few prompts with their critiques and revisions. Prints a short summary.

    Examples:

      rlaif report runs/exp1 -o runs/exp1/report.html
    """

    def stage():
        from rlaif.report import summary, write_report

        if not output:
            raise UserError("missing -o/--output (the HTML file to write)")
        run = write_report(run_dir, output)
        text = summary(run)
        if text:
            typer.echo(text)
        typer.echo(f"wrote the report to {output}", err=True)

    _run_stage(stage)


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Output of `rlaif generate` ('-' for stdin).")],
    record_id: Annotated[
        str | None, typer.Option("--id", help="Record to show (default: the first).")
    ] = None,
):
    """Print a record of `rlaif generate` output: prompt, first answer, critiques and revisions.

    Examples:

      rlaif show revisions.jsonl

      rlaif show revisions.jsonl --id p03
    """

    def stage():
        from rlaif.files import read_jsonl
        from rlaif.show import format_revision_record

        rows = [row for _, row in read_jsonl(file)[0]]
        matches = [r for r in rows if record_id is None or str(r.get("id")) == record_id]
        if not matches:
            raise UserError(f"{file}: no record with id {record_id!r}")
        if "revisions" not in matches[0]:
            raise UserError(f"{file}: not an `rlaif generate` output (no 'revisions' field)")
        typer.echo(format_revision_record(matches[0]))

    _run_stage(stage)


@constitution_app.command("validate")
def constitution_validate(
    files: Annotated[list[str], typer.Argument(help="Constitution YAML files or bundled names.")],
):
    """Check constitutions: required fields, unique ids, and every prompt rendered.

    Examples:

      rlaif constitution validate constitutions/harmless.yaml
    """

    def stage():
        from rlaif.constitution import load_constitution, render_all, resolve_constitution_path

        for name in files:
            c = load_constitution(resolve_constitution_path(name))
            rendered = render_all(c)
            n_prompts = sum(len(v) for v in rendered.values())
            typer.echo(
                f"{c.path}: ok — {c.name} v{c.version}, {len(c.principles)} principles,"
                f" {len(c.examples)} examples, {n_prompts} prompts rendered"
            )

    _run_stage(stage)


@constitution_app.command("show")
def constitution_show(
    file: Annotated[str, typer.Argument(help="Constitution YAML file or bundled name.")],
    principle: Annotated[
        str | None,
        typer.Option("-p", "--principle", help="Show the prompts this principle renders."),
    ] = None,
):
    """Print a constitution's principles (or one principle's rendered prompts).

    Examples:

      rlaif constitution show harmless

      rlaif constitution show harmless -p privacy
    """

    def stage():
        from rlaif.constitution import load_constitution, render_all, resolve_constitution_path

        c = load_constitution(resolve_constitution_path(file))
        if principle is not None:
            if principle not in c.by_id:
                raise UserError(f"{c.path}: no principle '{principle}' (ids: {', '.join(c.by_id)})")
            for kind, chat in render_all(c)[principle].items():
                typer.echo(f"=== {kind} prompt")
                for m in chat:
                    typer.echo(f"[{m['role']}]\n{m['content']}\n")
            return
        typer.echo(f"{c.name} v{c.version} ({c.path}, sha256 {c.sha256[:12]})")
        if c.description:
            typer.echo(c.description)
        for pr in c.principles:
            typer.echo(
                f"\n[{pr.id}]\n  critique:   {pr.critique}\n  revision:   {pr.revision}"
                f"\n  preference: {pr.preference}"
            )

    _run_stage(stage)


def _quiet_libraries() -> None:
    # vLLM and transformers log at INFO by default, and vLLM on a CPU repeats a harmless
    # thread-binding warning on every call; our progress bar says what matters. Env wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # TRL 1.16 warns five times per import that it was tested with vLLM <= 0.31; the CPU build
    # is 0.32 and TRL only uses vLLM here with `rl --use-vllm` (documented as untested).
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    # vLLM's own import-time deprecation notices about torch APIs: nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*is deprecated")


def main() -> None:
    _quiet_libraries()
    app(prog_name="rlaif")


if __name__ == "__main__":
    sys.exit(main())
