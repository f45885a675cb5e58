"""rlaif: RLAIF and Constitutional AI pipelines from the command line."""

__version__ = "0.1.0"


def main() -> None:
    """The `rlaif` command. Kept out of rlaif.cli so that Ctrl-C while the libraries load (the
    first second or so) is an interruption like any other: one line, exit 130, no traceback."""
    try:
        from rlaif.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        _leave(130, "error: interrupted\n")
    except SystemExit as e:
        from rlaif.plumbing.commands import interrupted_by_signal

        # interrupted (the run is saved and reported): 130 or 143, whoever caught the signal
        if interrupted_by_signal() or e.code in (130, 143):
            _leave(e.code if isinstance(e.code, int) else 1)
        raise


def _leave(code: int, message: str = "") -> None:
    """Exit now with `code`. An interrupt that landed inside code a C extension runs while it
    is imported (PyRun_String) marks the interpreter to re-raise SIGINT on its way out, even
    once handled: exit -2 with nothing printed, where 130 was meant (CPython 3.11,
    `_Py_UnhandledKeyboardInterrupt`). Leaving without that last step keeps the exit code."""
    import os
    import sys

    sys.stderr.write(message)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
