"""The driver protocol: sorted byte keys, atomic batches, alarms and wake-ups.

A driver is the only thing that touches storage. It sees bytes only: no key schema,
no codec, no clock. What it must guarantee (``durable.testing.check_driver`` checks it):

* ``list_prefix``/``list_range`` return items in bytewise key order;
* ``write`` applies a `Batch` atomically and in order: after a crash either every op of
  the batch is visible or none is;
* alarms (one optional wake time per workflow id) change only through batches, in the
  same atomic write as the history that explains them;
* a ``notify`` op wakes every `Subscription` of that workflow id taken out before the
  write committed (a wake-up is never lost between a check and a wait);
* a batch with ``check`` ops is applied only if every checked key holds the expected
  value before the batch (else `WriteConflictError`, nothing applied): the fencing
  that keeps a worker that lost a workflow's lease from writing into its history;
* a batch that sets an alarm wakes every alarm subscription (``subscribe_alarms``)
  taken out before it committed, so a worker sleeping until its next alarm learns
  of an earlier one without polling.

Keys starting with ``0xFF`` are reserved for drivers' own bookkeeping (the engine's
keys never start with it), and are never returned by ``list_prefix``/``list_range``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import attrs

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

DEFAULT_POLL_INTERVAL: Final = 1.0
"""Seconds; waits shorter than a driver's poll interval happen in memory."""

RESERVED_PREFIX: Final = b"\xff"

# Batch op codes; ops are plain tuples because the W1 hot path builds one per write.
PUT: Final = 0
DELETE: Final = 1
DELETE_RANGE: Final = 2
SET_ALARM: Final = 3
CLEAR_ALARM: Final = 4
NOTIFY: Final = 5
CHECK: Final = 6


@attrs.frozen
class Alarm:
    """A workflow's wake time, as stored by a driver."""

    workflow_id: str
    at: float  # epoch seconds


@attrs.define
class Batch:
    """Writes that a driver applies atomically, in the order they were added.

    The ops are tuples ``(code, a, b)``; drivers read them through `Batch.ops`.
    """

    # (code, key or workflow id, value or end or time): Any keeps drivers' loops cheap
    ops: list[tuple[int, Any, Any]] = attrs.field(factory=list)
    has_notify: bool = False  # lets drivers skip scanning for NOTIFY ops (W1)
    sets_alarm: bool = False  # wakes alarm subscribers once committed
    has_check: bool = False  # lets drivers skip scanning for CHECK ops (W1)

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def put(self, key: bytes, value: bytes) -> None:
        """Set *key* to *value*."""
        self.ops.append((PUT, key, value))

    def delete(self, key: bytes) -> None:
        """Remove *key* if it exists."""
        self.ops.append((DELETE, key, None))

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Remove every key ``k`` with ``start <= k < end``."""
        self.ops.append((DELETE_RANGE, start, end))

    def delete_prefix(self, prefix: bytes) -> None:
        """Remove every key that starts with *prefix*."""
        self.ops.append((DELETE_RANGE, prefix, prefix_end(prefix)))

    def set_alarm(self, workflow_id: str, at: float) -> None:
        """Set (or move) the workflow's alarm to *at* epoch seconds."""
        self.ops.append((SET_ALARM, workflow_id, float(at)))
        self.sets_alarm = True

    def clear_alarm(self, workflow_id: str) -> None:
        """Remove the workflow's alarm if it has one."""
        self.ops.append((CLEAR_ALARM, workflow_id, None))

    def check(self, key: bytes, value: bytes | None) -> None:
        """Apply the batch only if *key* holds *value* before it (None: absent)."""
        self.ops.append((CHECK, key, value))
        self.has_check = True

    def notify(self, workflow_id: str) -> None:
        """Wake the workflow's subscribers once this batch has committed."""
        self.ops.append((NOTIFY, workflow_id, None))
        self.has_notify = True

    def extend(self, other: Batch) -> None:
        """Append every op of *other*, keeping their order."""
        self.ops.extend(other.ops)
        self.has_notify = self.has_notify or other.has_notify
        self.sets_alarm = self.sets_alarm or other.sets_alarm
        self.has_check = self.has_check or other.has_check


def prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string that starts with *prefix*."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return RESERVED_PREFIX  # everything the engine may use sorts below it
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def failed_check(batch: Batch, read: Callable[[bytes], bytes | None]) -> bytes | None:
    """The first key of *batch*'s checks whose current value (by *read*) differs."""
    for code, key, value in batch.ops:
        if code == CHECK and read(key) != value:
            return key  # type: ignore[no-any-return]
    return None


def check_limit(limit: int | None) -> None:
    """Refuse a negative listing limit, which has no sensible meaning."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, not {limit!r}")


class Subscription:
    """Wake-ups for one workflow id; ``wait()`` returns once a notify arrived.

    A notify that lands between taking the subscription and calling ``wait()`` is kept,
    so check-then-wait loops never miss one. A workflow id of ``None`` stands for
    alarm changes (`Driver.subscribe_alarms`).
    """

    def __init__(self, notifier: LocalNotifier, workflow_id: str | None) -> None:
        self._notifier = notifier
        self._workflow_id = workflow_id
        self._event = anyio.Event()

    def set(self) -> None:
        """Mark the subscription notified (called by the driver)."""
        self._event.set()

    def clear(self) -> None:
        """Forget a notify that arrived (before re-reading what it announced)."""
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        """Wait for the next notify, then re-arm."""
        await self._event.wait()
        self._event = anyio.Event()

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._notifier.unsubscribe(self._workflow_id, self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalNotifier:
    """In-process fan-out of ``notify`` ops, for drivers whose writers share a process."""

    def __init__(self) -> None:
        # None: alarm subscribers (a workflow id is never None)
        self._subscribers: dict[str | None, set[Subscription]] = {}

    def subscribe(self, workflow_id: str | None) -> Subscription:
        """Return a new subscription to *workflow_id*'s wake-ups (None: alarms)."""
        subscription = Subscription(self, workflow_id)
        self._subscribers.setdefault(workflow_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, workflow_id: str | None, subscription: Subscription) -> None:
        """Forget *subscription*."""
        subscribers = self._subscribers.get(workflow_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[workflow_id]

    def notify_batch(self, batch: Batch) -> None:
        """Deliver the ``notify`` ops and alarm changes of a committed batch."""
        if not self._subscribers:
            return
        if batch.sets_alarm:
            for subscription in self._subscribers.get(None, ()):
                subscription.set()
        if not batch.has_notify:
            return
        for code, workflow_id, _ in batch.ops:
            if code == NOTIFY:
                for subscription in self._subscribers.get(workflow_id, ()):
                    subscription.set()


class Driver(ABC):
    """A sorted key-value store with atomic batches, alarms and wake-ups.

    Subclasses implement the abstract methods; everything else is built on them.
    Drivers are async context managers; leaving the block closes the driver.
    """

    poll_interval: float
    """Seconds; waits shorter than this happen in memory, longer ones yield."""

    def __init__(self, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            )
        self.poll_interval = float(poll_interval)

    @abstractmethod
    async def get(self, key: bytes) -> bytes | None:
        """Return the value at *key*, or ``None``."""

    @abstractmethod
    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return ``(key, value)`` pairs with ``start <= key < end`` in key order.

        With ``reverse=True`` the order is descending; ``limit`` caps the count.
        """

    @abstractmethod
    async def write(self, batch: Batch) -> None:
        """Apply every op of *batch* atomically, then deliver its notifies."""

    @abstractmethod
    async def get_alarm(self, workflow_id: str) -> float | None:
        """Return the workflow's alarm time, or ``None``."""

    @abstractmethod
    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """Return alarms due at or before *until* (all when ``None``), earliest first."""

    @abstractmethod
    def subscribe(self, workflow_id: str) -> Subscription:
        """Take out a subscription to the workflow's ``notify`` ops."""

    @abstractmethod
    def subscribe_alarms(self) -> Subscription:
        """Take out a subscription that wakes whenever a batch sets an alarm."""

    @abstractmethod
    async def close(self) -> None:
        """Release the store; the driver cannot be used afterwards."""

    async def claim_alarms(
        self, *, until: float, limit: int, lease_until: float
    ) -> list[Alarm]:
        """Take up to *limit* alarms due by *until*, moving each to *lease_until*.

        Returns the claimed alarms with their previous times, earliest first. A
        driver shared between processes must make this atomic, so that two
        claimers never take the same alarm (PostgreSQL: ``FOR UPDATE SKIP
        LOCKED``); this default, for single-process stores, lists then moves.
        """
        check_limit(limit)
        due = await self.list_alarms(until=until, limit=limit)
        if due:
            batch = Batch()
            for alarm in due:
                batch.set_alarm(alarm.workflow_id, lease_until)
            await self.write(batch)
        return due

    async def list_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Return every ``(key, value)`` whose key starts with *prefix*, in key order."""
        return await self.list_range(prefix, prefix_end(prefix))

    async def set(self, key: bytes, value: bytes) -> None:
        """Set one key (a one-op batch)."""
        batch = Batch()
        batch.put(key, value)
        await self.write(batch)

    async def delete(self, key: bytes) -> None:
        """Delete one key (a one-op batch)."""
        batch = Batch()
        batch.delete(key)
        await self.write(batch)

    async def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key that starts with *prefix*."""
        batch = Batch()
        batch.delete_prefix(prefix)
        await self.write(batch)

    async def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key ``k`` with ``start <= k < end``."""
        batch = Batch()
        batch.delete_range(start, end)
        await self.write(batch)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()
