"""Turn a stage's Config dataclass into a typer command: the options *are* the Config's fields.

`stage_command` reads the fields (see `rlaif.options`), gives typer a function whose signature
declares them, and on a call merges `--config FILE.yaml` under the command line, builds the
Config, runs the stage and prints one closing line. The command's `--help` is the Config's
docstring. Why a signature built at run time rather than a parser of our own: typer keeps doing
what it does well (help, types, choices of bool flags, `--config`'s value conversion through
click), and nothing about an option is written twice.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from rlaif.errors import UserError
from rlaif.options import CliField, build_config, cli_fields

CONFIG_PARAM = "config"


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run a command's work: user errors become one line on stderr and exit code 2."""
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


def _parameter(f: CliField) -> inspect.Parameter:
    if f.argument:
        info = typer.Argument(help=f.help)
    elif f.type is bool and f.default is True:
        info = typer.Option(f"{f.flags[-1]}/--no-{f.flags[-1][2:]}", help=f.help)
    else:
        info = typer.Option(*f.flags, help=f.help)  # bool off by default: a single switch
    default = f.default
    if f.required:
        # A required argument has no default; a required option is checked by build_config,
        # which names it, so a --config file can supply it too.
        default = inspect.Parameter.empty if f.argument else None
    annotation = f.type
    if default is None and type(None) not in typing.get_args(annotation):
        annotation = annotation | None
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def _config_parameter() -> inspect.Parameter:
    info = typer.Option("--config", help="YAML file of option values; options given here win.")
    return inspect.Parameter(
        CONFIG_PARAM,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, info],
    )


def stage_command(
    app: typer.Typer,
    name: str,
    config_cls: type,
    run: Callable[[Any], dict],
    done: Callable[[Any, dict], str | None] | None = None,
) -> None:
    """Register `name` on `app`: its options from `config_cls`, its work `run(config)`, and
    `done(config, manifest)` the closing line for stderr (None: nothing to say)."""
    fields = cli_fields(config_cls)

    def command(ctx: typer.Context, **_: Any) -> None:
        def work():
            from rlaif.config import merged_params

            cfg = build_config(config_cls, merged_params(ctx))
            if getattr(cfg, "num_processes", 1) > 1 and "WORLD_SIZE" not in os.environ:
                relaunch_data_parallel(cfg.num_processes)
            manifest = run(cfg)
            line = done(cfg, manifest) if done and manifest else None
            if line:
                typer.echo(line, err=True)

        run_cli(work)

    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    params = [context, *(_parameter(f) for f in fields), _config_parameter()]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = inspect.cleandoc(config_cls.__doc__ or "")
    app.command(name)(command)


def relaunch_data_parallel(n: int) -> None:
    """Run this same command as `n` data-parallel processes, then exit with their status.

    torch's launcher sets the rank variables that accelerate reads inside the Trainer; it picks
    NCCL on GPUs and gloo on CPUs (accelerate's own --cpu launcher starts one process). The
    children see WORLD_SIZE and so do not relaunch again, whether the option came from the
    command line or a --config file.
    """
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
    ]
    raise typer.Exit(subprocess.call([*launch, "-m", "rlaif", *sys.argv[1:]]))
