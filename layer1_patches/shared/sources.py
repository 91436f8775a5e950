"""Where each value of a config came from: the YAML file or `--set` on the command line.

The source decides two things: which one an error names (a bad `--set local_workers=two` is the command line's
fault, not the file's), and which folder a relative path in the value is relative to (the file's folder for a
file, the current directory for the command line). `apply_overrides` therefore records the key paths it set.
`--set key+=value` appends to a list (one item, or each item of a YAML list) instead of replacing it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from layer1_patches.shared.errors import ConfigError

_KEY = re.compile(r"config key '([^']*)'")


def split_item(item: str) -> tuple[str, bool, str]:
    """`a.b=v` -> ("a.b", False, "v"); `a.b+=v` -> ("a.b", True, "v")."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    append = key.endswith("+")
    key = key[:-1].strip() if append else key
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value or key+=value")
    return key, append, raw


def _field(schema: Any, parts: list[str]) -> tuple[dataclasses.Field[Any], Any] | None:
    """The dataclass field (and its type) at a key path of `schema`, or None when the path is not a field."""
    cls, found = schema, None
    for part in parts:
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        tp = get_type_hints(cls)[part]
        found = (fields[part], tp)
        options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        cls = next((o for o in options if dataclasses.is_dataclass(o)), None)
    return found


def _is_list(tp: Any) -> bool:
    options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    return any(get_origin(o) is list for o in options)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return copy.deepcopy(field.default) if field.default is not dataclasses.MISSING else None


def _appended(node: dict[str, Any], item: str, parts: list[str], schema: Any) -> list[Any]:
    """The list `key+=value` makes: the current list (the file's, else the schema default) with the items added."""
    found = _field(schema, parts) if schema is not None else None
    key = ".".join(parts)
    if found is not None and not _is_list(found[1]):
        raise ConfigError(f"--set {item!r}: config key '{key}' is not a list (+= appends to a list)")
    current = node.get(parts[-1], _default(found[0]) if found is not None else None)
    if current is None:
        current = []
    if not isinstance(current, list):
        raise ConfigError(f"--set {item!r}: config key '{key}' is not a list (+= appends to a list)")
    return current


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: Any = None,
                    given: set[str] | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` / `a.b.c+=value` overrides (values parsed as YAML) to a nested mapping, in place.

    `schema` (the config class) lets `+=` refuse a key that is not a list and start from the key's default;
    `given` collects the key paths set, `key` for `=` and `key[i]` for each item `+=` appended.
    """
    for item in overrides:
        key, append, raw = split_item(item)
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: config key '{part}' is not a mapping")
            node = child
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err})") from None
        if not append:
            node[parts[-1]] = value
            if given is not None:
                given.add(key)
            continue
        current = _appended(node, item, parts, schema)
        added = value if isinstance(value, list) else [value]
        node[parts[-1]] = [*current, *added]
        if given is not None:
            given.update(f"{key}[{i}]" for i in range(len(current), len(current) + len(added)))
    return data


def error_key(message: str) -> str | None:
    """The key path an error line names (`config key 'a.b[2]'`), or None."""
    match = _KEY.search(message)
    return match.group(1) if match else None


def covers(prefix: str, key: str) -> bool:
    """Whether the value at `prefix` holds `key` (itself, a key below it, or an item of it)."""
    return key == prefix or key.startswith((prefix + ".", prefix + "["))


def given_by(key: str | None, given: set[str]) -> str | None:
    """The `--set` key path that gave the value at `key`, or None when the value came from elsewhere."""
    if key is None:
        return None
    hits = [g for g in given if covers(g, key)]
    if not hits:  # an unknown section: the error names its first part (`sampling.randm` of `sampling.randm.n`)
        hits = [g for g in given if covers(key, g)]
    return max(hits, key=len) if hits else None


def relabel(message: str, where: str) -> str:
    """The error line with its location replaced by `where`; the key path and the reason stay."""
    start = message.find("config key '")
    return f"{where}: {message[start:] if start >= 0 else message}"


def locate(message: str, path: Path | None, given: set[str]) -> str:
    """An error from building a config, labelled with its source: `--set KEY` or the file."""
    hit = given_by(error_key(message), given)
    if hit is not None:
        return relabel(message, f"--set {hit}")
    return f"{path}: {message}" if path is not None else message


def path_keys(cls: Any, prefix: str = "") -> list[str]:
    """Key paths of the fields marked `bounded(..., path=True)` in `cls` and its sections."""
    keys: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("path"):
            keys.append(key)
        tp = hints[f.name]
        options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        keys += [k for o in options if dataclasses.is_dataclass(o) for k in path_keys(o, key)]
    return keys


def absolute(value: str, base: Path) -> str:
    """`value` as an absolute path: `~` expanded, a relative path taken relative to `base`."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    # `../../demo_out` from configs/experiment/ reads as /repo/demo_out: collapsed by name, links not followed
    return os.path.normpath(base / path)


def anchor_paths(data: dict[str, Any], keys: list[str], base: Path) -> list[str]:
    """Make the relative paths at `keys` of plain config data absolute against `base`, in place; the keys
    that held a relative path.

    Run on a file's data before overrides: its relative paths are relative to its folder. Values of the wrong
    type are left for validation to report.
    """
    anchored = []
    for key in keys:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            continue
        old = node[last]
        if isinstance(old, str) and old:
            node[last] = absolute(old, base)
        elif isinstance(old, list):
            node[last] = [absolute(v, base) if isinstance(v, str) and v else v for v in old]
        if node[last] != old:
            anchored.append(key)
    return anchored


def anchor_item(item: str, keys: set[str], base: Path) -> str:
    """A `key=value` override with its value made absolute against `base` when `key` names a path field."""
    try:
        key, _, raw = split_item(item)
        value = yaml.safe_load(raw) if raw.strip() else None
    except (ConfigError, yaml.YAMLError):
        return item  # the layer's loader reports it, with the key
    if key not in keys or not isinstance(value, str) or not value:
        return item
    path = absolute(value, base)
    # a path with ': ' or '#' would not read back as the same string: quote it (a JSON string is YAML)
    text = path if yaml.safe_load(path) == path else json.dumps(path)
    return f"{item.partition('=')[0]}={text}"
