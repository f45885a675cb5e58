"""Command-line options declared once: as fields of each stage's Config dataclass.

A field made with `option(...)` carries its help, its short or extra flags and, if the command
line spells it differently, a parser, in the field's metadata; `rlaif.plumbing.commands` turns those
fields into typer options, and `--config FILE.yaml` keys are the same field names. Options
that several stages share live in one dataclass each (`EngineSettings`, `TrainingSettings`,
`JudgingSettings`, ...), reused as a `group(...)` field or as a base class.

A subclass may redeclare a field with a plain default (`learning_rate: float = 2e-5`): it keeps
the help and flags of the base class's declaration, so a stage changes a default without
repeating the option.

This module imports nothing heavy: `rlaif --help` reads these declarations.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any


def option(
    default: Any = MISSING,
    *,
    help: str,
    flags: tuple[str, ...] = (),
    argument: bool = False,
    parse: Callable[[Any], Any] | None = None,
    default_factory: Any = MISSING,
    fingerprint: bool = True,
    bounds: tuple[int, int] | None = None,
) -> Any:
    """A Config field that is also a command-line option.

    `flags`: the option's names (default: `--field-name`), e.g. `("-m", "--model")`.
    `argument`: a positional argument instead of an option.
    `parse`: turns the command line's text into the field's value (e.g. "2/4" into a Shard);
    the option then takes text, shown without a default.
    `fingerprint=False`: the option changes nothing a row holds (where the output goes,
    whether to publish), so a run resumes and an output stays up to date across its values.
    `bounds`: the lowest and highest integer it takes, checked on the command line.

    Every option is also checked for what no option takes: a float that is inf or nan, and
    text that is not UTF-8 (a lone surrogate, a file name in another encoding), which would
    fail later inside JSON or a library.
    """
    metadata = {
        "help": help,
        "flags": flags,
        "argument": argument,
        "parse": parse,
        "fingerprint": fingerprint,
        "bounds": bounds,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# What every library a seed reaches takes (numpy's legacy seeding stops at 2**32 - 1; torch,
# vLLM and transformers take more), so a seed fails here rather than after a model has loaded.
SEED_BOUNDS = (0, 2**32 - 1)


def seed_option(help: str) -> Any:
    """A `--seed`, within what every library takes."""
    return option(0, help=help, bounds=SEED_BOUNDS)


def output_option(help: str = "Output JSONL file ('-' for stdout).") -> Any:
    """The `-o/--output` of a stage that writes a JSONL file."""
    return option(help=help, flags=("-o", "--output"), fingerprint=False)


def group(
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    help: dict[str, str] | None = None,
    choices: dict[str, tuple] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A Config field holding a shared group of options (a dataclass such as EngineSettings).

    Its fields become options of the command; `only` keeps a subset (the others keep the
    group's defaults), `help` rewords some for this stage, `choices` narrows what some accept.
    """
    metadata = {"group": cls, "only": only, "help_overrides": help or {}, "choices": choices or {}}
    return dataclasses.field(default_factory=default_factory or cls, metadata=metadata)


@dataclass(frozen=True)
class CliField:
    """One command-line parameter, flattened out of a Config (and its groups)."""

    name: str  # the field's, the parameter's and the --config key's name: "max_new_tokens"
    path: tuple[str, ...]  # where the value goes, e.g. ("engine", "max_model_len")
    type: Any  # the type the command line parses (str when `parse` is set)
    default: Any  # MISSING: required
    help: str
    flags: tuple[str, ...]
    argument: bool
    parse: Callable[[Any], Any] | None
    choices: tuple | None = None  # checked before the Config is built
    bounds: tuple[int, int] | None = None

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def display(self) -> str:
        """How a user spells it, for error messages: `-o/--output`, or `PROMPTS`."""
        return self.name.upper() if self.argument else "/".join(self.flags)


def _metadata(cls: type, name: str) -> dict:
    """A field's option metadata, inherited from the nearest base class that declared it, so
    that a redeclared default keeps the base declaration's help and flags."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and declared.metadata:
            merged |= dict(declared.metadata)
    return merged


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def cli_fields(cls: type, *, _path: tuple[str, ...] = ()) -> list[CliField]:
    """The command-line parameters of a Config, groups flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[CliField] = []
    for f in _stage_fields_first(cls):
        meta = _metadata(cls, f.name)
        if "group" in meta:
            inner = cli_fields(meta["group"], _path=(f.name,))
            group_default = _default(f)
            for sub in inner:
                local = sub.path[-1]
                if meta["only"] is not None and local not in meta["only"]:
                    continue
                out.append(
                    dataclasses.replace(
                        sub,
                        path=(*_path, *sub.path),
                        default=getattr(group_default, local),
                        help=meta["help_overrides"].get(local, sub.help),
                        choices=meta["choices"].get(local, sub.choices),
                    )
                )
            continue
        if "help" not in meta:
            continue  # not an option: set by the stage itself
        out.append(
            CliField(
                name=f.name,
                path=(*_path, f.name),
                type=str | None if meta["parse"] else hints[f.name],
                default=_default(f),
                help=meta["help"],
                flags=meta["flags"] or (f"--{f.name.replace('_', '-')}",),
                argument=meta["argument"],
                parse=meta["parse"],
                bounds=meta.get("bounds"),
            )
        )
    names = [f.name for f in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{cls.__name__}: options declared twice: {', '.join(twice)}")
    return out


def _stage_fields_first(cls: type) -> list[dataclasses.Field]:
    """The fields a class adds first, then those of its shared base classes: `--help` starts
    with what is particular to the stage."""
    inherited = {
        name for base in cls.__mro__[1:] for name in getattr(base, "__dataclass_fields__", {})
    }
    all_fields = dataclasses.fields(cls)
    return [f for f in all_fields if f.name not in inherited] + [
        f for f in all_fields if f.name in inherited
    ]


def check_value(f: CliField, value: Any) -> None:
    """What every option must be, whatever its stage: finite, within its bounds, UTF-8."""
    import math

    from rlaif.plumbing.errors import UserError

    # the long flag as the user most likely typed it: "--lr", not "--lr/--learning-rate"
    name = f.display if f.argument else next((x for x in f.flags if x.startswith("--")), f.display)
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise UserError(f"{name} {item}: must be a finite number")
        if f.bounds and isinstance(item, int) and not f.bounds[0] <= item <= f.bounds[1]:
            low, high = f.bounds
            raise UserError(f"{name} {item:,}: must be between {low:,} and {high:,}")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                shown = item.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                raise UserError(
                    f"{name} {shown}: is not valid UTF-8 text (a file name in another"
                    " encoding, or a lone surrogate); rename the file or fix the text"
                ) from None


def build_config(cls: type, values: dict[str, Any]):
    """A Config from parameter values keyed by `CliField.name` (absent: the default).

    Raises UserError naming the option when a required one is missing; the Config's own
    `__post_init__` checks the values.
    """
    from rlaif.plumbing.errors import UserError

    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for f in cli_fields(cls):
        value = values.get(f.name, f.default)
        if value is None and f.required:
            value = MISSING
        if value is MISSING:
            raise UserError(f"missing {f.display}: {f.help}")
        if f.choices is not None and value not in f.choices:
            raise UserError(f"{f.flags[-1]} {value}: choose one of {', '.join(f.choices)}")
        check_value(f, value)
        if f.parse is not None:
            value = f.parse(value)
        if len(f.path) == 1:
            top[f.path[0]] = value
        else:
            groups.setdefault(f.path[0], {})[f.path[1]] = value
    for name, sub_values in groups.items():
        field = cls.__dataclass_fields__[name]
        top[name] = dataclasses.replace(_default(field), **sub_values)
    return cls(**top)
