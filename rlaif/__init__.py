"""rlaif: RLAIF and Constitutional AI pipelines from the command line."""

__version__ = "0.1.0"


def main() -> None:
    """The `rlaif` command. Kept out of rlaif.cli so that Ctrl-C while the libraries load (the
    first second or so) is an interruption like any other: one line, exit 130, no traceback."""
    import os
    import sys

    try:
        from rlaif.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    except SystemExit as e:
        from rlaif.plumbing.commands import interrupted_by_signal

        if interrupted_by_signal():
            # An interrupt that landed inside a library's import can leave the interpreter
            # to re-raise SIGINT on its way out (exit -2 where 130 was reported); the run is
            # already saved and reported, so leave without that last step.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        raise
