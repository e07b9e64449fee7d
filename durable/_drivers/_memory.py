"""MemoryDriver: the driver protocol over a sorted in-memory list, for tests.

Alarms are kept twice, by workflow id and as a sorted list of ``(time, id)``, so due
alarms are found in O(due) like the LevelDB driver's time index.
"""

from __future__ import annotations

import bisect

from .._errors import StorageError, WriteConflictError
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
    failed_check,
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
        self._alarm_order: list[tuple[float, str]] = []  # sorted (at, workflow id)
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
        if batch.has_check:
            conflict = failed_check(batch, data.get)
            if conflict is not None:
                raise WriteConflictError(conflict)
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
                self._drop_alarm(a)
                self._alarms[a] = b
                bisect.insort(self._alarm_order, (b, a))
            elif code == CLEAR_ALARM:
                self._drop_alarm(a)
        self._notifier.notify_batch(batch)

    def _drop_alarm(self, workflow_id: str) -> None:
        at = self._alarms.pop(workflow_id, None)
        if at is not None:
            order = self._alarm_order
            del order[bisect.bisect_left(order, (at, workflow_id))]

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
        order = self._alarm_order
        end = len(order)
        if until is not None:
            end = bisect.bisect_right(order, until, key=_alarm_time)
        if limit is not None:
            end = min(end, limit)
        return [Alarm(workflow_id, at) for at, workflow_id in order[:end]]

    def subscribe(self, workflow_id: str) -> Subscription:
        """Take out a subscription to the workflow's wake-ups."""
        return self._notifier.subscribe(workflow_id)

    def subscribe_alarms(self) -> Subscription:
        """Take out a subscription that wakes whenever a batch sets an alarm."""
        return self._notifier.subscribe(None)

    async def close(self) -> None:
        """Drop nothing, but refuse further use."""
        self._closed = True


def _alarm_time(item: tuple[float, str]) -> float:
    return item[0]
