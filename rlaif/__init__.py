"""rlaif: RLAIF and Constitutional AI pipelines from the command line."""

__version__ = "0.1.0"


def main() -> None:
    """The `rlaif` command. Kept out of rlaif.cli so that Ctrl-C while the libraries load (the
    first second or so) is an interruption like any other: one line, exit 130, no traceback."""
    import sys

    try:
        from rlaif.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
