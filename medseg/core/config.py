"""Strict YAML → dataclass loading.

YAML here is data: it is parsed with ``yaml.safe_load`` and validated into frozen dataclasses.
An unknown key, a missing required key or a value of the wrong type raises
:class:`medseg.core.errors.ConfigError` naming the file and the key path (``network.channels[2]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from medseg.core.errors import ConfigError

__all__ = ["load_yaml", "from_mapping"]

T = TypeVar("T")


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a YAML text file (byte {exc.start} is not UTF-8); give a model .yaml, "
                          f"a .safetensors checkpoint, a training folder or a bundled model name") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from exc
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc


def from_mapping(cls: type[T], data: Any, *, source: str = "<config>", path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively and strictly.

    Parameters
    ----------
    cls : dataclass type
    data : mapping
    source : str
        File name used in error messages.
    path : str
        Key path of ``data`` inside the file (for nested calls).
    """
    return _convert(cls, data, source, path or "")


def _where(source: str, path: str) -> str:
    return f"{source}: {path or '<top level>'}"


def _convert(tp: Any, value: Any, source: str, path: str) -> Any:
    """``value`` (parsed YAML/JSON) checked against the type hint ``tp`` and converted to it."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, source, path)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, source, path)
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{_where(source, path)} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (tuple, list):
        return _convert_sequence(tp, value, source, path)
    if origin in (dict, Mapping) or tp is dict:
        args = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(source, path)} must be a mapping, got {type(value).__name__}")
        return {_convert(args[0], k, source, f"{path}.{k}"): _convert(args[1], v, source, f"{path}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, source, path)


def _convert_dataclass(tp: Any, value: Any, source: str, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_where(source, path)} must be a mapping, got {type(value).__name__}")
    hints = get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(
            f"{source}: unknown key {key!r}; allowed keys at {path or 'top level'}: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{source}: missing required key {sub!r}")
    try:
        return tp(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_where(source, path)}: {exc}") from exc


def _convert_union(tp: Any, value: Any, source: str, path: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _convert(a, value, source, path)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{_where(source, path)}: no allowed type matches {value!r}")


def _convert_sequence(tp: Any, value: Any, source: str, path: str) -> Any:
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{_where(source, path)} must be a list, got {type(value).__name__}")
    if get_origin(tp) is list:
        return [_convert(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{_where(source, path)} must have {len(args)} items, got {len(value)}")
    return tuple(_convert(a, v, source, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _convert_scalar(tp: Any, value: Any, source: str, path: str) -> Any:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(source, path)} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(source, path)} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source, path)} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(source, path)} must be a string, got {value!r}")
        return value
    return value
