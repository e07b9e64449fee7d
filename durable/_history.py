"""A workflow's history in memory: metadata, input, interned names and entries.

An `Entry` is addressed by its *location* (encoded bytes, see `_layout`) and stored as
two records: its data (kind, sequence number in its scope, name, payload) and its
metadata (status, attempts, timestamps, error), so metadata can change without
rewriting a possibly large payload. `History.load` reads everything with one range scan.

Rule: records are msgpack lists with fields in fixed positions; new fields are only
ever appended, so older records stay readable.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Final

import attrs

from ._codec import dump_record, load_record, load_value
from ._errors import CorruptRecordError, WorkflowError
from ._keys import decode_key, encode_int
from ._layout import (
    WorkflowKeys,
    index_keys,
)
from ._types import WorkflowState

if TYPE_CHECKING:
    from ._drivers import Batch, Driver

FORMAT: Final = 1
"""Version of the record layout; a store written by a newer format is refused."""

# Entry kinds (as stored, and as `ctx.removed` names them).
STEP: Final = "step"
SLEEP: Final = "sleep"

# Entry statuses.
PENDING: Final = "pending"  # created, not finished (a sleep waiting)
RETRYING: Final = "retrying"  # a step failed and waits for its next attempt
COMPLETED: Final = "completed"
FAILED: Final = "failed"  # a step failed for good; `error.kind` says how
CANCELLED: Final = "cancelled"  # a race loser, discarded


@attrs.frozen
class StepFailure:
    """How a step attempt failed.

    ``kind`` is error (retryable), critical, timeout, rollback, exhausted or
    unstorable; ``detail`` is kind-specific (the timeout, the unstorable type).
    """

    kind: str
    error: WorkflowError
    detail: str = ""

    def to_record(self) -> list[object]:
        """Return the stored form."""
        error = self.error
        return [self.kind, error.name, error.message, error.traceback, self.detail]

    @classmethod
    def from_record(cls, record: list[object]) -> StepFailure:
        """Rebuild from `to_record` output."""
        kind, name, message, traceback, detail = record[:5]
        return cls(
            str(kind),
            WorkflowError(str(name), str(message), str(traceback)),
            str(detail),
        )


@attrs.define(slots=True)
class Entry:
    """One recorded call of a workflow: data plus metadata, in memory."""

    location: bytes
    kind: str
    seq: int  # position among its scope's entries (-1: unordered, a version marker)
    name_index: int
    data: object = None  # kind-specific: a step's encoded output, a sleep's deadline
    status: str = PENDING
    attempts: int = 0
    started_at: float | None = None  # epoch s of the last attempt
    finished_at: float | None = None
    retry_at: float | None = None  # epoch s; a restart waits out the rest
    failure: StepFailure | None = None
    rolled_back_at: float | None = None  # epoch s its rollback handler completed
    rollback_error: WorkflowError | None = None  # its handler's last failure
    compensable: bool = False  # completed with a rollback handler
    # the stored metadata record of a completed step, decoded only when asked for
    # (`full`): replaying a step needs its output, not its attempts (W2)
    raw_meta: tuple[bytes, bytes] | None = None

    def full(self) -> Entry:
        """Decode deferred metadata, so every field is as stored; returns self."""
        if self.raw_meta is not None:
            key, value = self.raw_meta
            self.raw_meta = None
            try:
                self.load_meta(load_record(value, key))
            except (ValueError, TypeError) as exc:
                raise CorruptRecordError(key, f"bad entry metadata ({exc})") from None
        return self

    def data_record(self) -> bytes:
        """Encode the data record."""
        return dump_record([self.kind, self.seq, self.name_index, self.data])

    def meta_record(self) -> bytes:
        """Encode the metadata record."""
        self.full()
        failure = None if self.failure is None else self.failure.to_record()
        return dump_record(
            [
                self.status,
                self.attempts,
                self.started_at,
                self.finished_at,
                self.retry_at,
                failure,
                self.rolled_back_at,
                None
                if self.rollback_error is None
                else [
                    self.rollback_error.name,
                    self.rollback_error.message,
                    self.rollback_error.traceback,
                ],
                self.compensable,
            ]
        )

    def load_meta(self, record: list[object]) -> None:
        """Fill the metadata fields from a stored record."""
        status, attempts, started, finished, retry_at, failure = record[:6]
        self.status = status  # type: ignore[assignment]
        self.attempts = attempts  # type: ignore[assignment]
        self.started_at = started  # type: ignore[assignment]
        self.finished_at = finished  # type: ignore[assignment]
        self.retry_at = retry_at  # type: ignore[assignment]
        self.failure = None if failure is None else StepFailure.from_record(failure)  # type: ignore[arg-type]
        if len(record) >= 8:  # rollback bookkeeping, appended in format 1
            self.rolled_back_at = record[6]  # type: ignore[assignment]
            error = record[7]
            self.rollback_error = None if error is None else WorkflowError(*error)  # type: ignore[misc]
        if len(record) >= 9:
            self.compensable = bool(record[8])


@attrs.define
class WorkflowMeta:
    """The workflow-level record: state, outcome and what it waits for."""

    state: WorkflowState
    created_at: float
    updated_at: float
    output: bytes | None = None  # encoded user value
    error: WorkflowError | None = None
    sleep_until: float | None = None
    waiting_for: list[str] | None = None
    name: str | None = None  # the registered workflow it runs; None: a plain function
    # (state, name) as the listing index holds them; None: not indexed yet
    indexed: tuple[str, str | None] | None = attrs.field(default=None, eq=False)

    def load_output(self, key: bytes) -> object:
        """The decoded output of a completed workflow, else None (*key*: for errors)."""
        if self.state != WorkflowState.COMPLETED or self.output is None:
            return None
        return load_value(self.output, key)

    def cancel(self, now: float) -> None:
        """Mark the workflow cancelled for good: it waits for nothing any more."""
        self.state = WorkflowState.CANCELLED
        self.updated_at = now
        self.sleep_until = None
        self.waiting_for = None

    def write(self, batch: Batch, keys: WorkflowKeys) -> None:
        """Queue this record, moving its listing-index keys if state or name changed."""
        batch.put(keys.meta, self.to_bytes())
        position = (str(self.state), self.name)
        if position != self.indexed:
            if self.indexed is not None:
                for key in index_keys(keys, *self.indexed):
                    batch.delete(key)
            for key in index_keys(keys, *position):
                batch.put(key, b"")
            self.indexed = position

    def to_bytes(self) -> bytes:
        """Encode the record."""
        error = None
        if self.error is not None:
            error = [self.error.name, self.error.message, self.error.traceback]
        return dump_record(
            [
                FORMAT,
                str(self.state),
                self.created_at,
                self.updated_at,
                self.output,
                error,
                self.sleep_until,
                self.waiting_for,
                self.name,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes) -> WorkflowMeta:
        """Decode a record, refusing formats newer than this code."""
        record = load_record(data, key)
        try:
            fmt, state, created, updated, output, error, sleep_until, waiting_for = (
                record[:8]
            )
            if fmt > FORMAT:
                raise CorruptRecordError(
                    key, f"written by a newer durable (format {fmt}); upgrade durable"
                )
            name = record[8] if len(record) > 8 else None  # appended in format 1
            if name is not None and not isinstance(name, str):
                raise TypeError(f"workflow name {name!r} is not a str")
            meta = cls(
                state=WorkflowState(state),
                created_at=created,
                updated_at=updated,
                output=output,
                error=None if error is None else WorkflowError(*error),
                sleep_until=sleep_until,
                waiting_for=waiting_for,
                name=name,
            )
        except (ValueError, TypeError) as exc:
            raise CorruptRecordError(key, f"bad workflow record ({exc})") from None
        meta.indexed = (state, name)
        return meta


@attrs.define
class History:
    """Everything stored for one workflow, indexed for replay."""

    workflow_id: str
    keys: WorkflowKeys
    meta: WorkflowMeta | None = None
    input: bytes | None = None
    names: list[str] = attrs.Factory(list)
    name_index: dict[str, int] = attrs.Factory(dict)
    entries: dict[bytes, Entry] = attrs.Factory(dict)
    messages: list[tuple[bytes, bytes]] = attrs.Factory(list)  # unconsumed, in order
    loaded: int = 0  # entries read from the store: the first `loaded` of `entries`
    # `by_seq` and `scope_sizes`, built from the loaded entries when first asked for
    # (W2: a replay whose calls all match by location never asks, see `Scope.begin`)
    _by_seq: dict[tuple[bytes, int], Entry] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _scope_sizes: dict[bytes, int] | None = attrs.field(
        default=None, init=False, repr=False
    )

    @property
    def by_seq(self) -> dict[tuple[bytes, int], Entry]:
        """(scope location, seq) → loaded entry: what replay must visit, in order."""
        if self._by_seq is None:
            self._index()
        return self._by_seq  # type: ignore[return-value]

    @property
    def scope_sizes(self) -> dict[bytes, int]:
        """Scope location → 1 + the highest seq loaded in that scope."""
        if self._scope_sizes is None:
            self._index()
        return self._scope_sizes  # type: ignore[return-value]

    def _index(self) -> None:
        by_seq: dict[tuple[bytes, int], Entry] = {}
        sizes: dict[bytes, int] = {}
        # loaded entries come first in `entries`; new ones are added after them, and
        # `forget` (the only remover) builds the index before it removes any
        for entry in islice(self.entries.values(), self.loaded):
            seq = entry.seq
            if seq >= 0:  # version markers (seq -1) stand outside the order
                location = entry.location
                scope = location[: len(location) - _int_length(entry.name_index)]
                by_seq[scope, seq] = entry
                if seq >= sizes.get(scope, 0):
                    sizes[scope] = seq + 1
        self._by_seq, self._scope_sizes = by_seq, sizes

    @classmethod
    async def load(cls, driver: Driver, workflow_id: str) -> History:
        """Read a workflow's whole history with one range scan.

        W2/W7 hot path: the scan returns the keys in order, so grouped by tag (meta
        and input, names, entries, entry metadata, messages). The list is cut at
        the tag boundaries by binary search and each group gets its own tight loop;
        entries come before their metadata.
        """
        keys = WorkflowKeys(workflow_id)
        history = cls(workflow_id, keys)
        items = await driver.list_range(*keys.scan_range)
        names_at = bisect_left(items, keys.name, key=_key)
        entries_at = bisect_left(items, keys.entry, names_at, key=_key)
        metas_at = bisect_left(items, keys.entry_meta, entries_at, key=_key)
        messages_at = bisect_left(items, keys.message, metas_at, key=_key)
        for key, value in items[:names_at]:
            if key == keys.meta:
                history.meta = WorkflowMeta.from_bytes(value, key)
            elif key.startswith(keys.input):
                history.input = value
            else:
                raise CorruptRecordError(key, "unknown key tag")
        history._load_names(items[names_at:entries_at])
        skip = len(keys.entry)  # every tag but the workflow record's is 2 bytes
        entries = history.entries
        for key, value in items[entries_at:metas_at]:
            location = key[skip:]
            record = load_record(value, key)
            try:
                kind, seq, name_index, data = record[:4]
                if seq.__class__ is not int or name_index.__class__ is not int:
                    raise TypeError("seq and name index must be ints")
                entries[location] = Entry(location, kind, seq, name_index, data)
            except (ValueError, TypeError) as exc:
                raise CorruptRecordError(key, f"bad entry record ({exc})") from None
        history.loaded = len(entries)
        find = entries.get
        for item in items[metas_at:messages_at]:
            meta_of = find(item[0][skip:])
            if meta_of is None:
                continue  # metadata outliving its entry (a pruned write); harmless
            meta_of.raw_meta = item  # the scan's own (key, value) pair
            if meta_of.kind == STEP and meta_of.data is not None:
                meta_of.status = COMPLETED  # only a completed step has an output
            else:
                meta_of.full()
        history.messages = items[messages_at:]
        return history

    def _load_names(self, items: list[tuple[bytes, bytes]]) -> None:
        """Fill `names` and `name_index` from the stored name records, in key order."""
        prefix = self.keys.name
        count = len(items)
        # W2: names are interned as 0, 1, 2, ...; when the keys say exactly that,
        # the names list is the values in order and needs no per-key decoding
        if list(map(_key, items)) == [
            prefix + i for i in map(encode_int, range(count))
        ]:
            self.names = [value.decode() for _, value in items]
            self.name_index = dict(zip(self.names, range(count), strict=True))
            return
        skip = len(prefix)
        names = {_decode_index(key, key[skip:]): value.decode() for key, value in items}
        if names:
            self.names = [names.get(i, "") for i in range(max(names) + 1)]
            self.name_index = {name: i for i, name in names.items()}

    def compensable_between(self, start: bytes, end: bytes) -> list[Entry]:
        """Completed steps with a rollback handler whose location is in the range."""
        return [
            entry
            for location, entry in self.entries.items()
            if start <= location < end
            and entry.kind == STEP
            and entry.status == COMPLETED
            and entry.full().compensable
        ]

    def forget(
        self,
        start: bytes,
        end: bytes,
        *,
        keep: frozenset[bytes] | set[bytes] = frozenset(),
    ) -> None:
        """Drop entries with locations in ``[start, end)`` (pruned loop iterations)."""
        by_seq, scope_sizes = self.by_seq, self.scope_sizes  # built before removing
        for location in [
            loc for loc in self.entries if start <= loc < end and loc not in keep
        ]:
            entry = self.entries.pop(location)
            scope = location[: len(location) - _int_length(entry.name_index)]
            by_seq.pop((scope, entry.seq), None)
            scope_sizes.pop(scope, None)

    def has_later_entry(self, entry: Entry) -> bool:
        """Whether *entry*'s scope recorded anything after it."""
        scope = entry.location[: len(entry.location) - _int_length(entry.name_index)]
        return self.scope_sizes.get(scope, 0) > entry.seq + 1

    def intern(self, name: str) -> tuple[int, bool]:
        """Return the index of *name* and whether it was newly interned."""
        index = self.name_index.get(name)
        if index is not None:
            return index, False
        index = len(self.names)
        self.names.append(name)
        self.name_index[name] = index
        return index, True

    def describe(self, location: bytes) -> str:
        """A readable path for *location*, e.g. ``'order' / 'charge'``."""
        if not location:
            return "the workflow body"
        parts = []
        for item in decode_key(location):
            if isinstance(item, tuple):
                parts.append(f"iteration {item[-1]!r}")
            elif isinstance(item, int) and 0 <= item < len(self.names):
                parts.append(repr(self.names[item]))
            else:
                parts.append(f"#{item!r}")
        return " / ".join(parts)


_key = itemgetter(0)  # of a (key, value) pair


def _int_length(index: int) -> int:
    """Length of ``encode_int(index)`` for a name index (>= 0), without encoding."""
    return 1 if index == 0 else 1 + (index.bit_length() + 7) // 8


def _decode_index(key: bytes, raw: bytes) -> int:
    """The name index encoded in *raw* (an `encode_int` of an int >= 0)."""
    if raw and 0x14 <= raw[0] <= 0x1C and raw[0] - 0x14 == len(raw) - 1:
        return int.from_bytes(raw[1:], "big")  # W2: the common case, no decode_key
    index = decode_key(raw)[0] if raw else None
    if not isinstance(index, int) or index < 0:
        raise CorruptRecordError(key, "bad name index")
    return index
