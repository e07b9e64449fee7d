"""join and race: concurrent branches, each in its own history scope.

A join or race entry is a scope whose children are *branch* entries, one per branch
in the order given; each branch entry is in turn the scope of that branch's calls,
so branch entries never collide. A completed branch records its output and is not
run again; a failed one is recorded for inspection but runs again on replay, where
its recorded step failures replay as the same exceptions (so ``recover()`` can fix
a branch by resetting its failed step).

Yield mode: a branch that must wait stops; the others go on; once all have settled
the join or race yields with the earliest deadline and every awaited message name.

Rule: branches run in an anyio task group; nothing but anyio cancellation escapes a
branch task, every other outcome is collected and settled in branch order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

import anyio
import attrs

from .._codec import load_value, store_value
from .._errors import (
    EntryInProgressError,
    HistoryDivergedError,
    JoinError,
    RaceError,
    StorageError,
)
from .._history import CANCELLED, COMPLETED, FAILED, PENDING, Entry, StepFailure
from .._keys import encode_int
from .._types import RaceResult
from ._queue import restore_consumed
from ._run import Run, describe_exception, merge_waits
from ._scope import Scope
from ._signals import Evicted, StopReplay, Suspend

if TYPE_CHECKING:
    from ._context import WorkflowContext

JOIN: Final = "join"
RACE: Final = "race"
BRANCH: Final = "branch"

BranchFn = Callable[["WorkflowContext"], Awaitable[object]]
MakeContext = Callable[[Scope], "WorkflowContext"]


@attrs.define
class _Outcome:
    value: object = None
    error: BaseException | None = None  # a failure of the branch's code
    signal: BaseException | None = None  # Suspend, Evicted, divergence: not a failure
    done: bool = False


async def _run_branch(
    scope: Scope,
    entry: Entry,
    name: str,
    fn: BranchFn,
    make_context: MakeContext,
    what: str,
    running: _Running,
) -> _Outcome:
    run = scope.run
    if entry.status == COMPLETED:
        if run.rolling_back:
            await _replay_for_handlers(run, entry, fn, make_context)
        return _Outcome(load_value(entry.data, entry.location), done=True)  # type: ignore[arg-type]
    branch_scope = Scope(run, entry.location)
    try:
        value = await fn(make_context(branch_scope))
        branch_scope.end()
    except (
        StopReplay,
        Suspend,
        Evicted,
        HistoryDivergedError,
        EntryInProgressError,
        StorageError,
    ) as exc:
        return _Outcome(signal=exc)
    except Exception as exc:
        entry.status = FAILED
        entry.failure = StepFailure("error", describe_exception(exc))
        entry.finished_at = run.clock.now()
        run.record(entry)
        return _Outcome(error=exc)
    finally:
        branch_scope.abandon()
        running.branch_ended()
    try:
        entry.data, decoded = store_value(value, f"branch {name!r} of {what}")
    except TypeError as exc:
        return _Outcome(error=exc)
    entry.status = COMPLETED
    entry.failure = None
    entry.finished_at = run.clock.now()
    run.record(entry)
    return _Outcome(decoded, done=True)


async def _replay_for_handlers(
    run: Run, entry: Entry, fn: BranchFn, make_context: MakeContext
) -> None:
    """Rollback mode: replay a finished branch only to register its rollback handlers.

    Its recorded value stands; whatever the replay ends with is of no interest.
    """
    branch_scope = Scope(run, entry.location)
    try:
        await fn(make_context(branch_scope))
    except (StopReplay, Exception):  # noqa: S110 - the recorded outcome stands
        pass
    finally:
        branch_scope.abandon()


def _begin_branches(
    scope: Scope, entry: Entry, branches: Mapping[str, BranchFn]
) -> tuple[Scope, list[tuple[str, Entry, BranchFn]]]:
    run = scope.run
    if entry.status == PENDING:
        # recorded (with the next write, before any branch's) while unfinished, so a
        # replay of renamed or removed branches or a renamed join or race whose
        # branches recorded entries diverges instead of running them afresh
        run.record(entry)
    inner = Scope(run, entry.location)
    plan = []
    for branch_name, fn in branches.items():
        branch_entry, _ = inner.begin(branch_name, BRANCH)
        if branch_entry.status == PENDING:
            run.record(branch_entry)
        plan.append((branch_name, branch_entry, fn))
    inner.end()  # every branch is begun: a removed one diverges before any runs
    return inner, plan


class _Running:
    """Keeps `Run.tasks` true while a join or race waits for its branches.

    The parent only waits, so it must not count as running workflow code: else
    `Run.wait` never sees every task waiting, and a live run whose branches all wait
    neither records ``sleeping`` nor flushes its alarm. The branches that will run
    are counted before any starts, in place of the parent; each that ends is taken
    off, but the last hands its count back to the parent, so the count never dips
    below the tasks that will still run workflow code.
    """

    __slots__ = ("left", "run")

    def __init__(self, run: Run, plan: list[tuple[str, Entry, BranchFn]]) -> None:
        self.run = run
        self.left = sum(1 for _, entry, _ in plan if entry.status != COMPLETED)
        if self.left:
            run.tasks += self.left - 1

    def branch_ended(self) -> None:
        self.left -= 1
        if self.left:
            self.run.tasks -= 1


def _raise_signals(outcomes: Mapping[str, _Outcome]) -> None:
    """Re-raise what must stop the run, in a fixed order; merge waits into one."""
    signals = [o.signal for o in outcomes.values() if o.signal is not None]
    for kind in (StorageError, HistoryDivergedError, EntryInProgressError, StopReplay):
        for signal in signals:
            if isinstance(signal, kind):
                raise signal
    waits = [s for s in signals if isinstance(s, Suspend | Evicted)]
    if not waits:
        return
    # a list: merge_waits iterates its argument twice
    merged = merge_waits([(s.until, s.waiting_for) for s in waits])
    if any(isinstance(s, Evicted) for s in waits):
        if any(s.until is None and s.waiting_for is None for s in waits):
            raise Evicted  # a branch was evicted while running: the run is due now
        # evicted while waiting: keep every branch's deadline and message names,
        # not only the first branch's, or the run would miss the others' wake-ups
        raise Evicted(*merged)
    raise Suspend(*merged)


async def join(
    scope: Scope,
    entry: Entry,
    name: str,
    branches: Mapping[str, BranchFn],
    make_context: MakeContext,
) -> dict[str, object]:
    """Run every branch concurrently; return their values or raise `JoinError`."""
    run = scope.run
    inner, plan = _begin_branches(scope, entry, branches)
    outcomes: dict[str, _Outcome] = {}
    running = _Running(run, plan)
    what = f"join {name!r}"

    async def one(branch_name: str, branch_entry: Entry, fn: BranchFn) -> None:
        outcomes[branch_name] = await _run_branch(
            inner, branch_entry, branch_name, fn, make_context, what, running
        )

    async with anyio.create_task_group() as tg:
        for branch_name, branch_entry, fn in plan:
            tg.start_soon(one, branch_name, branch_entry, fn)
    ordered = {branch_name: outcomes[branch_name] for branch_name, _, _ in plan}
    _raise_signals(ordered)
    errors = {b: o.error for b, o in ordered.items() if o.error is not None}
    entry.status = FAILED if errors else COMPLETED
    entry.finished_at = run.clock.now()
    run.record(entry)
    await run.flush()
    if errors:
        raise JoinError(name, errors)
    return {b: o.value for b, o in ordered.items()}


async def race(
    scope: Scope,
    entry: Entry,
    name: str,
    branches: Mapping[str, BranchFn],
    make_context: MakeContext,
) -> RaceResult:
    """Run the branches concurrently; the first to succeed wins, the rest are cancelled."""
    run = scope.run
    if entry.status == COMPLETED:
        winner = str(entry.data)
        index = run.history.name_index.get(winner)
        branch = None
        if index is not None:
            branch = run.history.entries.get(entry.location + encode_int(index))
        if branch is None or branch.status != COMPLETED:
            raise HistoryDivergedError(
                run.workflow_id,
                scope.describe(entry.location),
                expected=f"a recorded winner {winner!r}",
                found="no recorded output for it",
            )
        if run.rolling_back:  # the winner and the losers may have handlers to run
            for branch_name, fn in branches.items():
                branch_index = run.history.name_index.get(branch_name)
                if branch_index is None:
                    continue
                location = entry.location + encode_int(branch_index)
                branch_entry = run.history.entries.get(location)
                if branch_entry is not None:
                    await _replay_for_handlers(run, branch_entry, fn, make_context)
        return RaceResult(winner, load_value(branch.data, branch.location))  # type: ignore[arg-type]
    inner, plan = _begin_branches(scope, entry, branches)
    outcomes: dict[str, _Outcome] = {}
    cancel_scopes: dict[str, anyio.CancelScope] = {}
    running = _Running(run, plan)
    what = f"race {name!r}"
    won: list[str] = []

    async def one(branch_name: str, branch_entry: Entry, fn: BranchFn) -> None:
        with cancel_scopes[branch_name]:
            outcome = await _run_branch(
                inner, branch_entry, branch_name, fn, make_context, what, running
            )
            outcomes[branch_name] = outcome
            if outcome.done and not won:
                won.append(branch_name)
                for other, cancel_scope in cancel_scopes.items():
                    if other != branch_name:
                        cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for branch_name, branch_entry, fn in plan:
            cancel_scopes[branch_name] = anyio.CancelScope()
            tg.start_soon(one, branch_name, branch_entry, fn)
    if won:
        winner = won[0]
        for branch_name, branch_entry, _ in plan:
            if branch_name != winner:
                restore_consumed(run, branch_entry.location)
            outcome = outcomes.get(branch_name)
            # cancelled, or stopped to wait (yield mode) or by eviction: it lost
            if branch_name != winner and (
                outcome is None or outcome.signal is not None
            ):
                branch_entry.status = CANCELLED
                branch_entry.finished_at = run.clock.now()
                run.record(branch_entry)
        entry.data = winner
        entry.status = COMPLETED
        entry.finished_at = run.clock.now()
        run.record(entry)
        await run.flush()
        return RaceResult(winner, outcomes[winner].value)
    ordered = {b: outcomes[b] for b, _, _ in plan if b in outcomes}
    _raise_signals(ordered)
    errors: dict[str, BaseException] = {
        b: o.error for b, o in ordered.items() if o.error is not None
    }
    entry.status = FAILED
    entry.finished_at = run.clock.now()
    run.record(entry)
    await run.flush()
    raise RaceError(name, errors)
