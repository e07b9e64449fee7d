"""The key schema: where each piece of a workflow lives in the sorted store.

Every key a workflow owns starts with ``encode_key((1, workflow_id))`` (its *prefix*)
followed by one tag byte, so one range scan loads a workflow and nothing else:

| key tuple | value |
|---|---|
| ``(1, id, 0)`` | workflow metadata record |
| ``(1, id, 1)`` | the stored input (a user value) |
| ``(1, id, 2, index)`` | an interned name (UTF-8) |
| ``(1, id, 3, *location)`` | entry data record |
| ``(1, id, 4, *location)`` | entry metadata record |
| ``(1, id, 5, sequence)`` | a queued message |

Two listing indexes, outside every workflow's prefix, follow each workflow's state and
name (kept in step with the metadata record by `WorkflowMeta.write`):

| key tuple | value |
|---|---|
| ``(2, state, id)`` | empty: every workflow, by state |
| ``(3, name, state, id)`` | empty: named workflows, by name and state |

A *location* is the path of an entry: interned name indexes, with ``(loop, iteration)``
nested tuples for loop iterations. In memory a location is kept as its encoded bytes,
so a child's location is its parent's bytes plus one encoded int.

Rule: only this module knows key tags; `_history` and the engine ask it for keys.
"""

from __future__ import annotations

import functools
from typing import Final

from ._drivers._base import prefix_end
from ._keys import Key, decode_key, encode_int, encode_key

WORKFLOWS: Final = 1
_WORKFLOWS_LENGTH: Final = len(encode_int(WORKFLOWS))
BY_STATE: Final = 2
BY_NAME: Final = 3

TAG_META: Final = encode_int(0)
TAG_INPUT: Final = encode_int(1)
TAG_NAME: Final = encode_int(2)
TAG_ENTRY: Final = encode_int(3)
TAG_ENTRY_META: Final = encode_int(4)
TAG_MESSAGE: Final = encode_int(5)
_TAG_END: Final = encode_int(6)


class WorkflowKeys:
    """Precomputed key prefixes of one workflow (built once per run: W1 hot path)."""

    __slots__ = (
        "entry",
        "entry_meta",
        "input",
        "message",
        "meta",
        "name",
        "prefix",
        "workflow_id",
    )

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.prefix = encode_key((WORKFLOWS, workflow_id))
        self.meta = self.prefix + TAG_META
        self.input = self.prefix + TAG_INPUT
        self.name = self.prefix + TAG_NAME
        self.entry = self.prefix + TAG_ENTRY
        self.entry_meta = self.prefix + TAG_ENTRY_META
        self.message = self.prefix + TAG_MESSAGE

    @property
    def scan_range(self) -> tuple[bytes, bytes]:
        """The ``[start, end)`` range holding exactly this workflow's keys.

        A plain prefix scan would also match ids that extend this one past an
        escaped NUL; the tag bytes bound the range exactly.
        """
        return self.meta, self.prefix + _TAG_END


def index_keys(keys: WorkflowKeys, state: str, name: str | None) -> list[bytes]:
    """The listing-index keys of the workflow of *keys* in *state* running *name*.

    W3/W6: a tuple's encoding is its items' encodings end to end, so each key is a
    cached (state[, name]) prefix plus the workflow id as the workflow prefix has it.
    """
    encoded_id = keys.prefix[_WORKFLOWS_LENGTH:]
    found = [_index_prefix(BY_STATE, state) + encoded_id]
    if name is not None:
        found.append(_index_prefix(BY_NAME, name, state) + encoded_id)
    return found


@functools.lru_cache(maxsize=1024)
def _index_prefix(*parts: int | str) -> bytes:
    return encode_key(parts)


def index_range(state: str | None, name: str | None) -> tuple[bytes, bytes]:
    """The ``[start, end)`` range of index keys listing workflows that match."""
    prefix: Key
    if name is None:
        prefix = (BY_STATE,) if state is None else (BY_STATE, state)
    else:
        prefix = (BY_NAME, name) if state is None else (BY_NAME, name, state)
    start = encode_key(prefix)
    return start, prefix_end(start)


def index_entry(key: bytes) -> tuple[str, str, str | None]:
    """``(workflow_id, state, name)`` of a listing-index key."""
    parts = decode_key(key)
    if parts[0] == BY_STATE:
        return parts[2], parts[1], None  # type: ignore[return-value]
    return parts[3], parts[2], parts[1]  # type: ignore[return-value]
