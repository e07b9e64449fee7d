"""run_workflow and WorkflowHandle: how applications start, drive and steer workflows.

A handle performs no I/O until used. ``await handle.result()`` runs the workflow in the
calling task; ``async with handle`` runs it in the background for the block and evicts
it gracefully if the block ends first. With ``driver=None`` every handle of the process
shares one default `LevelDBDriver`, opened while any of them needs it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol, Self, final

import anyio

from ._clock import SYSTEM_CLOCK, Clock
from ._codec import dump_value
from ._drivers import Batch, Driver, LevelDBDriver
from ._engine._queue import put_message
from ._engine._run import ErrorHook, Mode, Run, WorkflowFn, active_run, final_outcome
from ._errors import (
    StorageError,
    UnknownWorkflowError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowFinishedError,
)
from ._history import FAILED, RETRYING, History, WorkflowMeta
from ._inspect import (
    DEFAULT_PAGE_SIZE,
    HistoryNode,
    WorkflowInfo,
    WorkflowPage,
    get_history,
    get_info,
    list_page,
)
from ._layout import WorkflowKeys
from ._lease import revoke_lease
from ._replay_from import StepPath, replay_from
from ._types import WorkflowResult, WorkflowState
from ._workflow import workflow_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType


class _SharedDefaultDriver:
    """The process-wide default store, open while at least one user needs it."""

    def __init__(self) -> None:
        self._driver: LevelDBDriver | None = None
        self._users = 0

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Driver]:
        if self._driver is None:
            self._driver = LevelDBDriver()
        self._users += 1
        try:
            yield self._driver
        finally:
            self._users -= 1
            if self._users == 0:
                driver, self._driver = self._driver, None
                with anyio.CancelScope(shield=True):
                    await driver.close()


_DEFAULT_DRIVER = _SharedDefaultDriver()


def run_workflow(
    workflow_id: str,
    fn: WorkflowFn,
    input: object,
    *,
    driver: Driver | None = None,
    mode: Mode = "live",
    on_error: ErrorHook | None = None,
    clock: Clock | None = None,
) -> WorkflowHandle:
    """Create a handle for workflow *workflow_id* running ``fn(ctx, input)``; no I/O.

    The input is stored on the first run; later runs replay with the stored input.
    ``driver=None`` uses the default LevelDB store (``$DURABLE_STORE``, else
    ``./.durable``). In ``"live"`` mode a run lasts until the workflow ends, waiting
    in memory; in ``"yield"`` mode it returns at the first long wait.

    Example:
        async with durable.MemoryDriver() as driver:
            result = await durable.run_workflow("order-1", order, "order-1", driver=driver).result()
    """
    if not isinstance(workflow_id, str) or not workflow_id:  # type: ignore[redundant-expr]
        raise ValueError(f"workflow_id must be a non-empty str, not {workflow_id!r}")
    if not callable(fn):
        raise TypeError("fn must be an async function taking (ctx, input)")
    if mode not in ("live", "yield"):
        raise ValueError(f'mode must be "live" or "yield", not {mode!r}')
    return WorkflowHandle(
        workflow_id, fn, input, driver, mode, on_error, clock or SYSTEM_CLOCK
    )


async def replay_from_step(
    workflow_id: str, step: StepPath, *, driver: Driver | None = None
) -> None:
    """Delete the workflow's history from *step* on and schedule it to run again.

    *step* is a step's name in the workflow body, or its path: the names of the
    enclosing join, race, try and loop entries and branches, with an int for a loop
    iteration, e.g. ``("fanout", "branch-a", "charge")`` or ``("batches", 3, "fetch")``.
    In one atomic write the step and everything recorded after it (in its scope and
    in every enclosing one) are deleted, the enclosing entries are made pending
    again, messages consumed by deleted ``queue.next`` calls go back to the queue,
    and the workflow becomes ``pending`` with its alarm at now. Entries recorded
    before the step (steps, sleeps, consumed messages) stay. Run the workflow
    afterwards (``run_workflow(...).result()``) to re-execute the step.

    Raises:
        UnknownWorkflowError: the store holds no such workflow.
        ReplayTargetError: *step* is not a recorded step (the message says why).
        WorkflowBusyError: the workflow is running in this process.
        WorkflowCancelledError: the workflow was cancelled.
    """
    if driver is not None:
        await replay_from(driver, workflow_id, step, SYSTEM_CLOCK)
        return
    async with _DEFAULT_DRIVER.use() as default:
        await replay_from(default, workflow_id, step, SYSTEM_CLOCK)


class _Owner(Protocol):
    """What runs a handle's workflow when the handle does not (a `Worker`)."""

    def unpark(self, workflow_id: str) -> None:
        """Let the owner try the workflow again."""


async def list_workflows(
    *,
    driver: Driver | None = None,
    state: WorkflowState | str | None = None,
    name: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> WorkflowPage:
    """List stored workflows, by state then id; optionally only *state* or *name*.

    Returns at most *limit* (1 to 1000) summaries and a ``cursor`` for the next
    page (``None`` on the last one). Each page costs O(*limit*) reads, however
    many workflows the store holds.

    Raises:
        ValueError: an unknown state, a bad limit, or a cursor of another listing.
    """
    if driver is not None:
        return await list_page(
            driver, state=state, name=name, limit=limit, cursor=cursor
        )
    async with _DEFAULT_DRIVER.use() as default:
        return await list_page(
            default, state=state, name=name, limit=limit, cursor=cursor
        )


@final
class WorkflowHandle:
    """Runs (or, from a `Worker`, follows) and steers one workflow.

    Made by `run_workflow`, which runs the workflow in ``result()`` or ``async
    with``, or by `Worker.start`/`Worker.handle`, whose worker runs it: then
    ``result()`` waits for the workflow to finish.
    """

    def __init__(
        self,
        workflow_id: str,
        fn: WorkflowFn | None,
        input: object,
        driver: Driver | None,
        mode: Mode,
        on_error: ErrorHook | None,
        clock: Clock,
        *,
        owner: _Owner | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self._owner = owner
        self._fn = fn
        self._input = input
        self._driver = driver
        self._mode: Mode = mode
        self._on_error = on_error
        self._clock = clock
        self._run: Run | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._background_done: anyio.Event | None = None
        self._outcome: WorkflowResult | Exception | None = None

    @asynccontextmanager
    async def _open_driver(self) -> AsyncIterator[Driver]:
        if self._driver is not None:
            yield self._driver
        else:
            async with _DEFAULT_DRIVER.use() as driver:
                yield driver

    async def _run_once(self) -> WorkflowResult:
        if self._fn is None:
            raise RuntimeError("a worker's handle does not run its workflow")
        async with self._open_driver() as driver:
            run = Run(
                self.workflow_id,
                self._fn,
                self._input,
                driver,
                mode=self._mode,
                clock=self._clock,
                on_error=self._on_error,
                workflow_name=workflow_name(self._fn),
            )
            self._run = run
            try:
                return await run.execute()
            finally:
                self._run = None

    # --- running ------------------------------------------------------------------

    async def result(self) -> WorkflowResult:
        """Wait for the run: the background run inside ``async with``, else run now.

        Raises:
            WorkflowFailedError: the workflow failed (``.error`` says how).
            WorkflowCancelledError: the workflow was cancelled.
            EvictedError: the run was evicted before it finished.
            HistoryDivergedError: the code no longer matches the recorded history.
            EntryInProgressError: the workflow code missed an ``await``.
            UnknownWorkflowError: (a worker's handle) the store holds no such workflow.
        """
        if self._owner is not None:
            return await self._wait_until_finished()
        if self._background_done is None:
            return await self._run_once()
        await self._background_done.wait()
        if isinstance(self._outcome, Exception):
            raise self._outcome
        if self._outcome is None:
            raise RuntimeError("the background run ended without an outcome")
        return self._outcome

    async def _wait_until_finished(self) -> WorkflowResult:
        """A worker's handle: wait for a final state (every run notifies on one).

        A store that fails meanwhile (a database restarting) is read again after a
        pause, as the worker itself retries: the workflow goes on, so does the wait.
        """
        async with self._open_driver() as driver:
            key = WorkflowKeys(self.workflow_id).meta
            with driver.subscribe(self.workflow_id) as subscription:
                while True:
                    try:
                        meta = await self._load_meta(driver)
                    except StorageError:
                        await self._clock.sleep_until(
                            self._clock.now() + max(driver.poll_interval, 0.1)
                        )
                        continue
                    finished = final_outcome(self.workflow_id, meta, key)
                    if finished is not None:
                        return finished
                    await subscription.wait()

    async def _background(self) -> None:
        if self._background_done is None:
            raise RuntimeError("the background run started outside `async with`")
        try:
            self._outcome = await self._run_once()
        except Exception as exc:
            self._outcome = exc
        finally:
            self._background_done.set()

    async def __aenter__(self) -> Self:
        if self._owner is not None:
            raise RuntimeError(
                "a worker runs this workflow; await handle.result() to wait for it"
            )
        if self._task_group is not None:
            raise RuntimeError("this handle's `async with` block is already open")
        self._background_done = anyio.Event()
        self._outcome = None
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._background)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, done = self._task_group, self._background_done
        if task_group is None or done is None:
            return
        try:
            if not done.is_set():
                self.evict()
                with anyio.CancelScope(shield=True):
                    await done.wait()  # a running step finishes and is recorded
        finally:
            self._task_group = None
            self._background_done = None
            await task_group.__aexit__(None, None, None)

    # --- steering -----------------------------------------------------------------

    async def message(self, name: str, data: object) -> None:
        """Durably enqueue message *name* with body *data* for the workflow.

        The message is stored before this returns, whether or not the workflow runs
        (before it starts, while it sleeps, while no process runs it), and a run
        waiting for *name* in this process wakes at once.

        Raises:
            UnstorableValueError: *data* cannot be stored.
            WorkflowFinishedError: the workflow completed and reads no more messages.
            WorkflowCancelledError: the workflow was cancelled.
        """
        if not isinstance(name, str):
            raise TypeError(f"a message name must be a str, not {type(name).__name__}")
        body = dump_value(data, f"message {name!r} to workflow {self.workflow_id!r}")
        keys = WorkflowKeys(self.workflow_id)
        async with self._open_driver() as driver:
            raw = await driver.get(keys.meta)
            meta = None if raw is None else WorkflowMeta.from_bytes(raw, keys.meta)
            batch = Batch()
            if meta is not None:
                if meta.state == WorkflowState.CANCELLED:
                    raise WorkflowCancelledError(self.workflow_id)
                if meta.state == WorkflowState.COMPLETED:
                    raise WorkflowFinishedError(self.workflow_id, str(meta.state))
                waiting = meta.waiting_for
                if meta.state in (WorkflowState.RUNNING, WorkflowState.PENDING) or (
                    waiting is not None and (not waiting or name in waiting)
                ):
                    # now due; a run may be about to sleep for it, after its last
                    # look at the queue (a running workflow's alarm is now anyway)
                    batch.set_alarm(self.workflow_id, self._clock.now())
            elif active_run(driver, self.workflow_id) is not None:
                # its first run is going on here and may be about to sleep for it
                batch.set_alarm(self.workflow_id, self._clock.now())
            put_message(batch, keys, self._clock, name, body)
            batch.notify(self.workflow_id)
            await driver.write(batch)

    def _active(self, driver: Driver) -> Run | None:
        return self._run or active_run(driver, self.workflow_id)

    def evict(self) -> None:
        """Ask this process's run to stop at its next durable point and flush."""
        run = self._run
        if run is None and self._driver is not None:
            run = active_run(self._driver, self.workflow_id)
        if run is not None:
            run.evict()

    async def wake(self) -> None:
        """Set the workflow's alarm to now; a run in this process re-checks its waits.

        Raises:
            UnknownWorkflowError: the store holds no such workflow.
        """
        async with self._open_driver() as driver:
            meta = await self._load_meta(driver)
            if not meta.state.is_final:
                batch = Batch()
                batch.set_alarm(self.workflow_id, self._clock.now())
                batch.notify(self.workflow_id)
                await driver.write(batch)
            run = self._active(driver)
            if run is not None:
                run.wake()
        if self._owner is not None:
            self._owner.unpark(self.workflow_id)

    async def recover(self) -> None:
        """Reset a failed workflow's failed steps and error and schedule it to run again.

        The steps that failed it run again with fresh attempts (a failure the
        workflow caught and got past stays recorded); completed steps do not. Does nothing unless the workflow is ``failed``.

        Raises:
            UnknownWorkflowError: the store holds no such workflow.
        """
        async with self._open_driver() as driver:
            history = await History.load(driver, self.workflow_id)
            meta = history.meta
            if meta is None:
                raise UnknownWorkflowError(self.workflow_id)
            if meta.state != WorkflowState.FAILED:
                return
            keys = history.keys
            batch = Batch()
            for entry in history.entries.values():
                # a failure the workflow caught and went past stays: re-running it
                # could send the code down another path than its recorded history
                if entry.status == FAILED and not history.has_later_entry(entry):
                    entry.status = RETRYING
                    entry.attempts = 0
                    entry.retry_at = None
                    entry.failure = None
                    batch.put(keys.entry_meta + entry.location, entry.meta_record())
            now = self._clock.now()
            meta.state = WorkflowState.PENDING
            meta.error = None
            meta.updated_at = now
            meta.write(batch, keys)
            batch.set_alarm(self.workflow_id, now)
            batch.notify(self.workflow_id)
            await driver.write(batch)
        if self._owner is not None:
            self._owner.unpark(self.workflow_id)

    async def replay_from(self, step: StepPath) -> None:
        """Delete the history from *step* on and schedule the workflow to run again.

        See `replay_from_step`; run it with `result()` afterwards.

        Raises:
            UnknownWorkflowError: the store holds no such workflow.
            ReplayTargetError: *step* is not a recorded step (the message says why).
            WorkflowBusyError: the workflow is running in this process.
            WorkflowCancelledError: the workflow was cancelled.
        """
        async with self._open_driver() as driver:
            if self._active(driver) is not None:
                raise WorkflowBusyError(self.workflow_id)
            await replay_from(driver, self.workflow_id, step, self._clock)
        if self._owner is not None:
            self._owner.unpark(self.workflow_id)

    async def cancel(self) -> None:
        """Cancel the workflow for good: state ``cancelled``, alarm cleared.

        A run in this process is stopped at once: running steps are cancelled and
        their results are not recorded. A completed workflow stays completed.
        """
        async with self._open_driver() as driver:
            run = self._active(driver)
            if run is not None:
                await run.started.wait()
                await run.cancel()
                return
            keys = WorkflowKeys(self.workflow_id)
            raw = await driver.get(keys.meta)
            now = self._clock.now()
            if raw is None:
                meta = WorkflowMeta(
                    WorkflowState.CANCELLED,
                    created_at=now,
                    updated_at=now,
                    name=workflow_name(self._fn),
                )
            else:
                meta = WorkflowMeta.from_bytes(raw, keys.meta)
                if meta.state in (WorkflowState.COMPLETED, WorkflowState.CANCELLED):
                    return
                meta.cancel(now)
            batch = Batch()
            meta.write(batch, keys)
            # a worker of another process may run it: its next write will fail
            await revoke_lease(driver, batch, self.workflow_id)
            batch.clear_alarm(self.workflow_id)
            batch.notify(self.workflow_id)
            await driver.write(batch)

    # --- reading ------------------------------------------------------------------

    async def _load_meta(self, driver: Driver) -> WorkflowMeta:
        keys = WorkflowKeys(self.workflow_id)
        raw = await driver.get(keys.meta)
        if raw is None:
            raise UnknownWorkflowError(self.workflow_id)
        return WorkflowMeta.from_bytes(raw, keys.meta)

    async def get_state(self) -> WorkflowState:
        """Read the workflow's state from the store (``pending`` if never run)."""
        async with self._open_driver() as driver:
            try:
                return (await self._load_meta(driver)).state
            except UnknownWorkflowError:
                return WorkflowState.PENDING

    async def get_info(self) -> WorkflowInfo:
        """Read the workflow's name, state, input, output, error and next alarm.

        Raises:
            UnknownWorkflowError: the store holds no such workflow.
        """
        async with self._open_driver() as driver:
            return await get_info(driver, self.workflow_id)

    async def get_history(self) -> tuple[HistoryNode, ...]:
        """Read the recorded history as a tree of `HistoryNode`, in call order.

        Raises:
            UnknownWorkflowError: the store holds no such workflow.
        """
        async with self._open_driver() as driver:
            return await get_history(driver, self.workflow_id)

    async def get_output(self) -> object:
        """Read the output of a completed workflow from the store (else ``None``)."""
        async with self._open_driver() as driver:
            try:
                meta = await self._load_meta(driver)
            except UnknownWorkflowError:
                return None
            return meta.load_output(WorkflowKeys(self.workflow_id).meta)
