"""Worker: one process running many named workflows from one store, each when it is due.

A workflow is *due* when its alarm (a durable index ordered by wake time, kept by the
driver) has passed. The worker runs due workflows in yield mode, so a workflow holds a
slot only while it has work: at its first long wait it stores its state and alarm and
leaves memory, and a later run replays its history to continue. Between runs the
worker sleeps until the earliest alarm or until a batch sets an alarm
(`Driver.subscribe_alarms`): finding work costs O(due + running), never O(workflows),
and an idle worker does not poll.

With ``lease=`` several workers share one store: due alarms are *claimed* (moved to
the lease's end atomically), and each run is owned through a lease record whose
fencing token every write of the run checks (see `_lease`).

Rules:
* One run per workflow at a time (across workers: per lease); at most
  ``concurrency`` at once.
* A workflow the worker cannot run (unregistered name, diverged code) is *parked*:
  skipped, logged, left untouched in the store, and retried after ``wake()``,
  ``recover()``, ``replay_from()`` through this worker, or a restart.
* Shutdown evicts every run at its next durable point and waits for the flushes;
  whatever was running is stored as due, so the next worker resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Self, final

import anyio

from ._clock import SYSTEM_CLOCK, Clock
from ._codec import dump_value
from ._drivers import Batch, Driver, Subscription
from ._engine._run import ErrorHook, Run, WorkflowFn
from ._errors import (
    EntryInProgressError,
    EvictedError,
    HistoryDivergedError,
    StorageError,
    UnregisteredWorkflowError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNameMismatchError,
    WriteConflictError,
)
from ._handle import WorkflowHandle
from ._history import WorkflowMeta
from ._inspect import DEFAULT_PAGE_SIZE, WorkflowPage, list_page
from ._layout import WorkflowKeys
from ._lease import Lease, lease_key, read_lease
from ._types import WorkflowState
from ._workflow import Workflow

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

DEFAULT_CONCURRENCY: Final = 100
"""Workflows a `Worker` runs at once by default."""

_RETRY_AFTER_STORAGE_ERROR: Final = 1.0  # seconds before what hit one is retried

log = logging.getLogger("durable.worker")


@final
class Worker:
    """Runs every due workflow of one store whose name it has registered.

    ``await worker.run()`` (or ``async with worker:``) resumes whatever is due at
    once, then runs each workflow when its alarm falls due or a message arrives,
    until `shutdown`. Register workflows made with `durable.workflow`, or plain
    functions (registered under their ``__name__``).

    Example:
        async with durable.Worker(driver, [order]) as worker:
            handle = await worker.start("order", "order-1", {"sku": "A1"})
            result = await handle.result()
    """

    def __init__(
        self,
        driver: Driver,
        workflows: Iterable[Workflow | WorkflowFn] = (),
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_error: ErrorHook | None = None,
        clock: Clock | None = None,
        lease: float | None = None,
    ) -> None:
        if lease is not None and not lease > 0:
            raise ValueError(
                f"lease must be a positive number of seconds, not {lease!r}"
            )
        if not isinstance(concurrency, int) or concurrency < 1:  # type: ignore[redundant-expr]
            raise ValueError(f"concurrency must be an int >= 1, not {concurrency!r}")
        self.driver = driver
        self.concurrency = concurrency
        self.lease = None if lease is None else float(lease)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._on_error = on_error
        self._clock = clock or SYSTEM_CLOCK
        self._workflows: dict[str, Workflow] = {}
        for item in workflows:
            self.register(item)
        self._runs: dict[str, Run | None] = {}  # running ids (None: not started yet)
        self._parked: dict[str, str] = {}  # workflow id → why it cannot run
        self._deferred: dict[str, float] = {}  # workflow id → retry no sooner than
        self._kick = anyio.Event()  # set: the due set may have changed; look again
        self._serving = False
        self._stopping = False
        self._stopped: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- registry -----------------------------------------------------------------

    def register(self, workflow: Workflow | WorkflowFn) -> Workflow:
        """Register a workflow (a plain function under its ``__name__``); returns it.

        Raises ``ValueError`` if another function already has the name.
        """
        if not isinstance(workflow, Workflow):
            name = getattr(workflow, "__name__", None)
            if not isinstance(name, str) or not callable(workflow):
                raise TypeError(
                    f"register a @durable.workflow or an async function, not {workflow!r}"
                )
            workflow = Workflow(name, workflow)
        known = self._workflows.get(workflow.name)
        if known is not None and known.fn is not workflow.fn:
            raise ValueError(
                f"two different workflows are named {workflow.name!r}; "
                "give one of them another name with @durable.workflow(name=...)"
            )
        self._workflows[workflow.name] = workflow
        return workflow

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The registered workflows by name (read-only)."""
        return MappingProxyType(self._workflows)

    @property
    def running(self) -> int:
        """How many workflows this worker runs right now."""
        return len(self._runs)

    @property
    def parked(self) -> Mapping[str, str]:
        """Workflows this worker skips, with the reason (read-only)."""
        return MappingProxyType(self._parked)

    # --- starting and addressing workflows ---------------------------------------

    async def start(self, name: str, workflow_id: str, input: object) -> WorkflowHandle:
        """Store a new workflow running *name* and make it due; returns its handle.

        Idempotent: if *workflow_id* exists and runs *name*, nothing is written
        and its handle is returned (its stored input stays).

        Raises:
            UnregisteredWorkflowError: no workflow is registered as *name*.
            WorkflowNameMismatchError: *workflow_id* exists and runs another workflow.
            UnstorableValueError: *input* cannot be stored.
        """
        workflow = self._workflows.get(name)
        if workflow is None:
            raise UnregisteredWorkflowError(name, registered=tuple(self._workflows))
        if not isinstance(workflow_id, str) or not workflow_id:  # type: ignore[redundant-expr]
            raise ValueError(
                f"workflow_id must be a non-empty str, not {workflow_id!r}"
            )
        keys = WorkflowKeys(workflow_id)
        data = dump_value(input, f"the input of workflow {workflow_id!r}")
        while True:
            raw = await self.driver.get(keys.meta)
            if raw is not None:
                stored = WorkflowMeta.from_bytes(raw, keys.meta).name
                if stored != name:
                    raise WorkflowNameMismatchError(
                        workflow_id, stored=stored, requested=name
                    )
                return self.handle(workflow_id)
            now = self._clock.now()
            meta = WorkflowMeta(
                WorkflowState.PENDING, created_at=now, updated_at=now, name=name
            )
            batch = Batch()
            batch.check(keys.meta, None)  # two starts of one id: one writes
            batch.put(keys.input, data)
            meta.write(batch, keys)
            batch.set_alarm(workflow_id, now)
            try:
                await self.driver.write(batch)
            except WriteConflictError:
                continue  # another start (maybe another process) won: read it
            return self.handle(workflow_id)

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to steer and read *workflow_id*; this worker runs it.

        Its ``result()`` waits until the workflow completes, fails or is cancelled.
        No I/O: an unknown id raises `UnknownWorkflowError` when the handle is used.
        """
        return WorkflowHandle(
            workflow_id,
            None,
            None,
            self.driver,
            "yield",
            self._on_error,
            self._clock,
            owner=self,
        )

    async def list_workflows(
        self,
        *,
        state: WorkflowState | str | None = None,
        name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """List this store's workflows; see `durable.list_workflows`."""
        return await list_page(
            self.driver, state=state, name=name, limit=limit, cursor=cursor
        )

    def unpark(self, workflow_id: str) -> None:
        """Let the worker try a parked workflow again (called by its handles)."""
        if self._parked.pop(workflow_id, None) is not None:
            log.info("workflow %r unparked", workflow_id)
        self._deferred.pop(workflow_id, None)
        self._kick.set()

    # --- serving ------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run due workflows until `shutdown` (or SIGTERM/SIGINT with *handle_signals*).

        A second signal stops at once: running steps are cancelled, unrecorded,
        and run again by the next worker.
        """
        if self._serving:
            raise RuntimeError("this worker is already running")
        self._serving, self._stopping = True, False
        self._stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as outer:
                if handle_signals:
                    outer.start_soon(self._watch_signals, outer.cancel_scope)
                with self.driver.subscribe_alarms() as alarms:
                    outer.start_soon(self._forward, alarms)
                    async with anyio.create_task_group() as runs:
                        await self._dispatch(runs)  # until shutdown() evicted all
                    outer.cancel_scope.cancel()
        finally:
            self._serving = False
            self._stopped.set()
        log.info("worker stopped")

    def shutdown(self) -> None:
        """Stop taking work and evict running workflows at their next durable point.

        `run` returns once every run has flushed. Safe to call more than once.
        """
        self._stopping = True
        self._kick.set()
        for run in self._runs.values():
            if run is not None:  # None: not started yet; it checks _stopping
                run.evict()

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("this worker's `async with` block is already open")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        await task_group.start(self._serve)
        self._task_group = task_group
        return self

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await self.run()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        try:
            self.shutdown()
            stopped = self._stopped
            if stopped is not None:
                with anyio.CancelScope(shield=True):  # running steps finish, recorded
                    await stopped.wait()
        finally:
            await task_group.__aexit__(None, None, None)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self._stopping:
                    log.info(
                        "%s: shutting down gracefully", signal.Signals(signum).name
                    )
                    self.shutdown()
                else:
                    log.warning("second signal: stopping running steps now")
                    scope.cancel()

    async def _forward(self, alarms: Subscription) -> None:
        while True:
            await alarms.wait()
            self._kick.set()

    async def _dispatch(self, runs: anyio.abc.TaskGroup) -> None:
        """Start due workflows, then sleep until the next alarm or kick; repeat.

        A store that fails (a database restarting) is retried, not fatal: the
        worker logs it and looks again after a pause.
        """
        while not self._stopping:
            self._kick = anyio.Event()  # a change from here on makes another pass
            try:
                next_at = await self._start_due(runs)
            except StorageError as exc:
                log.warning("reading due work failed (%s); retrying", exc)
                next_at = self._clock.now() + _RETRY_AFTER_STORAGE_ERROR
            await self._wait(next_at)  # returns at once if shutdown() kicked

    async def _start_due(self, runs: anyio.abc.TaskGroup) -> float | None:
        """Start what is due (up to the free slots); return when to look next."""
        if self.lease is not None:
            return await self._claim_due(runs, self.lease)
        return await self._start_due_alone(runs)

    async def _claim_due(self, runs: anyio.abc.TaskGroup, lease: float) -> float | None:
        """Lease mode: claim due alarms (moved to the lease's end), then run them.

        Claims are atomic in a shared driver, so two workers never claim one alarm;
        the lease record then decides who runs it (see `_lease`).
        """
        now = self._clock.now()
        free = self.concurrency - len(self._runs)
        if free > 0:
            claimed = await self.driver.claim_alarms(
                until=now, limit=free, lease_until=now + lease
            )
            for alarm in claimed:
                workflow_id = alarm.workflow_id
                if workflow_id in self._runs:  # ours, made due by a message: keep it
                    runs.start_soon(self._give_back, workflow_id)
                    continue
                if workflow_id in self._parked:
                    continue  # claimed again after a lease: stays parked, quietly
                self._runs[workflow_id] = None
                runs.start_soon(self._run_workflow, workflow_id)
        upcoming = await self.driver.list_alarms(limit=1)
        if not upcoming:
            return None
        first = upcoming[0]
        if first.at <= now:
            # due but not claimed: no free slot (a finishing run kicks), or another
            # claimer holds it for a moment; look again shortly
            return (
                None if free <= 0 else now + min(lease, self.driver.poll_interval) / 10
            )
        return first.at

    async def _start_due_alone(self, runs: anyio.abc.TaskGroup) -> float | None:
        """Start what is due (up to the free slots); return when to look next.

        Reads O(due + running + parked) alarms: the due ones, then just enough of
        the alarm index to find the earliest one still to come.
        """
        now = self._clock.now()
        for workflow_id in [i for i, at in self._deferred.items() if at <= now]:
            del self._deferred[workflow_id]
        later = min(self._deferred.values(), default=None)
        free = self.concurrency - len(self._runs)
        if free <= 0:
            return later  # a finishing run kicks
        skipped = self._runs.keys() | self._parked.keys() | self._deferred.keys()
        # with this limit, a full read means every free slot was filled below
        limit = len(skipped) + free + 1
        due = await self.driver.list_alarms(until=now, limit=limit)
        for alarm in due:
            if alarm.workflow_id in skipped:
                continue
            if free == 0:
                return later  # more is due: a finishing run kicks
            self._runs[alarm.workflow_id] = None
            runs.start_soon(self._run_workflow, alarm.workflow_id)
            free -= 1
        # the earliest alarm to come sorts after every due one and skipped ones
        limit = len(due) + len(self._parked) + len(self._deferred) + 1
        upcoming = await self.driver.list_alarms(limit=limit)
        for alarm in upcoming:
            if alarm.at > now and alarm.workflow_id not in skipped:
                return alarm.at if later is None else min(later, alarm.at)
        if len(upcoming) == limit:  # not found within the read: look again by then
            at = upcoming[-1].at
            return at if later is None else min(later, at)
        return later

    async def _wait(self, until: float | None) -> None:
        kick = self._kick
        if kick.is_set():
            return
        async with anyio.create_task_group() as tg:
            if until is not None:
                tg.start_soon(self._wake_at, until, tg.cancel_scope)
            await kick.wait()
            tg.cancel_scope.cancel()

    async def _wake_at(self, until: float, scope: anyio.CancelScope) -> None:
        await self._clock.sleep_until(until)
        scope.cancel()

    # --- one run ------------------------------------------------------------------

    async def _run_workflow(self, workflow_id: str) -> None:
        try:
            await self._run_one(workflow_id)
        except WriteConflictError:
            log.warning(
                "workflow %r: another worker took it over (or it was cancelled "
                "elsewhere); this worker stopped running it",
                workflow_id,
            )
        except StorageError as exc:
            self._defer(workflow_id, _RETRY_AFTER_STORAGE_ERROR, exc)
        except (HistoryDivergedError, EntryInProgressError) as exc:
            self._park(workflow_id, f"{type(exc).__name__}: {exc}")
        except WorkflowNameMismatchError as exc:
            self._park(workflow_id, str(exc))
        except WorkflowBusyError:
            # run elsewhere in this process (run_workflow on the same driver)
            self._defer(workflow_id, self.driver.poll_interval, None)
        except Exception as exc:
            log.exception("workflow %r: unexpected error", workflow_id)
            self._park(workflow_id, f"unexpected {type(exc).__name__}: {exc}")
        finally:
            self._runs.pop(workflow_id, None)
            self._kick.set()

    async def _run_one(self, workflow_id: str) -> None:
        keys = WorkflowKeys(workflow_id)
        raw = await self.driver.get(keys.meta)
        if raw is None:
            self._park(workflow_id, "it has an alarm but no stored workflow")
            return
        meta = WorkflowMeta.from_bytes(raw, keys.meta)
        if meta.state.is_final:  # a stale alarm: nothing will ever clear it else
            batch = Batch()
            batch.clear_alarm(workflow_id)
            await self.driver.write(batch)
            return
        workflow = None if meta.name is None else self._workflows.get(meta.name)
        if workflow is None:
            error = UnregisteredWorkflowError(
                meta.name, registered=tuple(self._workflows)
            )
            self._park(workflow_id, str(error))
            return
        run = Run(
            workflow_id,
            workflow.fn,
            None,
            self.driver,
            mode="live" if workflow.live else "yield",
            clock=self._clock,
            on_error=self._on_error,
            workflow_name=workflow.name,
        )
        run.evict_when_idle = workflow.live
        if self.lease is not None:
            lease = await self._take_lease(workflow_id, self.lease)
            if lease is None:
                return
            run.fence = (lease_key(workflow_id), lease.to_bytes())
            run.lease_until = lease.expires_at
        self._runs[workflow_id] = run
        if self._stopping:
            run.evict()
        try:
            # a failure, cancel or eviction is stored as such (on_error reported it)
            with contextlib.suppress(
                WorkflowFailedError, WorkflowCancelledError, EvictedError
            ):
                if self.lease is None:
                    await run.execute()
                else:
                    await self._execute_leased(run, self.lease)
        finally:
            if run.fence is not None:
                with anyio.CancelScope(shield=True):
                    await self._release(run.fence)

    async def _execute_leased(self, run: Run, seconds: float) -> None:
        """Run *run* while a task renews its lease; its errors propagate unwrapped."""
        error: Exception | None = None
        async with anyio.create_task_group() as renewals:
            renewals.start_soon(self._renew, run, seconds)
            try:
                await run.execute()
            except Exception as exc:  # re-raised below, outside the task group
                error = exc
            renewals.cancel_scope.cancel()
        if error is not None:
            raise error

    # --- leases (workers sharing a store) -----------------------------------------

    async def _take_lease(self, workflow_id: str, seconds: float) -> Lease | None:
        """Take the workflow's lease (token + 1) unless another worker holds it."""
        current, raw = await read_lease(self.driver, workflow_id)
        now = self._clock.now()
        if current is not None and current.is_held(now):
            await self._give_back(workflow_id)
            return None
        token = 0 if current is None else current.token
        lease = Lease(self.id, token + 1, now + seconds)
        batch = Batch()
        key = lease_key(workflow_id)
        batch.check(key, raw)
        batch.put(key, lease.to_bytes())
        try:
            await self.driver.write(batch)
        except WriteConflictError:
            return None  # another worker took it between our read and our write
        return lease

    async def _give_back(self, workflow_id: str) -> None:
        """Put a claimed alarm back where the workflow's current owner keeps it."""
        current, raw = await read_lease(self.driver, workflow_id)
        if current is None or not current.is_held(self._clock.now()):
            return  # released meanwhile: its owner stored the alarm it wants
        batch = Batch()
        batch.check(lease_key(workflow_id), raw)
        batch.set_alarm(workflow_id, current.expires_at)
        with contextlib.suppress(WriteConflictError):  # released meanwhile: see above
            await self.driver.write(batch)

    async def _renew(self, run: Run, seconds: float) -> None:
        """Extend the run's lease every third of it, for as long as it runs."""
        while True:
            await self._clock.sleep_until(self._clock.now() + seconds / 3)
            fence = run.fence
            if fence is None:
                return
            key, raw = fence
            lease = Lease.from_bytes(raw, key)
            until = self._clock.now() + seconds
            renewed = Lease(lease.owner, lease.token, until)
            try:
                if not await run.renew((key, renewed.to_bytes()), until):
                    return
            except WriteConflictError as exc:
                run.abort(exc)  # someone took it over: stop before writing more
                return

    async def _release(self, fence: tuple[bytes, bytes]) -> None:
        """Mark the lease free once the run stored its own alarm."""
        key, raw = fence
        lease = Lease.from_bytes(raw, key)
        batch = Batch()
        batch.check(key, raw)
        batch.put(key, Lease(None, lease.token, 0.0).to_bytes())
        with contextlib.suppress(StorageError):  # taken over or revoked: theirs now
            await self.driver.write(batch)

    def _park(self, workflow_id: str, reason: str) -> None:
        self._parked[workflow_id] = reason
        log.error("workflow %r parked: %s", workflow_id, reason)

    def _defer(self, workflow_id: str, seconds: float, exc: Exception | None) -> None:
        if self.lease is not None:
            seconds = self.lease  # its claim moved the alarm to the lease's end
        else:
            self._deferred[workflow_id] = self._clock.now() + seconds
        if exc is not None:
            log.warning("workflow %r: %s; retrying in %gs", workflow_id, exc, seconds)
