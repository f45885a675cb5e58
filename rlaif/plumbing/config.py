"""`--config FILE.yaml`: a stage's flags from a file; flags on the command line win.

Keys are the options' field names (`max_new_tokens`; `max-new-tokens` works too), the names the
manifest's settings use. Values go through the same conversion as the flags, so a file can't
smuggle in a value the command line would reject.
"""

from __future__ import annotations

import typer

from rlaif.plumbing.errors import at
from rlaif.plumbing.yaml_files import read_yaml

CONFIG_PARAM = "config"


def load_config_file(path: str) -> dict:
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise at(path, None, "expected a mapping of option names to values")
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
        if getattr(params[name], "multiple", False) and not isinstance(raw, list):
            raw = [raw]  # `base_url: http://...` for an option that may be given several times
        try:
            values[name] = params[name].process_value(ctx, raw)
        except typer.BadParameter as e:
            raise at(config_path, None, f"key '{key}': {e.message}") from None
    return values
