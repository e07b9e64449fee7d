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

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

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


class _EndsBranches(Protocol):
    def branch_ended(self) -> None: ...


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
    running: _EndsBranches,
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
            self.run.tasks_changed()


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


GROUP: Final = "group"
NEXT: Final = "next"
# A group's consumption order lives in a scope of its own beside its branches: the
# empty nested tuple, a marker no name index encodes, so it never meets a branch.
ORDER_MARK: Final = b"\x05\x00"

GroupBody = Callable[["BranchGroup"], Awaitable[object]]


class BranchGroup:
    """``ctx.group``: branches started while others run, finished ones taken in order.

    `start` begins a branch (its own history scope, named by the caller); `next`
    returns the next finished branch. The order in which `next` hands branches out
    is recorded, so a replay hands them out in the same order however fast they
    replay: code that decides what to start from what finished stays deterministic.
    """

    __slots__ = (
        "_changed",
        "_ended",
        "_inner",
        "_make_context",
        "_name",
        "_order",
        "_outcomes",
        "_running",
        "_taken",
        "_task_group",
        "_unfinished",
        "_waiting",
    )

    def __init__(
        self,
        inner: Scope,
        order: Scope,
        name: str,
        make_context: MakeContext,
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        self._inner = inner
        self._order = order
        self._name = name
        self._make_context = make_context
        self._task_group = task_group
        self._outcomes: dict[str, _Outcome] = {}  # ended, not handed out yet
        self._running: set[str] = set()  # started, not ended
        self._unfinished: dict[str, None] = {}  # started, not handed out (a set)
        self._ended: deque[str] = deque()  # finished (no signal), in finishing order
        self._taken = 0
        self._changed = anyio.Event()
        self._waiting = False  # the body waits in next(), not counted in run.tasks

    @property
    def pending(self) -> int:
        """Branches started and not yet returned by `next`."""
        return len(self._unfinished)

    def start(self, name: str, fn: BranchFn) -> None:
        """Start branch *name* running ``await fn(ctx)`` in its own scope.

        A branch that finished in an earlier run is not run again: its recorded
        value waits for `next`.
        """
        if not callable(fn):
            raise TypeError(f"group {self._name!r}: branch {name!r} needs a function")
        inner = self._inner
        entry, _ = inner.begin(name, BRANCH)
        run = inner.run
        if entry.status == PENDING:
            run.record(entry)
        self._unfinished[name] = None
        if entry.status == COMPLETED and not run.rolling_back:
            self._outcomes[name] = _Outcome(
                load_value(entry.data, entry.location),  # type: ignore[arg-type]
                done=True,
            )
            self._ended.append(name)
            return
        self._running.add(name)
        run.tasks += 1
        self._task_group.start_soon(self._run, name, entry, fn)

    async def _run(self, name: str, entry: Entry, fn: BranchFn) -> None:
        what = f"group {self._name!r}"
        run = self._inner.run
        try:
            outcome = await _run_branch(
                self._inner, entry, name, fn, self._make_context, what, self
            )
        finally:
            self._running.discard(name)
        self._outcomes[name] = outcome
        if outcome.signal is None:
            self._ended.append(name)
        if self._waiting:  # the body wakes up: it counts as running from now on
            self._waiting = False
            run.tasks += 1
            self._changed.set()
        else:
            run.tasks_changed()

    def branch_ended(self) -> None:
        """Called by `_run_branch` as a branch task stops running workflow code."""
        self._inner.run.tasks -= 1

    async def next(self) -> tuple[str, object]:
        """Wait for a started branch to finish; return ``(name, value)``.

        Branches come in the recorded order on replay, else in the order they
        finish. A branch that raised re-raises here (its failure is recorded).

        Raises:
            RuntimeError: no started branch is left to wait for.
        """
        if not self._unfinished:
            raise RuntimeError(f"group {self._name!r}: next() with no branch left")
        order = self._order
        run = order.run
        recorded = None
        if run.history.loaded:
            recorded = run.history.by_seq.get((order.location, self._taken))
        if recorded is not None:
            name = run.history.names[recorded.name_index]
            if name not in self._unfinished:
                raise order.refuse(
                    HistoryDivergedError(
                        run.workflow_id,
                        order.describe(),
                        expected=f"branch {name!r} to be the next to finish",
                        found=f"no started branch {name!r} left to return",
                    )
                )
            name = await self._wait_for(lambda: self._recorded_ended(name))
        else:
            name = await self._wait_for(self._first_ended)
        outcome = self._outcomes.pop(name)
        entry, fresh = order.begin(name, NEXT)
        if fresh:
            entry.status = COMPLETED
            entry.finished_at = run.clock.now()
            run.record(entry)
        del self._unfinished[name]
        self._taken += 1
        if outcome.error is not None:
            raise outcome.error
        return name, outcome.value

    def _recorded_ended(self, name: str) -> str | None:
        """*name* once it ended; a branch stopped by a signal stops the group."""
        outcome = self._outcomes.get(name)
        if outcome is None:
            return None
        if outcome.signal is not None:
            self._settle()
            return None
        return name

    def _first_ended(self) -> str | None:
        """The started branch that finished first and was not handed out, if any."""
        ended = self._ended
        while ended:
            name = ended[0]
            if name in self._outcomes:  # else a replay handed it out by name
                return name
            ended.popleft()
        self._settle()
        return None

    def _settle(self) -> None:
        """Once no branch runs, re-raise what stopped the stopped ones, merged."""
        if not self._running:
            _raise_signals({n: o for n, o in self._outcomes.items() if o.signal})

    async def _wait_for(self, ready: Callable[[], str | None]) -> str:
        """Wait (not counted as a running task) until *ready* names an ended branch.

        The branch that ends a wait hands its task count to the body (see `_run`),
        so the run never looks idle while the body is about to go on.
        """
        run = self._inner.run
        try:
            while (name := ready()) is None:
                run.tasks -= 1  # waiting on branches is not running workflow code
                self._waiting = True
                run.tasks_changed()
                self._changed = anyio.Event()
                await self._changed.wait()
            return name
        finally:
            if self._waiting:  # left by an exception, not woken by a branch
                self._waiting = False
                run.tasks += 1


async def group(
    scope: Scope,
    entry: Entry,
    name: str,
    body: GroupBody,
    make_context: MakeContext,
) -> object:
    """Run ``await body(group)``; branches still running when it returns are cancelled."""
    run = scope.run
    if entry.status == PENDING:
        run.record(entry)
    inner = Scope(run, entry.location)
    order = Scope(run, entry.location + ORDER_MARK)
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        branches = BranchGroup(inner, order, name, make_context, tg)
        try:
            value = await body(branches)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # re-raised unwrapped below
            error = (
                exc  # signals too: raised from the task group, they would be grouped
            )
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    entry.data, value = store_value(value, f"group {name!r}")
    entry.status = COMPLETED
    entry.finished_at = run.clock.now()
    run.record(entry)
    await run.flush()
    return value
