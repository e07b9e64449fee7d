"""One run of a workflow: load (one range scan) → execute → flush; live and yield modes.

A run continues the same coroutine for the workflow's whole life in this process: in
live mode it waits in memory and never replays in-process; in yield mode it stops at
the first long wait and a later run replays the history to get back there.

Rules:
* `Run.flush` is the only writer of history; every durable point passes through it,
  under one lock, so a cancel that took the lock first always wins.
* Writes accumulate in `Run.pending` (ephemeral steps, names, sleeps) and reach the
  store with the next flush as one atomic batch.
* One run per workflow id per driver at a time in this process (`WorkflowBusyError`).
* A failed write ends the run: whatever the driver raised is re-raised at every later
  durable point and from `Run.execute`, and never marks the workflow failed (the
  store may be fine; a later run resumes from what it holds).
"""

from __future__ import annotations

import traceback
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Literal, TypeAlias

import anyio
import anyio.lowlevel

from .._codec import load_value, store_value
from .._drivers import Batch, Driver, Subscription
from .._errors import (
    EntryInProgressError,
    EvictedError,
    HistoryDivergedError,
    StorageError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNameMismatchError,
)
from .._history import Entry, History, WorkflowMeta
from .._layout import WorkflowKeys
from .._types import (
    DEFAULT_RETRY_BACKOFF_MAX,
    RollbackErrorEvent,
    StepErrorEvent,
    WorkflowErrorEvent,
    WorkflowResult,
    WorkflowState,
)
from ._queue import Inbox, load_messages, wait_is_over
from ._rollback import Compensation, roll_back, unregistered_compensations
from ._scope import Scope
from ._signals import Evicted, StopReplay, Suspend

if TYPE_CHECKING:
    from .._clock import Clock
    from ._context import WorkflowContext

Mode: TypeAlias = Literal["live", "yield"]
ErrorEvent: TypeAlias = StepErrorEvent | WorkflowErrorEvent | RollbackErrorEvent
ErrorHook: TypeAlias = Callable[[ErrorEvent], object]
WorkflowFn: TypeAlias = Callable[["WorkflowContext", object], Awaitable[object]]

_ACTIVE: weakref.WeakKeyDictionary[Driver, dict[str, Run]] = weakref.WeakKeyDictionary()


def active_run(driver: Driver, workflow_id: str) -> Run | None:
    """The run of *workflow_id* on *driver* in this process, if one is going on."""
    runs = _ACTIVE.get(driver)
    return None if runs is None else runs.get(workflow_id)


def final_outcome(
    workflow_id: str, meta: WorkflowMeta, key: bytes
) -> WorkflowResult | None:
    """What a finished workflow's record stands for; None while it is unfinished.

    Raises:
        WorkflowFailedError, WorkflowCancelledError: it ended so.
    """
    if meta.state == WorkflowState.COMPLETED:
        return WorkflowResult(WorkflowState.COMPLETED, meta.load_output(key))
    if meta.state == WorkflowState.FAILED:
        raise WorkflowFailedError(workflow_id, meta.error or UNKNOWN_ERROR)
    if meta.state == WorkflowState.CANCELLED:
        raise WorkflowCancelledError(workflow_id)
    return None


def describe_exception(exc: BaseException) -> WorkflowError:
    """Turn an exception into its storable description."""
    return WorkflowError(
        type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)).rstrip()
    )


class Run:
    """Executes one workflow function against its history (see the module docs)."""

    def __init__(
        self,
        workflow_id: str,
        fn: WorkflowFn,
        input: object,
        driver: Driver,
        *,
        mode: Mode,
        clock: Clock,
        on_error: ErrorHook | None,
        workflow_name: str | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name  # recorded; a stored other name is refused
        self.fn = fn
        self.input = input
        self.driver = driver
        self.mode = mode
        self.clock = clock
        self.on_error = on_error
        self.poll_interval = driver.poll_interval
        self.history = History(workflow_id, WorkflowKeys(workflow_id))
        self.pending = Batch()
        self.evict_requested = False
        self.cancelled = False
        self.started = anyio.Event()  # set once the run holds the workflow
        self._meta: WorkflowMeta | None = None
        self._write_error: Exception | None = None  # set once a write failed
        # set once the code diverged or missed an await: the run ends with it even
        # if the workflow caught it, and writes nothing more (spec: never `failed`)
        self.refused: HistoryDivergedError | EntryInProgressError | None = None
        self._flush_lock = _WriteGate()
        self._wake = anyio.Event()
        self.tasks = 1  # tasks running workflow code (branches add theirs)
        # live mode under a worker: once every task waits, leave memory as yield does
        self.evict_when_idle = False
        self.checkpointed = False  # a rollback checkpoint was reached
        self.compensations: list[Compensation] = []
        self.rolling_back = False  # replaying only to find rollback handlers
        self._waits: dict[object, tuple[float | None, tuple[str, ...] | None]] = {}
        self.inbox = Inbox(self.history.keys)
        # taken before the history is loaded, so no message can slip between them
        self.subscription = driver.subscribe(workflow_id)
        self._cancel_scope = anyio.CancelScope()
        # Workers sharing a store: every write checks the lease record (fence), and
        # while the run holds the workflow its alarm is the lease's end, not now.
        self.fence: tuple[bytes, bytes] | None = None
        self.lease_until: float | None = None

    # --- the run ------------------------------------------------------------------

    async def execute(self) -> WorkflowResult:
        """Run the workflow until it completes, fails or (yield mode) must wait.

        Raises:
            WorkflowFailedError, WorkflowCancelledError, EvictedError,
            HistoryDivergedError, EntryInProgressError, WorkflowBusyError, StorageError.
        """
        runs = _ACTIVE.setdefault(self.driver, {})
        if self.workflow_id in runs:
            raise WorkflowBusyError(self.workflow_id)
        runs[self.workflow_id] = self
        try:
            try:
                return await self._execute()
            except _ReplayForHandlers:
                # the failure is stored as rolling_back; a second pass replays the
                # workflow in rollback mode, from the store, to find every handler
                self._start_over()
                return await self._execute()
        finally:
            del runs[self.workflow_id]
            self.subscription.close()
            self.started.set()

    async def _execute(self) -> WorkflowResult:
        from ._context import WorkflowContext  # the façade sits above the run

        self.history = history = await History.load(self.driver, self.workflow_id)
        self.inbox = load_messages(history.keys, history.messages)
        self.subscription.clear()  # whatever it announced so far was just loaded
        now = self.clock.now()
        meta = history.meta
        if meta is None:
            data, input_value = store_value(
                self.input, f"the input of workflow {self.workflow_id!r}"
            )
            self.pending.put(history.keys.input, data)
            meta = WorkflowMeta(
                WorkflowState.RUNNING,
                created_at=now,
                updated_at=now,
                name=self.workflow_name,
            )
        else:
            if self.workflow_name is not None and meta.name != self.workflow_name:
                if meta.name is not None:
                    raise WorkflowNameMismatchError(
                        self.workflow_id, stored=meta.name, requested=self.workflow_name
                    )
                meta.name = self.workflow_name  # started unnamed: it is named now
            finished = final_outcome(self.workflow_id, meta, history.keys.meta)
            if finished is not None:
                return finished
            # a rollback that did not finish: replay to find the handlers, then go on
            self.rolling_back = meta.state == WorkflowState.ROLLING_BACK
            input_value = (
                None
                if history.input is None
                else load_value(history.input, history.keys.input)
            )
        self._meta = meta
        if not self.rolling_back:
            # a crash leaves it due (at once, or when another worker may take over)
            self._set_state(WorkflowState.RUNNING, alarm=self._alarm_while_running())
        self.started.set()
        root = Scope(self, b"")
        try:
            with self._cancel_scope:
                try:
                    output = await self.fn(WorkflowContext(root), input_value)
                    root.end()
                except StopReplay:
                    return await self._fail(None)  # rollback mode reached its end
                except Suspend as suspend:
                    return await self._suspend(suspend)
                except Evicted as evicted:
                    await self._evicted(evicted)
                    raise EvictedError(self.workflow_id) from None
                except (HistoryDivergedError, EntryInProgressError, StorageError):
                    self.pending = Batch()  # leave the stored history as it was
                    raise
                except Exception as exc:
                    if self.refused is not None:  # the code caught a determinism error
                        self.pending = Batch()
                        raise self.refused from None
                    if self._write_error is not None:  # the store failed, not the code
                        self.pending = Batch()
                        raise self._write_error from None
                    return await self._fail(exc)
                else:
                    if self.rolling_back:
                        return await self._fail(None)
                    return await self._complete(output)
        finally:
            root.abandon()
        # only reached when the cancel scope swallowed a cancellation
        if self._write_error is not None:
            raise self._write_error  # aborted: it lost its workflow to another owner
        raise WorkflowCancelledError(self.workflow_id)

    async def _complete(self, output: object) -> WorkflowResult:
        try:
            data, value = store_value(
                output, f"the output of workflow {self.workflow_id!r}"
            )
        except TypeError as exc:
            return await self._fail(exc)
        meta = self._require_meta()
        meta.output = data
        self._set_state(WorkflowState.COMPLETED, alarm=None)
        await self.flush()
        return WorkflowResult(WorkflowState.COMPLETED, value)

    async def _fail(self, exc: Exception | None) -> WorkflowResult:
        """Fail the workflow with *exc* (None: the error stored by an earlier run).

        With rollback handlers registered, the state is ``rolling_back`` while they
        run; a handler that fails leaves it so (the next run retries), else ``failed``.
        """
        meta = self._require_meta()
        if exc is None or (self.rolling_back and meta.error is not None):
            error = meta.error or UNKNOWN_ERROR
            first_report = False
        else:
            error = describe_exception(exc)
            meta.error = error
            first_report = True
        unmet = unregistered_compensations(self)
        if self.compensations or unmet:
            self._set_state(
                WorkflowState.ROLLING_BACK, alarm=self._alarm_while_running()
            )
            await self.flush()
            if first_report:
                await self.report(WorkflowErrorEvent(self.workflow_id, error))
                first_report = False
            if not self.rolling_back and unmet:
                # steps whose handlers this pass never met (a finished loop): replay
                raise _ReplayForHandlers
            if not await roll_back(self):
                if self.evict_requested:
                    raise EvictedError(self.workflow_id)
                # a handler failed: stay rolling back, retried by a later run
                self._set_state(
                    WorkflowState.ROLLING_BACK,
                    alarm=self.clock.now() + DEFAULT_RETRY_BACKOFF_MAX,
                )
                await self.flush()
                raise WorkflowFailedError(self.workflow_id, error) from exc
        self._set_state(WorkflowState.FAILED, alarm=None)
        await self.flush()
        if first_report:
            await self.report(WorkflowErrorEvent(self.workflow_id, error))
        raise WorkflowFailedError(self.workflow_id, error) from exc

    async def _suspend(self, suspend: Suspend) -> WorkflowResult:
        self._set_state(
            WorkflowState.SLEEPING,
            alarm=suspend.until,
            until=suspend.until,
            waiting_for=suspend.waiting_for,
        )
        await self.flush()
        await self._due_if_a_message_came()
        return WorkflowResult(
            WorkflowState.SLEEPING, None, suspend.until, suspend.waiting_for
        )

    async def _evicted(self, evicted: Evicted) -> None:
        with anyio.CancelScope(shield=True):
            if evicted.until is not None or evicted.waiting_for is not None:
                self._set_state(
                    WorkflowState.SLEEPING,
                    alarm=evicted.until,
                    until=evicted.until,
                    waiting_for=evicted.waiting_for,
                )
            else:
                self._set_state(WorkflowState.PENDING, alarm=self.clock.now())
            await self.flush()
            await self._due_if_a_message_came()

    async def _due_if_a_message_came(self) -> None:
        """Make the sleeping workflow due now if a message it waits for is stored."""
        if await wait_is_over(self.inbox, self.driver):
            self.pending.set_alarm(self.workflow_id, self.clock.now())
            await self.flush()

    def _start_over(self) -> None:
        """Forget this pass's in-memory state, for a second pass over the store."""
        self.history = History(self.workflow_id, WorkflowKeys(self.workflow_id))
        self.pending = Batch()
        self.tasks = 1
        self._waits = {}
        self.checkpointed = False
        self.compensations = []
        self.rolling_back = False
        self._meta = None
        self._cancel_scope = anyio.CancelScope()

    # --- writes -------------------------------------------------------------------

    def record(self, entry: Entry) -> None:
        """Queue *entry*'s data and metadata for the next flush."""
        keys = self.history.keys
        self.pending.put(keys.entry + entry.location, entry.data_record())
        self.pending.put(keys.entry_meta + entry.location, entry.meta_record())

    async def flush(self) -> None:
        """Write everything pending as one atomic batch: a durable point."""
        if self.refused is not None:
            raise self.refused
        if self._write_error is not None:
            # The code saw that write fail (and may have caught it): recording more
            # could make the history disagree with what the code did. Stop here.
            raise self._write_error
        if not self.pending:
            return
        gate = self._flush_lock
        while gate.busy:
            # Group commit: what is pending now goes with the next write to start.
            # Wait for that write (one wake-up), not for a turn at the gate: a
            # thousand steps finishing during a slow write cost one write, not a
            # thousand wake-ups each.
            wanted = gate.started + 1
            while gate.busy and gate.done < wanted:  # type: ignore[redundant-expr]
                await gate.wait_change()
            if self._write_error is not None:
                raise self._write_error
            if gate.done >= wanted or not self.pending:
                if self.cancelled:
                    await anyio.lowlevel.checkpoint()
                return
        gate.busy = True
        try:
            # the writer also writes what others record meanwhile, then lets go
            while self.pending and not self.cancelled:
                batch, self.pending = self.pending, Batch()
                if self.fence is not None:
                    batch.check(*self.fence)
                gate.started += 1
                try:
                    await self.driver.write(batch)
                except BaseException as exc:
                    batch.extend(self.pending)
                    self.pending = batch
                    if isinstance(exc, Exception):
                        self._write_error = exc
                    raise
                gate.done += 1
                gate.notify()
            if self.cancelled:
                self.pending = Batch()  # cancel won: nothing more is recorded
        finally:
            gate.release()
        if self.cancelled:
            await anyio.lowlevel.checkpoint()  # delivers the run's cancellation

    def _alarm_while_running(self) -> float:
        return self.clock.now() if self.lease_until is None else self.lease_until

    async def renew(self, fence: tuple[bytes, bytes], until: float) -> bool:
        """Replace the lease record and move the alarm to *until*, fenced by the old.

        Returns False, writing nothing, once the run stopped running (it stored
        its own alarm). Raises `WriteConflictError` if another owner took over.
        """
        async with self._flush_lock:
            meta = self._meta
            if (
                self.fence is None
                or meta is None
                or meta.state not in (WorkflowState.RUNNING, WorkflowState.ROLLING_BACK)
                or self.cancelled
                or self._write_error is not None
            ):
                return False
            batch = Batch()
            batch.check(*self.fence)
            batch.put(*fence)
            batch.set_alarm(self.workflow_id, until)
            await self.driver.write(batch)
            self.fence, self.lease_until = fence, until
            return True

    def abort(self, error: Exception) -> None:
        """Stop the run at once and write nothing more: it lost its workflow."""
        self._write_error = error
        self._cancel_scope.cancel()

    def _require_meta(self) -> WorkflowMeta:
        if self._meta is None:
            raise RuntimeError("the run has not loaded its workflow yet")
        return self._meta

    def _set_state(
        self,
        state: WorkflowState,
        *,
        alarm: float | None,
        until: float | None = None,
        waiting_for: tuple[str, ...] | None = None,
    ) -> None:
        meta = self._require_meta()
        meta.state = state
        meta.updated_at = self.clock.now()
        meta.sleep_until = until
        meta.waiting_for = None if waiting_for is None else list(waiting_for)
        meta.write(self.pending, self.history.keys)
        if state.is_final:
            self.pending.notify(self.workflow_id)  # wakes whoever awaits the result
        if alarm is None:
            self.pending.clear_alarm(self.workflow_id)
        else:
            self.pending.set_alarm(self.workflow_id, alarm)

    async def cancel(self) -> None:
        """Cancel durably (cancel wins over any later write of this run), then stop it."""
        async with self._flush_lock:
            self.cancelled = True
            meta = self._meta
            batch = Batch()
            if meta is not None:
                meta.cancel(self.clock.now())
                meta.write(batch, self.history.keys)
                if self.fence is not None:
                    batch.check(*self.fence)
                batch.clear_alarm(self.workflow_id)
                batch.notify(self.workflow_id)
                await self.driver.write(batch)
        self._cancel_scope.cancel()
        return

    # --- waiting ------------------------------------------------------------------

    def evict(self) -> None:
        """Ask the run to stop at its next durable point."""
        self.evict_requested = True
        self.wake()

    def wake(self) -> None:
        """Make every in-memory wait re-check its condition now."""
        self._wake.set()
        self._wake = anyio.Event()

    async def wait(
        self, deadline: float | None, waiting_for: tuple[str, ...] | None = None
    ) -> None:
        """Wait durably until *deadline* (epoch s) or, with *waiting_for*, a message.

        Short waits (below the driver's poll interval) stay in memory; longer ones
        yield in yield mode, and in live mode record the alarm and wait in memory.
        A message wait returns on any wake-up; the caller re-checks its inbox.
        """
        if self.rolling_back:
            raise StopReplay  # rollback mode never waits: the history ends here
        if deadline is not None and deadline - self.clock.now() < self.poll_interval:
            await self._wait_in_memory(deadline, waiting_for)
            return
        if self.mode == "yield":
            raise Suspend(deadline, waiting_for)
        token = object()
        self._waits[token] = (deadline, waiting_for)
        try:
            if len(self._waits) == self.tasks and self.evict_when_idle:
                self.evict()  # every task waits: store the run, free its memory
            elif len(self._waits) == self.tasks:  # every branch waits: the run sleeps
                until, names = merge_waits(self._waits.values())
                self._set_state(
                    WorkflowState.SLEEPING, alarm=until, until=until, waiting_for=names
                )
                await self.flush()
            await self._wait_in_memory(deadline, waiting_for)
        finally:
            del self._waits[token]
        if self._require_meta().state == WorkflowState.SLEEPING:
            self._set_state(WorkflowState.RUNNING, alarm=self._alarm_while_running())

    def tasks_changed(self) -> None:
        """A task stopped running workflow code: leave memory if all others wait."""
        if self.evict_when_idle and 0 < self.tasks == len(self._waits):
            self.evict()

    async def _wait_in_memory(
        self, deadline: float | None, waiting_for: tuple[str, ...] | None
    ) -> None:
        clock = self.clock
        while deadline is None or clock.now() < deadline:
            if self.evict_requested:
                raise Evicted(deadline, waiting_for)
            wake = self._wake
            async with anyio.create_task_group() as tg:
                if deadline is not None:
                    # the timer ends this wait only; setting the shared wake event
                    # would leave it set and make every later wait return at once
                    tg.start_soon(_cancel_at, clock, deadline, tg.cancel_scope)
                if waiting_for is not None:
                    tg.start_soon(_cancel_on_notify, self.subscription, tg.cancel_scope)
                await wake.wait()
                tg.cancel_scope.cancel()
            if waiting_for is not None:
                return

    async def report(self, event: ErrorEvent) -> None:
        """Call the ``on_error`` hook; its own errors are reported, never raised."""
        if self.on_error is None:
            return
        try:
            result = self.on_error(event)
            if isinstance(result, Awaitable):
                await result
        except Exception as exc:  # a broken hook must not break the workflow
            warnings.warn(f"on_error hook raised {exc!r}", RuntimeWarning, stacklevel=1)


class _ReplayForHandlers(Exception):  # noqa: N818 - internal, caught in execute()
    """The failure is stored; replay in rollback mode to find every handler."""


class _WriteGate:
    """A lock that costs nothing when free, with group commit for `Run.flush`.

    W1 hot path: ``anyio.Lock`` checkpoints (a trip through the event loop) on every
    acquire, which tripled the cost of a step; writes only contend when branches
    flush concurrently or a cancel races a flush. ``started``/``done`` count the
    writes of the holder's flush loop, so a waiting flush knows when the write
    that carries its entries is done.
    """

    __slots__ = ("_freed", "busy", "done", "started")

    def __init__(self) -> None:
        self.busy = False
        self.started = 0  # flush writes begun
        self.done = 0  # flush writes finished
        self._freed: anyio.Event | None = None

    async def wait_free(self) -> None:
        """Wait until nobody holds the gate (the caller then sets ``busy``)."""
        while self.busy:
            await self.wait_change()

    async def wait_change(self) -> None:
        """Wait until a write finishes or the gate is let go."""
        if self._freed is None:
            self._freed = anyio.Event()
        await self._freed.wait()

    def notify(self) -> None:
        """Wake whoever waits for a change."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def release(self) -> None:
        """Free the gate and wake whoever waits for it."""
        self.busy = False
        self.notify()

    async def __aenter__(self) -> None:
        await self.wait_free()
        self.busy = True

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


async def _cancel_at(clock: Clock, deadline: float, scope: anyio.CancelScope) -> None:
    await clock.sleep_until(deadline)
    scope.cancel()


async def _cancel_on_notify(
    subscription: Subscription, scope: anyio.CancelScope
) -> None:
    await subscription.wait()
    scope.cancel()


def merge_waits(
    waits: Iterable[tuple[float | None, tuple[str, ...] | None]],
) -> tuple[float | None, tuple[str, ...] | None]:
    """The earliest deadline and every awaited message name of several waits."""
    waits = list(waits)  # read twice below
    deadlines = [deadline for deadline, _ in waits if deadline is not None]
    names: set[str] | None = None
    for _, waiting_for in waits:
        if waiting_for is not None:
            names = (names or set()) | set(waiting_for)
    return (
        min(deadlines) if deadlines else None,
        None if names is None else tuple(sorted(names)),
    )


UNKNOWN_ERROR = WorkflowError("Error", "the workflow failed with an unrecorded error")
