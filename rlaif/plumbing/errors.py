"""User-facing errors: one line saying what is wrong and how to fix it, exit code 2."""


class UserError(Exception):
    """A problem with what the user passed (a file, a flag, a setting), not a bug.

    The CLI prints the message on one line and exits with code 2; nothing is written.
    """

    exit_code = 2


def at(path: str, line: int | None, problem: str) -> UserError:
    """An error that names the file (and line) it is about, like a compiler: `file:3: problem`."""
    where = f"{path}:{line}" if line is not None else str(path)
    return UserError(f"{where}: {problem}")


def lone_surrogate(path: str, line: int | None) -> UserError:
    """A lone surrogate escape (JSON's or YAML's "\\ud800") parses into a string that is not
    text: no UTF-8 file, manifest or tokenizer can take it, so it is refused where it is read."""
    return at(
        path,
        line,
        "holds a lone surrogate escape (such as \\ud800), which is not text; fix or remove it",
    )
