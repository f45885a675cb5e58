"""`--config FILE.yaml`: a stage's flags from a file; flags on the command line win.

Keys are the options' field names (`max_new_tokens`; `max-new-tokens` works too), the names the
manifest's settings use. Values go through the same conversion as the flags, so a file can't
smuggle in a value the command line would reject.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rlaif.errors import at

CONFIG_PARAM = "config"


def load_config_file(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise at(path, None, "no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise at(path, None, "not UTF-8 text") from None
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else None
        raise at(path, line, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise at(path, None, "expected a mapping of flag names to values")
    return data


def merged_params(ctx: typer.Context) -> dict:
    """The command's parameters: the command line first, then the config file, then defaults."""
    values = dict(ctx.params)
    config_path = values.pop(CONFIG_PARAM, None)
    if not config_path:
        return values
    params = {p.name: p for p in ctx.command.params if p.name != CONFIG_PARAM}
    for key, raw in load_config_file(config_path).items():
        name = str(key).replace("-", "_")
        if name not in params:
            known = ", ".join(sorted(n.replace("_", "-") for n in params))
            raise at(config_path, None, f"unknown key '{key}' (known: {known})")
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        try:
            values[name] = params[name].process_value(ctx, raw)
        except typer.BadParameter as e:
            raise at(config_path, None, f"key '{key}': {e.message}") from None
    return values
