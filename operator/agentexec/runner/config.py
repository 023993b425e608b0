"""Reading the runner's configuration files (the providers file, the MCP
servers file): YAML or JSON, one mapping of named entries under a key, each
checked field by field; errors name the file and the entry, never quote a
line (it may hold a header's value)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml


def read_config_file(path: Path, what: str, error: type[ValueError]) -> Any:
    """``path`` decoded (YAML, or JSON, which is YAML too); ``error`` when it
    cannot be read or parsed, naming ``what`` it is and where."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r} ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): it quotes the offending line, which may hold a header's value.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise error(f"{what} {str(path)!r} is not YAML{where}: {problem}") from None


def config_entries(
    data: Any,
    key: str,
    kind: str,
    fields: frozenset[str],
    source: str,
    error: type[ValueError],
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """Each entry under ``key``: its name, the entry (a mapping with no field
    outside ``fields``), and how messages name it ("SOURCE: KIND 'NAME'")."""
    if not isinstance(data, Mapping) or not isinstance(data.get(key), Mapping):
        raise error(f"{source}: expected a mapping under {key!r}")
    for name, entry in data[key].items():
        where = f"{source}: {kind} {name!r}"
        if not isinstance(entry, Mapping):
            raise error(f"{where}: expected a mapping")
        unknown = set(entry) - fields
        if unknown:
            raise error(f"{where}: unknown fields {sorted(unknown)}")
        yield str(name), entry, where
