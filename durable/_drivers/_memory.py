"""MemoryDriver: the driver protocol over a sorted in-memory list, for tests."""

from __future__ import annotations

import bisect

from .._errors import StorageError
from ._base import (
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
)


class MemoryDriver(Driver):
    """Keeps everything in memory; fast, isolated, gone when the object is.

    Example:
        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow("id", fn, None, driver=driver)
    """

    def __init__(self, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        super().__init__(poll_interval=poll_interval)
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []  # sorted
        self._alarms: dict[str, float] = {}
        self._notifier = LocalNotifier()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("this MemoryDriver is closed; make a new one")

    async def get(self, key: bytes) -> bytes | None:
        """Return the value at *key*, or ``None``."""
        self._check_open()
        return self._data.get(key)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return pairs with ``start <= key < end`` in key order (see `Driver`)."""
        self._check_open()
        check_limit(limit)
        end = min(end, RESERVED_PREFIX)  # drivers' own keys are never listed
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, end, lo) if start < end else lo
        keys = self._keys[lo:hi]
        if reverse:
            keys.reverse()
        if limit is not None:
            keys = keys[:limit]
        return [(key, self._data[key]) for key in keys]

    async def write(self, batch: Batch) -> None:
        """Apply *batch* in order; memory writes cannot fail halfway."""
        self._check_open()
        data, keys = self._data, self._keys
        for code, a, b in batch.ops:
            if code == PUT:
                if a not in data:
                    bisect.insort(keys, a)
                data[a] = b
            elif code == DELETE:
                if data.pop(a, None) is not None:
                    del keys[bisect.bisect_left(keys, a)]
            elif code == DELETE_RANGE:
                lo = bisect.bisect_left(keys, a)
                hi = bisect.bisect_left(keys, b, lo)
                for key in keys[lo:hi]:
                    del data[key]
                del keys[lo:hi]
            elif code == SET_ALARM:
                self._alarms[a] = b
            elif code == CLEAR_ALARM:
                self._alarms.pop(a, None)
        self._notifier.notify_batch(batch)

    async def get_alarm(self, workflow_id: str) -> float | None:
        """Return the workflow's alarm time, or ``None``."""
        self._check_open()
        return self._alarms.get(workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """Return alarms due by *until*, earliest first."""
        self._check_open()
        check_limit(limit)
        due = sorted(
            (at, workflow_id)
            for workflow_id, at in self._alarms.items()
            if until is None or at <= until
        )
        return [Alarm(workflow_id, at) for at, workflow_id in due[:limit]]

    def subscribe(self, workflow_id: str) -> Subscription:
        """Take out a subscription to the workflow's wake-ups."""
        return self._notifier.subscribe(workflow_id)

    async def close(self) -> None:
        """Drop nothing, but refuse further use."""
        self._closed = True
