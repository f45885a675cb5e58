"""Turn a stage's Config dataclass into a typer command: the options *are* the Config's fields.

`stage_command` reads the fields (see `rlaif.plumbing.options`), gives typer a function whose
signature declares them, and on a call merges `--config FILE.yaml` under the command line, builds
the Config, runs the stage and prints one closing line. The command's `--help` is the Config's
docstring. Why a signature built at run time rather than a parser of our own: typer keeps doing
what it does well (help, types, choices of bool flags, `--config`'s value conversion through
click), and nothing about an option is written twice.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from rlaif.plumbing.config import CONFIG_PARAM
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import is_disk_full
from rlaif.plumbing.internals import click_errors as _click_errors
from rlaif.plumbing.options import CliField, build_config, cli_fields
from rlaif.plumbing.outputs import release_output_locks

click_errors = _click_errors()


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run a command's work: every failure is one line on stderr, never a traceback.

    User errors (and what the system says about a user's path) exit with 2. Anything else is
    a bug in rlaif or a library: one line saying so, exit 1; `RLAIF_DEBUG=1` shows the
    traceback instead.
    """
    # Only the main thread may set handlers (a Python caller may run a stage in another).
    main_thread = threading.current_thread() is threading.main_thread()
    _SIGNALLED.clear()
    previous = {}
    if main_thread:
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn()
    except UserError as e:
        if not _SIGNALLED:
            _fail(str(e), e.exit_code)
        _interrupted(main_thread)
    except KeyboardInterrupt:
        _interrupted(main_thread)
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except BaseException as e:
        if _SIGNALLED:  # a library turned the interrupt into another error (a half import)
            _interrupted(main_thread)
        if os.environ.get("RLAIF_DEBUG"):
            raise
        message = " ".join(str(e).split())[:300]
        if is_disk_full(e):  # a library's own error type that only carries the system's words
            _fail(f"no space left on device ({message}); free some space and run it again", 2)
        if isinstance(e, OSError):
            where = f"{e.filename}: " if e.filename else ""
            _fail(f"{where}{e.strerror or e}", 2)
        if isinstance(e, MemoryError):
            _fail("out of memory; try smaller inputs, --batch-size or --chunk-size", 2)
        if not isinstance(e, Exception):
            raise
        _fail(
            f"unexpected {type(e).__name__}: {message} (a bug in rlaif or a library it uses;"
            " RLAIF_DEBUG=1 shows the traceback)",
            1,
        )
    finally:
        release_output_locks()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`), handled as Ctrl-C is: whatever is being written
    is cleaned up on the way out, finished records are kept, the exit code is 128 + 15."""


_SIGNALLED: list[int] = []  # the signals this command received


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def interrupted_by_signal() -> bool:
    """Whether the last command ended because of SIGINT or SIGTERM."""
    return bool(_SIGNALLED)


def _interrupted(main_thread: bool):
    code = 143 if signal.SIGTERM in _SIGNALLED else 130
    if main_thread:  # stopping now: a second signal changes nothing
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    _fail("interrupted: finished records are kept; run the same command again to resume", code)


def _fail(message: str, code: int):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code) from None


class OneLineErrors(TyperGroup):
    """The top-level command group. click prints a usage error (an unknown option, a value
    that is not a number) as the usage, a hint and the error on three lines; here it is one
    line, like every other error, still with exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:
            e.show()  # the help text itself
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx else (prog_name or "rlaif")
            typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:  # typer's own class (its vendored click has none)
            typer.echo("aborted", err=True)
            sys.exit(1)
        if rv == 130 and not interrupted_by_signal():
            # Ctrl-C outside a stage's run (while a command's libraries load): typer turns it
            # into a silent exit 130 (typer 0.29, core._main); it is reported like any other.
            typer.echo("error: interrupted", err=True)
        sys.exit(rv if isinstance(rv, int) else 0)


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
            from rlaif.plumbing.config import merged_params

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
