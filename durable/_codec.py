"""msgpack encoding of user values and history records; nothing is ever unpickled.

User values are ``None, bool, int, float, str, bytes, list, dict`` plus these extension
types (msgpack ext codes, stable forever once released):

| code | type | payload |
|---|---|---|
| 1 | ``datetime.datetime`` | ISO 8601 text; an aware datetime keeps its UTC offset |
| 2 | ``datetime.date`` | ISO 8601 text |
| 3 | ``datetime.timedelta`` | msgpack ``[days, seconds, microseconds]`` |
| 4 | ``decimal.Decimal`` | its ``str()`` |
| 5 | ``uuid.UUID`` | the 16 raw bytes |

Tuples come back as lists, and subclasses of the basic types as the basic type (an
``IntEnum`` as ``int``). Because `store_value` hands back the *decoded* value, a
step sees the same value on its first run as on replay.

Records (history entries, metadata) are msgpack arrays whose user-value fields are
nested msgpack bytes, so loading a history never decodes an output it does not return.

Rule: `CorruptRecordError` for undecodable stored bytes, `UnstorableValueError` for
unstorable user values; no other error leaves this module.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any

import msgpack

from ._errors import CorruptRecordError, UnstorableValueError

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIMEDELTA = 3
_EXT_DECIMAL = 4
_EXT_UUID = 5

# Exact types whose msgpack round trip is the identity: W1 hot path skips the decode.
_IDENTITY_TYPES = frozenset({type(None), bool, str, bytes, float})
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _default(value: Any) -> msgpack.ExtType:
    # datetime before date: datetime is a subclass of date
    if isinstance(value, datetime.datetime):
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, datetime.date):
        return msgpack.ExtType(_EXT_DATE, value.isoformat().encode())
    if isinstance(value, datetime.timedelta):
        payload = msgpack.packb([value.days, value.seconds, value.microseconds])
        return msgpack.ExtType(_EXT_TIMEDELTA, payload)
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    raise TypeError(f"{type(value).__name__} is not a storable type")


def _ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = msgpack.unpackb(data)
        return datetime.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    raise ValueError(f"unknown msgpack extension type {code}")


class _Local(threading.local):
    # A Packer is ~3x faster than packb but not thread-safe: one per thread.
    def __init__(self) -> None:
        self.pack = msgpack.Packer(default=_default, use_bin_type=True).pack


_local = _Local()


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def dump_value(value: object, what: str) -> bytes:
    """Encode a user value; *what* ("step 'charge'") names it in the error."""
    try:
        return _local.pack(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnstorableValueError(what, type(value).__name__, str(exc)) from None


def load_value(data: bytes, key: bytes = b"") -> object:
    """Decode a user value stored by `dump_value`."""
    try:
        return _unpack(data)
    except Exception as exc:
        raise CorruptRecordError(key, f"undecodable value ({exc})") from None


def store_value(value: object, what: str) -> tuple[bytes, object]:
    """Encode *value* and return it with its decoded form (what a replay returns)."""
    data = dump_value(value, what)
    kind = type(value)
    if kind in _IDENTITY_TYPES or (kind is int and _INT64_MIN <= value <= _UINT64_MAX):  # type: ignore[operator]
        return data, value
    try:
        return data, _unpack(data)
    except (TypeError, ValueError) as exc:  # e.g. a tuple used as a dict key
        raise UnstorableValueError(what, type(value).__name__, str(exc)) from None


def dump_record(record: list[object]) -> bytes:
    """Encode an internal record (a list of plain msgpack values)."""
    return _local.pack(record)  # type: ignore[no-any-return]


def load_record(data: bytes, key: bytes) -> list[Any]:
    """Decode an internal record, or raise `CorruptRecordError` naming *key*."""
    try:
        # records hold no maps and no raw strings: the defaults, whose call costs
        # half of one with keyword arguments (W2: two records per replayed step)
        record = msgpack.unpackb(data)
    except Exception as exc:
        raise CorruptRecordError(key, f"undecodable record ({exc})") from None
    if type(record) is not list:
        raise CorruptRecordError(
            key, f"expected a record list, found {type(record).__name__}"
        )
    return record
