"""One YAML loader for config and mapping files: safe, and with no anchors or aliases.

``yaml.safe_load`` expands aliases, so a few lines of nested aliases (a "billion laughs")
exhaust memory. Neither config nor mappings need them, so any anchor or alias is refused
with a message naming the line, before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: anchors and aliases (&name, *name) are not allowed")
        return super().compose_node(parent, index)


def load_yaml(raw: bytes | str) -> Any:
    """Parse one YAML document; raises yaml.YAMLError (also for invalid UTF-8 or an alias)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise yaml.YAMLError(f"not valid UTF-8 (byte {exc.start})") from exc
    return yaml.load(raw, Loader=_NoAliasLoader)
