"""Hypothesis strategies for keys and stored values, and the documented key order."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

if TYPE_CHECKING:
    from durable._keys import Key, KeyItem

# Ints at the edges of the encoding: the cache, the 1..8-byte forms, the big forms and
# the 255-byte limit.
INT_BOUNDARIES = sorted(
    {
        sign * value
        for sign in (1, -1)
        for value in (
            0,
            1,
            254,
            255,
            256,
            4095,
            4096,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64,
            2**64 + 1,
            2**2000,
            2**2040 - 1,
        )
    }
)
MAX_KEY_INT = 2**2040 - 1  # 255 bytes

# A small alphabet makes shared prefixes, escaped NULs and 0xFF bytes likely.
_TRICKY_CHARS = "\x00\x01a/~\xff\u00e9\U0001f600"
_TRICKY_BYTES = [b"\x00", b"\x01", b"a", b"\xfe", b"\xff"]


def key_ints() -> st.SearchStrategy[int]:
    """Ints a key may hold: small, across the 8-byte boundary, and huge."""
    return st.one_of(
        st.sampled_from(INT_BOUNDARIES),
        st.integers(-(2**70), 2**70),
        st.integers(-MAX_KEY_INT, MAX_KEY_INT),
    )


def key_texts() -> st.SearchStrategy[str]:
    """Strings, often from a small alphabet with NULs, "/" and "~"."""
    return st.one_of(st.text(alphabet=_TRICKY_CHARS, max_size=4), st.text(max_size=8))


def key_bytes() -> st.SearchStrategy[bytes]:
    """Byte strings, often of NUL and 0xFF bytes."""
    return st.one_of(
        st.lists(st.sampled_from(_TRICKY_BYTES), max_size=4).map(b"".join),
        st.binary(max_size=8),
    )


def key_items() -> st.SearchStrategy[KeyItem]:
    """One key item: None, bytes, str, int or a nested tuple of those."""
    scalars: st.SearchStrategy[KeyItem] = st.one_of(
        st.none(), key_bytes(), key_texts(), key_ints()
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3).map(tuple),
        max_leaves=8,
    )


def keys(max_size: int = 4) -> st.SearchStrategy[Key]:
    """A key tuple."""
    return st.lists(key_items(), max_size=max_size).map(tuple)


def model_order(key: Key) -> tuple[Any, ...]:
    """Map *key* to a Python-comparable value that follows the documented key order.

    None < bytes < str < nested tuple < int; str compares by its UTF-8 bytes; a
    tuple that is a prefix of another sorts first (Python's tuple order already does).
    """
    return tuple(_model_item(item) for item in key)


def _model_item(item: KeyItem) -> tuple[Any, ...]:
    if item is None:
        return (0,)
    if isinstance(item, bytes):
        return (1, item)
    if isinstance(item, str):
        return (2, item.encode("utf-8"))
    if isinstance(item, tuple):
        return (3, model_order(item))
    return (4, item)


_OFFSETS = st.timedeltas(
    min_value=-datetime.timedelta(hours=23, minutes=59),
    max_value=datetime.timedelta(hours=23, minutes=59),
).map(
    lambda offset: datetime.timedelta(minutes=offset // datetime.timedelta(minutes=1))
)
fixed_timezones = _OFFSETS.map(datetime.timezone)


def aware_datetimes() -> st.SearchStrategy[datetime.datetime]:
    """Datetimes with a fixed UTC offset (whole minutes)."""
    return st.datetimes(
        min_value=datetime.datetime(2, 1, 1),
        max_value=datetime.datetime(9998, 12, 31),
        timezones=fixed_timezones,
    )


def scalar_values() -> st.SearchStrategy[object]:
    """Storable leaves: msgpack scalars and every documented extension type."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
        st.datetimes(),
        aware_datetimes(),
        st.dates(),
        st.timedeltas(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.uuids(),
    )


def stored_values() -> st.SearchStrategy[object]:
    """User values that msgpack can store, nested in lists and str/int-keyed dicts."""
    dict_keys = st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1))
    return st.recursive(
        scalar_values(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(dict_keys, children, max_size=4),
        ),
        max_leaves=12,
    )
