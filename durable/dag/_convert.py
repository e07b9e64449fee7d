"""Plain data in, typed values out: how step and run inputs cross the history.

Inputs and results are stored as plain data (what msgpack stores: None, bool, int,
float, str, bytes, lists and str-keyed dicts). `to_plain` turns attrs instances and
dataclasses into dicts on the way in; `from_plain` builds the annotated type back,
checking as it goes, so an executor typed ``input: Page`` gets a ``Page`` or a clear
error naming the field that did not fit.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

T = TypeVar("T")


def to_plain(value: object) -> object:
    """*value* with attrs instances, dataclasses, enums and tuples made plain."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    cls: Any = type(value)
    if attrs.has(cls):
        return {
            field.name: to_plain(getattr(value, field.name))
            for field in attrs.fields(cls)
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_plain(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(item) for item in value]
    return value  # the store's codec refuses what it cannot hold, with the path


def from_plain(data: object, tp: Any, where: str = "input") -> Any:
    """Build a value of type *tp* from plain *data*.

    Raises:
        TypeError: *data* does not fit *tp*; the message names the offending path.
    """
    if tp is Any or tp is object:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if data is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return from_plain(data, arm, where)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError("; ".join(errors) or f"{where}: no type fits {data!r}")
    if origin is typing.Literal:
        if data in args:
            return data
        raise TypeError(f"{where}: expected one of {args!r}, got {data!r}")
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        if not isinstance(data, list | tuple):
            raise TypeError(f"{where}: expected a list, got {type(data).__name__}")
        container = origin or tp
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(data):
                raise TypeError(f"{where}: expected {len(args)} items, got {len(data)}")
            return tuple(
                from_plain(item, arm, f"{where}[{i}]")
                for i, (item, arm) in enumerate(zip(data, args, strict=True))
            )
        item_type = args[0] if args else Any
        items = [from_plain(x, item_type, f"{where}[{i}]") for i, x in enumerate(data)]
        return items if container is list else container(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(data, Mapping):
            raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
        key_type, value_type = args if args else (Any, Any)
        return {
            from_plain(key, key_type, f"{where} key"): from_plain(
                value, value_type, f"{where}[{key!r}]"
            )
            for key, value in data.items()
        }
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        return _build(data, tp, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise TypeError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(tp, type):
        if tp is int and isinstance(data, bool):
            raise TypeError(f"{where}: expected int, got bool")
        if isinstance(data, tp):
            return data
        raise TypeError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
    return data  # an annotation we cannot check (a TypeVar, a Protocol): as stored


def _build(data: object, tp: type[T], where: str) -> T:
    if not isinstance(data, Mapping):
        raise TypeError(
            f"{where}: expected a mapping for {tp.__name__}, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(tp)
    if attrs.has(tp):
        fields = [(f.name, f.alias or f.name, f.init) for f in attrs.fields(tp)]
    else:
        fields = [(f.name, f.name, f.init) for f in dataclasses.fields(tp)]  # type: ignore[arg-type]
    unknown = set(data) - {name for name, _, _ in fields}
    if unknown:
        raise TypeError(f"{where}: {tp.__name__} has no field {sorted(unknown)[0]!r}")
    kwargs = {
        alias: from_plain(data[name], hints.get(name, Any), f"{where}.{name}")
        for name, alias, init in fields
        if init and name in data
    }
    try:
        return tp(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{where}: cannot build {tp.__name__}: {exc}") from None
