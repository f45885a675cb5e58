"""Reading the YAML files users write (constitutions, `--config`): safely, with one-line errors.

`yaml.safe_load` builds no arbitrary objects, but it still follows aliases, so a few lines of
nested aliases ("billion laughs") can ask for gigabytes. Neither file kind needs more than a
handful of aliases; beyond `MAX_ALIASES` the file is refused while it is being read. A key given
twice in one mapping is refused with its line, as YAML requires and PyYAML does not check.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.plumbing.errors import at, lone_surrogate
from rlaif.plumbing.files import is_text

MAX_ALIASES = 16
MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base`


def read_yaml(path: str, what: str):
    """The parsed document of a YAML file (`what` names it in errors: "config file")."""
    import yaml

    class LimitedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    mark = self.peek_event().start_mark
                    raise at(
                        path,
                        mark.line + 1,
                        f"more than {MAX_ALIASES} YAML aliases (*name); write the values out",
                    )
            return super().compose_node(parent, index)

        def compose_scalar_node(self, anchor):
            node = super().compose_scalar_node(anchor)
            if not is_text(node.value):  # "\\ud800" in a double-quoted string
                raise lone_surrogate(path, node.start_mark.line + 1)
            return node

        def compose_mapping_node(self, anchor):
            node = super().compose_mapping_node(anchor)
            _refuse_duplicate_keys(path, node)
            return node

    p = Path(path)
    if not p.is_file():
        raise at(path, None, f"no such {what}" if not p.is_dir() else f"is a folder, not a {what}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise at(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    loader = LimitedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else None
        raise at(path, line, f"invalid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise at(path, None, "YAML nested too deeply") from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(path: str, node) -> None:
    """YAML forbids a key twice in one mapping; PyYAML keeps the last silently, so a second
    `principles:` would replace the first without a word. Checked on the keys as written
    (`{seed: 1, seed: 3}` on one line too), before PyYAML merges `<<: *base` in: a merged key
    may be given again, by design, and PyYAML adds the merged keys to the very mapping nodes
    (so a check while constructing would see the merged keys of another mapping twice)."""
    import yaml

    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
            continue  # a list or mapping as a key: left to PyYAML, which refuses it
        key = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise at(
                path,
                line,
                f"key {key_node.value!r} appears twice in one mapping (first on line {seen[key]});"
                " YAML forbids that, and only one would be used",
            )
        seen[key] = line
