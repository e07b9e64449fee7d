"""check_replay and check_determinism: crash a workflow at every durable point.

Every run here uses a fresh `MemoryDriver` and a `TestClock` with autojump, so time
and storage are the same from one scenario to the next; only the crash point moves.
Rule: failures are reported by raising `AssertionError` naming the crash point and
the stored history there, so the checks work as plain test assertions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, TypeAlias

import anyio
import attrs

from durable import (
    Alarm,
    Batch,
    Driver,
    EntryInProgressError,
    HistoryDivergedError,
    MemoryDriver,
    Subscription,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowHandle,
    WorkflowResult,
    WorkflowState,
    run_workflow,
)

from ._clock import DEFAULT_START, TestClock
from ._faulty import FaultyDriver, SimulatedCrash
from ._records import Snapshot, rewritten_steps, snapshot

Workflow: TypeAlias = Callable[[WorkflowContext, object], Awaitable[object]]
Message: TypeAlias = tuple[str, object]
Mode: TypeAlias = Literal["live", "yield"]

WORKFLOW_ID: Final = "check-replay"
_MAX_RUNS: Final = 10_000  # yield-mode runs of one scenario before giving up


@attrs.frozen
class ReplayReport:
    """What `check_replay` checked: the reference outcome and the crash points."""

    outcome: tuple[object, ...]  # ("completed", output) or ("failed", name, message)
    writes: int  # write batches of the reference run = crash points checked
    history: str  # the reference run's final history, rendered

    @property
    def output(self) -> object:
        """The workflow's output (``None`` if it failed)."""
        return self.outcome[1] if self.outcome[0] == "completed" else None


class _AuditDriver(Driver):
    """Passes everything to *inner*, noting writes that re-record a completed step."""

    def __init__(self, inner: Driver, workflow_id: str) -> None:
        super().__init__(poll_interval=inner.poll_interval)
        self.inner = inner
        self.workflow_id = workflow_id
        self.reexecuted: list[str] = []

    async def write(self, batch: Batch) -> None:
        self.reexecuted += await rewritten_steps(self.inner, self.workflow_id, batch)
        await self.inner.write(batch)

    async def get(self, key: bytes) -> bytes | None:
        return await self.inner.get(key)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        return await self.inner.list_range(start, end, limit=limit, reverse=reverse)

    async def get_alarm(self, workflow_id: str) -> float | None:
        return await self.inner.get_alarm(workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        return await self.inner.list_alarms(until=until, limit=limit)

    def subscribe(self, workflow_id: str) -> Subscription:
        return self.inner.subscribe(workflow_id)

    def subscribe_alarms(self) -> Subscription:
        return self.inner.subscribe_alarms()

    async def close(self) -> None:
        pass


class _StalledError(Exception):
    """The live run waits for something that can never come."""


@attrs.define
class _Scenario:
    outcome: tuple[object, ...] | None = None
    error: BaseException | None = None  # what the resumed run raised unexpectedly
    writes: int = 0
    at_crash: Snapshot | None = None
    final: Snapshot | None = None
    reexecuted: list[str] = attrs.Factory(list)


async def _drive(
    handle: WorkflowHandle, clock: TestClock, mode: Mode
) -> tuple[object, ...]:
    """Run *handle* until the workflow ends; return its outcome."""
    for _ in range(_MAX_RUNS):
        try:
            if mode == "live":
                result = await _live(handle, clock)
            else:
                result = await handle.result()
        except WorkflowFailedError as exc:
            return ("failed", exc.error.name, exc.error.message)
        if result.state == WorkflowState.COMPLETED:
            return ("completed", result.output)
        until = result.sleep_until
        if until is None:
            raise _StalledError(
                f"the workflow waits for messages {list(result.waiting_for or ())} "
                "that it was never sent; pass them in messages=[(name, body), ...]"
            )
        clock.jump(max(0.0, until - clock.now()))
    raise _StalledError(f"the workflow did not finish in {_MAX_RUNS} yield-mode runs")


async def _live(handle: WorkflowHandle, clock: TestClock) -> WorkflowResult:
    stalled = clock._stalled = anyio.Event()
    outcome: list[WorkflowResult] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await stalled.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            outcome.append(await handle.result())
        except Exception as exc:  # raised below, not wrapped in an exception group
            failure.append(exc)
        finally:
            tg.cancel_scope.cancel()
    clock._stalled = None
    if failure:
        raise failure[0]
    if not outcome:
        raise _StalledError(
            "every task waits and no deadline is pending: the workflow waits for a "
            "message that it was never sent (pass it in messages=[(name, body), ...])"
        )
    return outcome[0]


async def _scenario(
    workflow: Workflow,
    input: object,
    messages: Sequence[Message],
    mode: Mode,
    fail_at: int | None,
    store: MemoryDriver | None = None,
) -> _Scenario:
    """One run crashed at write *fail_at* (or not), resumed until the end."""
    found = _Scenario()
    fresh = store is None
    async with TestClock(DEFAULT_START, autojump=True) as clock:
        store = store or MemoryDriver()
        audit = _AuditDriver(store, WORKFLOW_ID)
        if fresh:
            sender = run_workflow(
                WORKFLOW_ID, workflow, input, driver=store, clock=clock
            )
            for name, body in messages:
                await sender.message(name, body)
        faulty = FaultyDriver(audit, fail_at=fail_at, mode="crash")
        try:
            try:
                handle = run_workflow(
                    WORKFLOW_ID,
                    workflow,
                    input,
                    driver=faulty,
                    mode=mode,
                    clock=clock,
                )
                found.outcome = await _drive(handle, clock, mode)
            except* SimulatedCrash:
                found.at_crash = await snapshot(store, WORKFLOW_ID)
            found.writes = faulty.writes
            if found.outcome is None:
                handle = run_workflow(
                    WORKFLOW_ID,
                    workflow,
                    input,
                    driver=audit,
                    mode=mode,
                    clock=clock,
                )
                found.outcome = await _drive(handle, clock, mode)
        except* (HistoryDivergedError, EntryInProgressError, _StalledError) as group:
            found.error = group.exceptions[0]
        found.final = await snapshot(store, WORKFLOW_ID)
        found.reexecuted = audit.reexecuted
    return found


def _report(title: str, k: int | None, found: _Scenario, details: str) -> str:
    lines = [title]
    if k is not None:
        lines.append(
            f"  crash point: write {k} (the run died before that batch was written)"
        )
    lines.append(f"  {details}")
    if found.at_crash is not None:
        lines.append("  history at the crash point:")
        lines.append(found.at_crash.render())
    return "\n".join(lines)


async def check_replay(
    workflow: Workflow,
    input: object,
    *,
    messages: Sequence[Message] | None = None,
    mode: Literal["live", "yield"] = "live",
) -> ReplayReport:
    """Crash *workflow* at every durable point, resume it, and check it converges.

    A reference run records the outcome and counts the write batches. Then for every
    write k a fresh run "crashes" just before write k and a new run resumes on what
    was stored. Each must reach the same outcome, with no `HistoryDivergedError`, no
    step body run again after its result was recorded, and every message in
    *messages* (``(name, body)`` pairs, sent before the first run) consumed exactly
    once. Finally `check_determinism` runs. Sleeps take no real time (`TestClock`).

    Raises:
        AssertionError: a check failed; the message names the crash point and the
            history stored there.

    Example:
        report = await durable.testing.check_replay(order, "order-1")
    """
    messages = list(messages or ())
    reference = await _scenario(workflow, input, messages, mode, None)
    if reference.error is not None:
        raise AssertionError(
            _report(
                "the reference run (no crash) failed",
                None,
                reference,
                repr(reference.error),
            )
        )
    if reference.reexecuted:
        raise AssertionError(
            _report(
                "the reference run (no crash) ran completed steps again",
                None,
                reference,
                f"steps recorded twice: {reference.reexecuted}",
            )
        )
    if reference.final is None or reference.outcome is None:  # pragma: no cover
        raise RuntimeError("the reference run left no outcome")
    for k in range(1, reference.writes + 1):
        found = await _scenario(workflow, input, messages, mode, k)
        problem = None
        if found.error is not None:
            problem = f"resuming raised {type(found.error).__name__}: {found.error}"
        elif found.reexecuted:
            problem = (
                "a step body ran again after its result was recorded: "
                f"{', '.join(found.reexecuted)}"
            )
        elif found.outcome != reference.outcome:
            problem = f"outcome {found.outcome!r}, but the run without a crash gave {reference.outcome!r}"
        elif found.final is not None and (
            found.final.consumed != reference.final.consumed
            or found.final.unconsumed != reference.final.unconsumed
        ):
            problem = (
                "messages were not delivered exactly once: consumed "
                f"{list(found.final.consumed)} with {found.final.unconsumed} left, "
                f"but the run without a crash consumed {list(reference.final.consumed)} "
                f"with {reference.final.unconsumed} left"
            )
        if problem is not None:
            raise AssertionError(
                _report(
                    "check_replay: the workflow did not survive a crash",
                    k,
                    found,
                    problem,
                )
            )
    await check_determinism(workflow, input, messages=messages, mode=mode)
    return ReplayReport(reference.outcome, reference.writes, reference.final.render())


async def _copy(source: MemoryDriver) -> MemoryDriver:
    copy = MemoryDriver(poll_interval=source.poll_interval)
    batch = Batch()
    for key, value in await source.list_range(b"", b"\xff"):
        batch.put(key, value)
    for alarm in await source.list_alarms():
        batch.set_alarm(alarm.workflow_id, alarm.at)
    if batch:
        await copy.write(batch)
    return copy


async def check_determinism(
    workflow: Workflow,
    input: object,
    *,
    messages: Sequence[Message] | None = None,
    mode: Literal["live", "yield"] = "live",
) -> None:
    """Replay *workflow* twice over one recorded history and compare what it asks for.

    The history is a full run's, minus its last write, so each replay runs all the
    workflow code again. Code that branches on ``time.time()``, ``random``, globals
    or the environment outside steps asks for other entries; the report names the
    first that differs. (Set ordering that changes only between processes, through
    hash randomization, needs ``PYTHONHASHSEED`` varied across test runs.)

    Raises:
        AssertionError: the replays diverged from the history or from each other.
    """
    messages = list(messages or ())
    counted = await _scenario(workflow, input, messages, mode, None)
    last = counted.writes
    store = MemoryDriver()
    async with TestClock(DEFAULT_START, autojump=True) as clock:
        sender = run_workflow(WORKFLOW_ID, workflow, input, driver=store, clock=clock)
        for name, body in messages:
            await sender.message(name, body)
        faulty = FaultyDriver(store, fail_at=last, mode="crash")
        try:
            handle = run_workflow(
                WORKFLOW_ID,
                workflow,
                input,
                driver=faulty,
                mode=mode,
                clock=clock,
            )
            await _drive(handle, clock, mode)
        except* SimulatedCrash:
            pass
        except* (HistoryDivergedError, EntryInProgressError, _StalledError) as group:
            raise AssertionError(
                f"check_determinism: the recording run failed: {group.exceptions[0]}"
            ) from None
    recorded = await snapshot(store, WORKFLOW_ID)
    replays = []
    for _ in range(2):
        found = await _scenario(
            workflow, input, messages, mode, None, await _copy(store)
        )
        found.at_crash = recorded
        if found.error is not None:
            raise AssertionError(
                _report(
                    "check_determinism: replaying the recorded history diverged",
                    last,
                    found,
                    f"{type(found.error).__name__}: {found.error}",
                )
            )
        replays.append(found)
    first, second = (found.final.entries if found.final else () for found in replays)
    for index, (a, b) in enumerate(zip(first, second, strict=False)):
        if a[:2] != b[:2]:
            raise AssertionError(
                f"check_determinism: two replays of one history asked for different "
                f"entries; the first difference is entry {index}: {a[0]} ({a[1]}) "
                f"versus {b[0]} ({b[1]})\n  recorded history:\n{recorded.render()}"
            )
    if len(first) != len(second):
        raise AssertionError(
            f"check_determinism: two replays of one history recorded {len(first)} and "
            f"{len(second)} entries\n  recorded history:\n{recorded.render()}"
        )
