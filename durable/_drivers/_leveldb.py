"""LevelDBDriver: the default, embedded store (the only module that imports plyvel).

Alarms live in the driver's reserved ``0xFF`` keyspace, indexed twice: by workflow id
(``FF 01 id`` → time) and by time (``FF 02 time id``), so due alarms are found with one
ordered scan that stops at the first alarm not yet due.

LevelDB holds a lock file while open; a second opener (another process, or another
driver in this one) gets `StoreLockedError` at once instead of waiting.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Final

import plyvel

from .._errors import (
    CorruptRecordError,
    StorageError,
    StoreLockedError,
    WriteConflictError,
)
from ._base import (
    CHECK,
    CLEAR_ALARM,
    DEFAULT_POLL_INTERVAL,
    DELETE,
    DELETE_RANGE,
    PUT,
    RESERVED_PREFIX,
    SET_ALARM,
    Alarm,
    Batch,
    Driver,
    LocalNotifier,
    Subscription,
    check_limit,
    failed_check,
)

STORE_ENV_VAR: Final = "DURABLE_STORE"
DEFAULT_STORE_PATH: Final = ".durable"

_ALARM_BY_ID = RESERVED_PREFIX + b"\x01"
_ALARM_BY_TIME = RESERVED_PREFIX + b"\x02"
_ALARM_BY_TIME_END = RESERVED_PREFIX + b"\x03"
_DOUBLE = struct.Struct(">d")


def default_store_path() -> Path:
    """``$DURABLE_STORE`` if set, else ``./.durable`` in the working directory."""
    return Path(os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_PATH)


def _sortable_time(at: float) -> bytes:
    raw = _DOUBLE.pack(at + 0.0)  # -0.0 + 0.0 is 0.0: one encoding for zero
    if raw[0] & 0x80:  # negative: flip every bit so larger magnitudes sort first
        return bytes(b ^ 0xFF for b in raw)
    return bytes((raw[0] | 0x80,)) + raw[1:]


class LevelDBDriver(Driver):
    """Stores everything in a LevelDB directory at *path* (created if missing).

    ``path=None`` uses ``$DURABLE_STORE``, else ``./.durable``. With ``sync=True``
    every write is fsynced (survives power loss); by default writes reach the OS
    at once (they survive a crash of the process, not of the machine).

    Raises:
        StoreLockedError: another process or driver has the store open.
        StorageError: the directory cannot be opened as a LevelDB store.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        sync: bool = False,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.path = Path(path) if path is not None else default_store_path()
        self.sync = sync
        self._notifier = LocalNotifier()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the parent directory of {self.path}: {exc}"
            raise StorageError(msg) from None
        try:
            self._db: Any = plyvel.DB(str(self.path), create_if_missing=True)
        except plyvel.IOError as exc:
            # "IO error: lock <path>/LOCK: ..." means held; any IO error on the LOCK
            # file (e.g. "<path>/LOCK: Not a directory") contains "lock" too.
            if "IO error: lock " in str(exc):
                raise StoreLockedError(str(self.path)) from None
            raise StorageError(
                f"cannot open LevelDB store at {self.path}: {exc}"
            ) from None
        except plyvel.CorruptionError as exc:
            raise CorruptRecordError(
                b"", f"LevelDB store at {self.path} is corrupt: {exc}"
            ) from None
        except plyvel.Error as exc:
            raise StorageError(
                f"cannot open LevelDB store at {self.path}: {exc}"
            ) from None

    def _live_db(self) -> Any:
        if self._db.closed:
            raise StorageError(f"the LevelDB store at {self.path} is closed")
        return self._db

    async def get(self, key: bytes) -> bytes | None:
        """Return the value at *key*, or ``None``."""
        return self._live_db().get(key)  # type: ignore[no-any-return]

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return pairs with ``start <= key < end`` in key order (see `Driver`)."""
        check_limit(limit)
        end = min(end, RESERVED_PREFIX)
        if start >= end:
            return []
        iterator = self._live_db().iterator(start=start, stop=end, reverse=reverse)
        if limit is None:
            return list(iterator)
        items: list[tuple[bytes, bytes]] = []
        for item in iterator:
            if len(items) >= limit:
                break
            items.append(item)
        iterator.close()
        return items

    async def write(self, batch: Batch) -> None:
        """Apply *batch* as one LevelDB write batch (fsynced if ``sync=True``)."""
        db = self._db
        if db.closed:
            raise StorageError(f"the LevelDB store at {self.path} is closed")
        ops = batch.ops
        if batch.has_check:  # no await between the check and the write: atomic
            conflict = failed_check(batch, db.get)
            if conflict is not None:
                raise WriteConflictError(conflict)
        wb = db.write_batch(sync=self.sync)
        for code, key, value in ops:
            # W1 hot path: plain puts and deletes need no bookkeeping
            if code == PUT:
                wb.put(key, value)
            elif code == DELETE:
                wb.delete(key)
            elif code != CHECK:  # checks were done above
                wb.clear()
                self._fill(db, wb, ops)
                break
        try:
            wb.write()
        except plyvel.Error as exc:
            raise StorageError(
                f"write to LevelDB store at {self.path} failed: {exc}"
            ) from None
        self._notifier.notify_batch(batch)

    def _fill(self, db: Any, wb: Any, ops: list[tuple[int, Any, Any]]) -> None:
        put_keys: list[
            bytes
        ] = []  # keys put earlier in this batch, for later range deletes
        alarms: dict[str, float | None] = {}  # alarm changes earlier in this batch
        for code, a, b in ops:
            if code == PUT:
                wb.put(a, b)
                put_keys.append(a)
            elif code == DELETE:
                wb.delete(a)
            elif code == DELETE_RANGE:
                for key in db.iterator(
                    start=a, stop=min(b, RESERVED_PREFIX), include_value=False
                ):
                    wb.delete(key)
                for key in put_keys:
                    if a <= key < b:
                        wb.delete(key)
            elif code in (SET_ALARM, CLEAR_ALARM):
                previous = alarms[a] if a in alarms else self._stored_alarm(db, a)
                by_id = _ALARM_BY_ID + a.encode()
                if previous is not None:
                    wb.delete(_ALARM_BY_TIME + _sortable_time(previous) + a.encode())
                if code == SET_ALARM:
                    wb.put(by_id, _DOUBLE.pack(b))
                    wb.put(_ALARM_BY_TIME + _sortable_time(b) + a.encode(), b"")
                    alarms[a] = b
                else:
                    wb.delete(by_id)
                    alarms[a] = None

    @staticmethod
    def _stored_alarm(db: Any, workflow_id: str) -> float | None:
        raw = db.get(_ALARM_BY_ID + workflow_id.encode())
        return None if raw is None else float(_DOUBLE.unpack(raw)[0])

    async def get_alarm(self, workflow_id: str) -> float | None:
        """Return the workflow's alarm time, or ``None``."""
        return self._stored_alarm(self._live_db(), workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """Return alarms due by *until*, earliest first; stops at the first later one."""
        check_limit(limit)
        stop = _ALARM_BY_TIME_END
        if until is not None:
            stop = _ALARM_BY_TIME + _sortable_time(until) + b"\xff"
        alarms: list[Alarm] = []
        for key in self._live_db().iterator(
            start=_ALARM_BY_TIME, stop=stop, include_value=False
        ):
            if limit is not None and len(alarms) >= limit:
                break
            raw_time = key[2:10]
            if raw_time[0] & 0x80:
                at = _DOUBLE.unpack(bytes((raw_time[0] & 0x7F,)) + raw_time[1:])[0]
            else:
                at = _DOUBLE.unpack(bytes(b ^ 0xFF for b in raw_time))[0]
            alarms.append(Alarm(key[10:].decode(), at))
        return alarms

    def subscribe(self, workflow_id: str) -> Subscription:
        """Take out a subscription to the workflow's wake-ups."""
        return self._notifier.subscribe(workflow_id)

    def subscribe_alarms(self) -> Subscription:
        """Take out a subscription that wakes whenever a batch sets an alarm."""
        return self._notifier.subscribe(None)

    async def close(self) -> None:
        """Close the database and release its lock; safe to call twice."""
        if not self._db.closed:
            self._db.close()
