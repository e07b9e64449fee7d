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
from .._history import COMPLETED, FAILED, Entry, StepFailure
from .._keys import encode_int
from .._types import RaceResult
from ._run import describe_exception, merge_waits
from ._scope import Scope
from ._signals import Evicted, Suspend

if TYPE_CHECKING:
    from ._context import WorkflowContext

JOIN: Final = "join"
RACE: Final = "race"
BRANCH: Final = "branch"
CANCELLED: Final = "cancelled"

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
) -> _Outcome:
    run = scope.run
    if entry.status == COMPLETED:
        return _Outcome(load_value(entry.data, entry.location), done=True)  # type: ignore[arg-type]
    branch_scope = Scope(run, entry.location)
    run.tasks += 1
    try:
        value = await fn(make_context(branch_scope))
        branch_scope.end()
    except (
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
        run.tasks -= 1
    try:
        entry.data, decoded = store_value(value, f"branch {name!r} of {what}")
    except TypeError as exc:
        return _Outcome(error=exc)
    entry.status = COMPLETED
    entry.failure = None
    entry.finished_at = run.clock.now()
    run.record(entry)
    return _Outcome(decoded, done=True)


def _begin_branches(
    scope: Scope, entry: Entry, branches: Mapping[str, BranchFn]
) -> tuple[Scope, list[tuple[str, Entry, BranchFn]]]:
    inner = Scope(scope.run, entry.location)
    plan = []
    for branch_name, fn in branches.items():
        branch_entry, _ = inner.begin(branch_name, BRANCH)
        plan.append((branch_name, branch_entry, fn))
    return inner, plan


def _raise_signals(outcomes: Mapping[str, _Outcome]) -> None:
    """Re-raise what must stop the run, in a fixed order; merge waits into one."""
    signals = [o.signal for o in outcomes.values() if o.signal is not None]
    for kind in (StorageError, HistoryDivergedError, EntryInProgressError, Evicted):
        for signal in signals:
            if isinstance(signal, kind):
                raise signal
    suspends = [s for s in signals if isinstance(s, Suspend)]
    if suspends:
        raise Suspend(*merge_waits((s.until, s.waiting_for) for s in suspends))


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
    what = f"join {name!r}"

    async def one(branch_name: str, branch_entry: Entry, fn: BranchFn) -> None:
        outcomes[branch_name] = await _run_branch(
            inner, branch_entry, branch_name, fn, make_context, what
        )

    async with anyio.create_task_group() as tg:
        for branch_name, branch_entry, fn in plan:
            tg.start_soon(one, branch_name, branch_entry, fn)
    ordered = {branch_name: outcomes[branch_name] for branch_name, _, _ in plan}
    _raise_signals(ordered)
    inner.end()
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
        return RaceResult(winner, load_value(branch.data, branch.location))  # type: ignore[arg-type]
    inner, plan = _begin_branches(scope, entry, branches)
    outcomes: dict[str, _Outcome] = {}
    cancel_scopes: dict[str, anyio.CancelScope] = {}
    what = f"race {name!r}"
    won: list[str] = []

    async def one(branch_name: str, branch_entry: Entry, fn: BranchFn) -> None:
        with cancel_scopes[branch_name]:
            outcome = await _run_branch(
                inner, branch_entry, branch_name, fn, make_context, what
            )
            outcomes[branch_name] = outcome
            if outcome.done and not won:
                won.append(branch_name)
                for other, cancel_scope in cancel_scopes.items():
                    if other != branch_name:
                        cancel_scope.cancel()
        if branch_name not in outcomes:  # cancelled: it lost
            branch_entry.status = CANCELLED
            branch_entry.finished_at = run.clock.now()
            run.record(branch_entry)

    async with anyio.create_task_group() as tg:
        for branch_name, branch_entry, fn in plan:
            cancel_scopes[branch_name] = anyio.CancelScope()
            tg.start_soon(one, branch_name, branch_entry, fn)
    if won:
        winner = won[0]
        entry.data = winner
        entry.status = COMPLETED
        entry.finished_at = run.clock.now()
        run.record(entry)
        await run.flush()
        return RaceResult(winner, outcomes[winner].value)
    ordered = {b: outcomes[b] for b, _, _ in plan if b in outcomes}
    _raise_signals(ordered)
    inner.end()
    errors: dict[str, BaseException] = {
        b: o.error for b, o in ordered.items() if o.error is not None
    }
    entry.status = FAILED
    entry.finished_at = run.clock.now()
    run.record(entry)
    await run.flush()
    raise RaceError(name, errors)
