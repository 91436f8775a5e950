"""Typed configs: frozen dataclasses validated against their own type hints on load.

Every layer declares its config as nested dataclasses; `load_config` turns YAML plus
`--set key=value` overrides into an instance, or raises `ConfigError` naming the key path.
Ranges live in field metadata (`min`, `max`, `min_exclusive`) so the schema is the class.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from layer1_patches.shared.errors import CamnetError, ConfigError
from layer1_patches.shared.sources import apply_overrides as apply_overrides  # the layers import it from here
from layer1_patches.shared.sources import locate

T = TypeVar("T")


def bounded(default: Any, *, min: float | None = None, max: float | None = None,
            min_exclusive: float | None = None, doc: str = "", path: bool = False) -> Any:
    """A dataclass field with its doc and a numeric range checked on load.

    Any default works: a list, a mapping or a nested config section (a dataclass instance) is copied for each
    instance, so no two configs share it. `path=True` marks a file or folder (or a list of them): a loader that
    knows where a value came from makes it absolute against that source (`sources.path_keys`).
    """
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc, "path": path}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def required(doc: str, *, min: float | None = None, max: float | None = None,
             min_exclusive: float | None = None) -> Any:
    """A field without default (contracts such as a sidecar): data that lacks it is refused on load."""
    return dataclasses.field(metadata={"min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc})


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key '{path}': must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config key '{path}': {value!r} is not one of {_describe(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{path}': {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}': expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, got {value!r}")
        kt, vt = get_args(tp)
        return {_convert(k, kt, path): _convert(v, vt, _key(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a schema bug, not user input


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi, lo_ex = meta.get("min"), meta.get("max"), meta.get("min_exclusive")
    if lo is not None and value < lo:
        raise ConfigError(f"config key '{path}': {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"config key '{path}': {value!r} is above the maximum {hi}")
    if lo_ex is not None and value <= lo_ex:
        raise ConfigError(f"config key '{path}': {value!r} must be greater than {lo_ex}")


def _build(cls: Any, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"config key '{path}'" if path else "config"
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"config key '{_key(path, unknown[0])}': unknown key (known: {known})")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key '{_key(path, name)}': required")
            continue
        key = _key(path, name)
        value = _convert(data[name], hints[name], key)
        _check_range(value, field.metadata, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(path)
    return obj


def from_mapping(cls: type[T], data: Any) -> T:
    """Build and validate `cls` from plain data (as parsed from YAML)."""
    return typing.cast(T, _build(cls, data, ""))


def load_contract(cls: type[T], data: Any, where: str) -> T:
    """`from_mapping` for a file another program wrote (a sidecar, a summary, an index entry): the error is one
    line naming `where` (the file, and the entry within it) and the key, as `CamnetError`."""
    try:
        return from_mapping(cls, data)
    except ConfigError as err:
        raise CamnetError(f"{where}: {str(err).replace('config key', 'key', 1)}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning every failure into one error line naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}:{where} invalid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML (or start from defaults when `path` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    given: set[str] = set()
    apply_overrides(data, overrides or [], cls, given)
    try:
        return from_mapping(cls, data)
    except ConfigError as err:
        raise ConfigError(locate(str(err), path, given)) from None  # `--set KEY` or the file, whichever gave it


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config, for writing the resolved config next to outputs."""
    return typing.cast(dict[str, Any], dataclasses.asdict(obj))


def config_hash(obj: Any) -> str:
    """Stable short hash of a resolved config: equal configs give equal hashes."""
    return data_hash(to_dict(obj))


def data_hash(data: dict[str, Any]) -> str:
    """`config_hash` of a config already in plain-data form (e.g. one rewritten to an earlier schema)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def describe(cls: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, doc) for every key of a config class, in declaration order: the config reference.

    A nested section is a row of its own (type `section`, or `section or null` when null switches it off; default
    `null`, or empty when its keys, the rows after it, hold the defaults), followed by the rows of its keys.
    """
    rows: list[tuple[str, str, str, str]] = []
    hints = get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        path = _key(prefix, f.name)
        tp = hints[f.name]
        value = getattr(defaults, f.name)
        doc = str(f.metadata.get("doc", ""))
        options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        nested = [t for t in options if dataclasses.is_dataclass(t)]
        if nested:
            kind = "section or null" if type(None) in options else "section"
            rows.append((path, kind, "null" if value is None else "", doc))
            rows += describe(nested[0], path)
            continue
        rows.append((path, _type_name(tp), json.dumps(value), doc))
    return rows


def json_schema(cls: Any, title: str = "") -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a config or contract dataclass: types, ranges, defaults, docs.

    It is generated from the same type hints and `bounded` metadata that `from_mapping` validates against, so
    the published schema and the loader cannot disagree (what the loader adds beyond it: `validate` hooks).
    """
    schema = _object_schema(cls)
    head: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if title:
        head["title"] = title
    return {**head, **schema}


def _object_schema(cls: Any) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        meta = f.metadata
        for key, word in (("min", "minimum"), ("max", "maximum"), ("min_exclusive", "exclusiveMinimum")):
            if meta.get(key) is not None:
                prop[word] = meta[key]
        if meta.get("doc"):
            prop["description"] = meta["doc"]
        if f.default is not dataclasses.MISSING:
            if not dataclasses.is_dataclass(f.default):
                prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            prop["default"] = to_dict(value) if dataclasses.is_dataclass(value) else value
        else:
            required.append(f.name)
        props[f.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # dataclass's generated signature doc
        out["description"] = " ".join(cls.__doc__.split())
    if required:
        out["required"] = required
    return out


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        options = [_type_schema(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)
        if len(options) == 1 and "type" in options[0] and isinstance(options[0]["type"], str) and nullable:
            return {**options[0], "type": [options[0]["type"], "null"]}
        return {"anyOf": [*options, *([{"type": "null"}] if nullable else [])]}
    if origin is list:
        return {"type": "array", "items": _type_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(get_args(tp)[1])}
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for type {tp!r}")  # a schema bug, not user input


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))
