r"""Order-preserving encoding of key tuples to bytes.

A key is a tuple whose items are ``None``, ``bytes``, ``str``, ``int`` (negative too,
up to 255 bytes; larger ones raise ``ValueError``) or a nested tuple of the same.
``encode_key`` maps keys to bytes so that comparing the bytes compares the keys in this
documented order:

* items compare left to right; a tuple that is a prefix of another sorts first;
* across types: ``None`` < ``bytes`` < ``str`` < nested tuple < ``int``;
* ``bytes`` and ``str`` (as UTF-8) compare bytewise, ints numerically.

The encoding of a tuple is the concatenation of its items' encodings, so the encoding
of a prefix tuple is a byte prefix. A byte prefix is not a tuple prefix, though: an
escaped NUL continues a string, so ``encode_key(("a",))`` is also a byte prefix of
``encode_key(("a\x00",))`` (and ``((),)`` of ``((None,),)``). The keys that extend a
tuple *k* are exactly those in ``[encode_key(k), encode_key(k) + b"\xff")``, since no
item starts with ``FF``. ``bool`` is refused, since ``True == 1`` would make two keys
equal.

The layout follows the FoundationDB tuple layer: type byte, then ``00``-terminated,
``00 FF``-escaped strings; ints carry their byte length in the type byte.

Rule: pure functions, no I/O. W1 hot path: `encode_int` caches small ints.
"""

from __future__ import annotations

from typing import TypeAlias

KeyItem: TypeAlias = "bytes | str | int | tuple[KeyItem, ...] | None"
Key: TypeAlias = tuple[KeyItem, ...]

_NONE = 0x00
_BYTES = 0x01
_STR = 0x02
_NESTED = 0x05
_NEG_BIG = 0x0B  # negative int of more than 8 bytes: length byte follows
_INT_ZERO = 0x14  # 0x0C..0x13 negative, 0x15..0x1C positive of 1..8 bytes
_POS_BIG = 0x1D  # positive int of more than 8 bytes: length byte follows
_MAX_BIG_LEN = 255


def _encode_int_uncached(value: int) -> bytes:
    if value == 0:
        return b"\x14"
    if value > 0:
        size = (value.bit_length() + 7) // 8
        raw = value.to_bytes(size, "big")
        if size <= 8:
            return bytes((_INT_ZERO + size,)) + raw
        if size > _MAX_BIG_LEN:
            raise ValueError(f"int key items are limited to {_MAX_BIG_LEN} bytes")
        return bytes((_POS_BIG, size)) + raw
    size = ((-value).bit_length() + 7) // 8
    if size <= 8:
        # ones' complement keeps byte order equal to numeric order
        raw = ((1 << (8 * size)) - 1 + value).to_bytes(size, "big")
        return bytes((_INT_ZERO - size,)) + raw
    if size > _MAX_BIG_LEN:
        raise ValueError(f"int key items are limited to {_MAX_BIG_LEN} bytes")
    raw = ((1 << (8 * size)) - 1 + value).to_bytes(size, "big")
    return bytes((_NEG_BIG, size ^ 0xFF)) + raw


_SMALL_INTS = [_encode_int_uncached(i) for i in range(4096)]


def encode_int(value: int) -> bytes:
    """Encode one int key item (cached for small non-negative values)."""
    if 0 <= value < 4096:
        return _SMALL_INTS[value]
    return _encode_int_uncached(value)


def _encode_item(item: KeyItem, out: bytearray, *, nested: bool) -> None:
    if isinstance(item, str):
        out.append(_STR)
        out += item.encode("utf-8").replace(b"\x00", b"\x00\xff")
        out.append(0)
    elif isinstance(item, bool):
        raise TypeError("bool is not a key item: True == 1 would make two keys equal")
    elif isinstance(item, int):
        out += encode_int(item)
    elif isinstance(item, bytes):
        out.append(_BYTES)
        out += item.replace(b"\x00", b"\x00\xff")
        out.append(0)
    elif isinstance(item, tuple):
        out.append(_NESTED)
        for sub in item:
            _encode_item(sub, out, nested=True)
        out.append(0)
    elif item is None:
        out += b"\x00\xff" if nested else b"\x00"
    else:
        raise TypeError(
            f"key items are None, bytes, str, int or tuple, not {type(item).__name__}"
        )


def encode_key(key: Key) -> bytes:
    """Encode a key tuple to bytes that sort like the tuple (see the module docs)."""
    out = bytearray()
    for item in key:
        _encode_item(item, out, nested=False)
    return bytes(out)


def _find_terminator(data: bytes, pos: int) -> int:
    """Index of the ``00`` that ends an escaped string starting at *pos*."""
    while True:
        end = data.index(b"\x00", pos)
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            pos = end + 2
            continue
        return end


def _decode_item(data: bytes, pos: int, *, nested: bool) -> tuple[KeyItem, int]:
    code = data[pos]
    pos += 1
    if code in (_STR, _BYTES):
        end = _find_terminator(data, pos)
        raw = data[pos:end].replace(b"\x00\xff", b"\x00")
        return (raw.decode("utf-8") if code == _STR else raw), end + 1
    if _NEG_BIG < code < _POS_BIG:
        size = code - _INT_ZERO
        if size >= 0:
            return int.from_bytes(data[pos : pos + size], "big"), pos + size
        size = -size
        magnitude = int.from_bytes(data[pos : pos + size], "big")
        return magnitude - ((1 << (8 * size)) - 1), pos + size
    if code == _POS_BIG:
        size = data[pos]
        return int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size
    if code == _NEG_BIG:
        size = data[pos] ^ 0xFF
        magnitude = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
        return magnitude - ((1 << (8 * size)) - 1), pos + 1 + size
    if code == _NESTED:
        items: list[KeyItem] = []
        while True:
            if data[pos] == 0:
                if pos + 1 < len(data) and data[pos + 1] == 0xFF:
                    items.append(None)
                    pos += 2
                    continue
                return tuple(items), pos + 1
            item, pos = _decode_item(data, pos, nested=True)
            items.append(item)
    if code == _NONE and not nested:
        return None, pos
    raise ValueError(f"invalid key type byte 0x{code:02x} at offset {pos - 1}")


def decode_key(data: bytes) -> Key:
    """Decode bytes made by `encode_key`; raises ``ValueError`` on malformed input."""
    items: list[KeyItem] = []
    pos = 0
    try:
        while pos < len(data):
            item, pos = _decode_item(data, pos, nested=False)
            items.append(item)
    except (IndexError, UnicodeDecodeError, RecursionError) as exc:  # nesting bombs too
        raise ValueError(f"malformed key {data!r}: {exc}") from None
    if pos != len(data):
        raise ValueError(f"malformed key {data!r}: trailing bytes")
    return tuple(items)
