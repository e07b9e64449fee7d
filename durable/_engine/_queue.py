"""Messages: a durable per-workflow queue, consumed exactly once by ``queue.next``.

A message is a key ``(1, id, 5, sequence)`` holding ``[name, body, sent_at]``; the
sequence orders messages by arrival (see `next_sequence`). ``queue.next`` records
the bodies it returns in its entry and deletes the consumed messages *in the same
atomic batch*, so a message is consumed once and never lost, and a replay returns
the recorded bodies without touching the queue. ``queue.send`` is an entry too, so
a replay never sends twice.

Rule: the run's `Inbox` mirrors the unconsumed messages; it is refreshed from the
store only when it cannot satisfy a wait, and once more after a run that ended in a
message wait stored its sleeping state (`wait_is_over`): no wake-up is lost between
a wait's last look at the store and that write.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import attrs

from .._codec import dump_record, load_record, load_value, store_value
from .._errors import CorruptRecordError
from .._history import CANCELLED, COMPLETED, Entry
from .._keys import encode_int
from ._rollback import stop_if_rolling_back
from ._signals import Evicted, Suspend

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._clock import Clock
    from .._drivers import Batch, Driver
    from .._layout import WorkflowKeys
    from ._run import Run
    from ._scope import Scope

MESSAGE: Final = "message"
SEND: Final = "send"

_last_sequence = 0


def next_sequence(clock: Clock) -> int:
    """A message sequence number: nanoseconds since the epoch, unique in-process.

    Arrival order within a process is exact; across processes it is clock order.
    """
    global _last_sequence
    _last_sequence = max(_last_sequence + 1, int(clock.now() * 1e9))
    return _last_sequence


@attrs.define(slots=True)
class Message:
    """One queued, unconsumed message."""

    key: bytes
    name: str
    body: bytes  # encoded user value
    sent_at: float

    @classmethod
    def from_item(cls, key: bytes, value: bytes) -> Message:
        """Decode a stored message."""
        record = load_record(value, key)
        try:
            name, body, sent_at = record[:3]
            return cls(key, str(name), bytes(body), float(sent_at))
        except (TypeError, ValueError) as exc:
            raise CorruptRecordError(key, f"bad message record ({exc})") from None


def put_message(
    batch: Batch, keys: WorkflowKeys, clock: Clock, name: str, body: bytes
) -> Message:
    """Add a new message to *batch* and return it."""
    key = keys.message + encode_int(next_sequence(clock))
    now = clock.now()
    batch.put(key, dump_record([name, body, now]))
    return Message(key, name, body, now)


class Inbox:
    """The unconsumed messages of one workflow, in arrival order."""

    def __init__(self, keys: WorkflowKeys) -> None:
        self._keys = keys
        self._messages: OrderedDict[bytes, Message] = OrderedDict()
        self._last_key = keys.message
        # (names, count) of each wait that ended the run (yield or eviction)
        self.sleeping: list[tuple[frozenset[str] | None, int]] = []

    def add(self, message: Message) -> None:
        """Add a message that arrived (or was loaded)."""
        if message.key not in self._messages and message.key > self._last_key:
            self._messages[message.key] = message
            self._last_key = message.key

    def matching(self, names: frozenset[str] | None, count: int) -> list[Message]:
        """The oldest *count* (or fewer) messages whose name is in *names*."""
        found = []
        for message in self._messages.values():
            if names is None or message.name in names:
                found.append(message)
                if len(found) == count:
                    break
        return found

    def restore(self, message: Message) -> None:
        """Put back a message consumed by a branch whose result was discarded."""
        self._messages[message.key] = message
        for key in sorted(self._messages):  # keep arrival order
            self._messages.move_to_end(key)

    def consume(self, messages: Iterable[Message], batch: Batch) -> None:
        """Remove *messages* here and, in *batch*, from the store."""
        for message in messages:
            del self._messages[message.key]
            batch.delete(message.key)

    async def refresh(self, driver: Driver) -> None:
        """Read messages that arrived after the newest one seen."""
        start = self._last_key + b"\x00"
        end = self._keys.scan_range[1]
        for key, value in await driver.list_range(start, end):
            self.add(Message.from_item(key, value))


def describe_names(names: frozenset[str] | None) -> tuple[str, ...]:
    """What a run waits for: the names, sorted, or ``()`` for any message."""
    return () if names is None else tuple(sorted(names))


async def next_messages(
    scope: Scope,
    entry: Entry,
    fresh: bool,
    names: frozenset[str] | None,
    count: int,
    timeout: float | None,
) -> list[object]:
    """Wait for *count* matching messages (fewer once *timeout* expires) and consume them."""
    run = scope.run
    if entry.status == COMPLETED:
        recorded: list[bytes] = entry.data[1]  # type: ignore[index]
        return [load_value(body, entry.location) for body in recorded]
    stop_if_rolling_back(run)  # never consume while rolling back
    clock = run.clock
    if fresh:
        deadline = None if timeout is None else clock.now() + timeout
        entry.data = [deadline, None]
        if (
            deadline is not None
            and timeout is not None
            and timeout >= run.poll_interval
        ):
            run.record(entry)  # the deadline must be durable before a long wait
    else:
        deadline = entry.data[0]  # type: ignore[index]
    waiting_for = describe_names(names)
    inbox = run.inbox
    # Look at the store once before waiting or giving up, even on a fresh run: a
    # message may have arrived since the history load (during a step, say), and a
    # run must neither time out past it nor yield asleep with it queued.
    refreshed = False
    while True:
        found = inbox.matching(names, count)
        if len(found) < count and not refreshed:
            run.subscription.clear()  # what it announced is read next
            await inbox.refresh(run.driver)
            refreshed = True
            continue
        expired = deadline is not None and clock.now() >= deadline
        if len(found) == count or expired:
            inbox.consume(found, run.pending)
            bodies = [message.body for message in found]
            # where each body came from, so a race that discards this branch can
            # put the messages back (`restore_consumed`)
            sources = [[m.key, m.name, m.sent_at] for m in found]
            entry.data = [deadline, bodies, sources]
            entry.status = COMPLETED
            entry.finished_at = clock.now()
            run.record(entry)
            await run.flush()
            return [
                load_value(body, message.key)
                for body, message in zip(bodies, found, strict=True)
            ]
        try:
            await run.wait(deadline, waiting_for)
        except (Suspend, Evicted):
            inbox.sleeping.append((names, count))  # see `wait_is_over`
            raise
        refreshed = False


def restore_consumed(run: Run, branch: bytes) -> None:
    """Return to the queue every message consumed under the discarded *branch*.

    A race loser's ``queue.next`` may have consumed messages before the race was
    decided; the workflow never sees that branch's result, so the messages go back
    (with their original keys, in the write that records the race) and the entry is
    marked cancelled.
    """
    for entry in list(run.history.entries.values()):
        if (
            entry.kind != MESSAGE
            or entry.status != COMPLETED
            or not entry.location.startswith(branch)
        ):
            continue
        data = entry.data
        if not isinstance(data, list) or len(data) < 3:
            continue
        deadline, bodies, sources = data[:3]
        for (key, name, sent_at), body in zip(sources, bodies, strict=True):
            run.pending.put(key, dump_record([name, body, sent_at]))
            run.inbox.restore(Message(key, name, body, sent_at))
        entry.data = [deadline, [], []]
        entry.status = CANCELLED
        run.record(entry)


async def wait_is_over(inbox: Inbox, driver: Driver) -> bool:
    """After the run stored its sleeping state: can a wait that ended it go on now?

    A message stored between the wait's last look at the store and that write, by a
    sender that saw the workflow running (or another process, whose notify does not
    reach this one), set no alarm; or another branch read it into the inbox after
    the wait gave up. Either way the run must make the workflow due itself.
    """
    if not inbox.sleeping:
        return False
    await inbox.refresh(driver)
    return any(
        len(inbox.matching(names, count)) == count for names, count in inbox.sleeping
    )


async def send(
    scope: Scope, entry: Entry, fresh: bool, name: str, body: object
) -> None:
    """Enqueue a message to this workflow once; a replay does not send again."""
    if not fresh and entry.status == COMPLETED:
        return
    run = scope.run
    data, _ = store_value(
        body, f"message {name!r} sent by workflow {run.workflow_id!r}"
    )
    message = put_message(run.pending, run.history.keys, run.clock, name, data)
    run.inbox.add(message)
    entry.data = message.key  # so a replay-from-step can take the message back
    entry.status = COMPLETED
    entry.finished_at = run.clock.now()
    run.record(entry)
    await run.flush()


def load_messages(keys: WorkflowKeys, items: Iterable[tuple[bytes, bytes]]) -> Inbox:
    """Build an inbox from stored message items (in key order)."""
    inbox = Inbox(keys)
    for key, value in items:
        inbox.add(Message.from_item(key, value))
    return inbox
