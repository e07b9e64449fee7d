"""Replay from a step: delete a workflow's history from a chosen step on, so it reruns.

The target is a step named by its path: the names of the enclosing join, race, try
and loop entries and branches, with an int for a loop iteration, then the step's own
name (a plain ``str`` for a step of the workflow body). One atomic batch

* deletes the target step and every entry recorded after it in its scope, each with
  its whole subtree;
* for each enclosing scope up to the body, deletes the entries recorded after the
  enclosing entry (a join's or race's other branches run concurrently and are kept),
  and resets the enclosing join, race, branch and try entries to pending (a race's
  recorded winner is cleared); an enclosing loop keeps its checkpoint and loses the
  iterations after the target's;
* puts back in the queue every message that a deleted ``queue.next`` consumed, so
  the rerun receives it again;
* sets the workflow ``pending`` with no output or error, and its alarm to now.

Every entry recorded before the target (steps, sleeps, consumed messages) stays, so
the rerun replays them and does not wait again for what it already had.

Rule: plain functions over a loaded `History`; nothing is written but the one batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ._codec import dump_record
from ._drivers import Batch
from ._engine._branches import BRANCH, JOIN, RACE
from ._engine._loops import LOOP, iteration_location
from ._engine._queue import MESSAGE, SEND
from ._engine._run import active_run
from ._engine._tries import TRY
from ._errors import (
    ReplayTargetError,
    UnknownWorkflowError,
    WorkflowBusyError,
    WorkflowCancelledError,
)
from ._history import COMPLETED, PENDING, STEP, Entry, History
from ._keys import encode_int
from ._types import WorkflowState

if TYPE_CHECKING:
    from ._clock import Clock
    from ._drivers import Driver

StepPath = str | tuple[str | int, ...]


@attrs.define
class _Level:
    """One entry on the path to the target, in the scope *scope*."""

    entry: Entry
    scope: bytes
    iteration: int | None = None  # for a loop: the iteration the path goes into


async def replay_from(
    driver: Driver, workflow_id: str, step: StepPath, clock: Clock
) -> None:
    """Delete the history from *step* on and make the workflow due; see the module docs."""
    path = _normalize(workflow_id, step)
    if active_run(driver, workflow_id) is not None:
        raise WorkflowBusyError(workflow_id)
    history = await History.load(driver, workflow_id)
    meta = history.meta
    if meta is None:
        raise UnknownWorkflowError(workflow_id)
    if meta.state == WorkflowState.CANCELLED:
        raise WorkflowCancelledError(workflow_id)
    if meta.state == WorkflowState.ROLLING_BACK:
        raise ReplayTargetError(
            workflow_id,
            step,
            "the workflow is rolling back; run it until the rollback has finished, "
            "then replay",
        )
    levels = _resolve(history, workflow_id, step, path)
    batch = Batch()
    _plan(history, workflow_id, step, levels, batch)
    now = clock.now()
    meta.state = WorkflowState.PENDING
    meta.output = None
    meta.error = None
    meta.sleep_until = None
    meta.waiting_for = None
    meta.updated_at = now
    meta.write(batch, history.keys)
    batch.set_alarm(workflow_id, now)
    batch.notify(workflow_id)
    await driver.write(batch)


def _normalize(workflow_id: str, step: object) -> tuple[str | int, ...]:
    path = (step,) if isinstance(step, str) else step
    if not isinstance(path, tuple) or not path:
        raise TypeError(
            "step must be a step name (str) or a non-empty path tuple such as "
            f"('fanout', 'branch-a', 'charge'), not {step!r}"
        )
    for item in path:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise TypeError(
                f"a step path holds names (str) and loop iterations (int), not "
                f"{item!r} in {step!r}"
            )
    if not isinstance(path[-1], str):
        raise ReplayTargetError(
            workflow_id,
            step,
            "the path ends in a loop iteration; end it with a step name",
        )
    return path


def _resolve(
    history: History, workflow_id: str, step: object, path: tuple[str | int, ...]
) -> list[_Level]:
    """The entries on *path*, outermost first; the last one is the target step."""
    levels: list[_Level] = []
    scope = b""
    for position, item in enumerate(path):
        where = f"{path[:position]!r}" if position else "the workflow body"
        if isinstance(item, int):
            parent = levels[-1].entry if levels else None
            if (
                parent is None
                or parent.kind != LOOP
                or levels[-1].iteration is not None
            ):
                raise ReplayTargetError(
                    workflow_id,
                    step,
                    f"iteration {item} in the path does not follow a loop's name",
                )
            levels[-1].iteration = item
            scope = iteration_location(parent.location, item)
            continue
        if levels and levels[-1].entry.kind == LOOP and levels[-1].iteration is None:
            raise ReplayTargetError(
                workflow_id,
                step,
                f"{levels[-1].entry.kind} {path[position - 1]!r} needs an iteration "
                "number (int) after its name in the path",
            )
        if levels and levels[-1].entry.kind not in (JOIN, RACE, BRANCH, TRY, LOOP):
            raise ReplayTargetError(
                workflow_id,
                step,
                f"{path[position - 1]!r} is a {levels[-1].entry.kind} and holds no "
                "entries",
            )
        index = history.name_index.get(item)
        entry = (
            None if index is None else history.entries.get(scope + encode_int(index))
        )
        if entry is None or entry.seq < 0:
            raise ReplayTargetError(workflow_id, step, _not_found(history, item, where))
        levels.append(_Level(entry, scope))
        scope = entry.location
    target = levels[-1].entry
    if target.kind != STEP:
        raise ReplayTargetError(
            workflow_id,
            step,
            f"{path[-1]!r} is a {target.kind}, not a step; name a step (the first "
            f"step after the {target.kind} replays it too)",
        )
    return levels


def _not_found(history: History, name: str, where: str) -> str:
    """Why *name* is not in *where*, with the paths of steps of that name elsewhere."""
    reason = f"no entry {name!r} is recorded in {where}"
    index = history.name_index.get(name)
    paths = [] if index is None else _paths_of(history, index)
    if paths:
        return f"{reason}; steps named so are recorded at {', '.join(paths)}"
    return (
        f"{reason} (it never ran, or its history was pruned); pass the path of a "
        "recorded step, e.g. ('join', 'branch', 'step') or ('loop', 3, 'step')"
    )


def _paths_of(history: History, index: int) -> list[str]:
    found = [
        history.describe(entry.location)
        for entry in history.entries.values()
        if entry.kind == STEP and entry.name_index == index
    ]
    return sorted(found)[:5]


def _plan(
    history: History,
    workflow_id: str,
    step: object,
    levels: list[_Level],
    batch: Batch,
) -> None:
    """Add to *batch* the deletes and resets of a replay from ``levels[-1]``."""
    keys = history.keys
    doomed: list[tuple[bytes, bytes]] = []  # [start, end) ranges of locations

    def later_siblings(level: _Level, first: int) -> None:
        size = history.scope_sizes.get(level.scope, 0)
        for seq in range(first, size):
            sibling = history.by_seq.get((level.scope, seq))
            if sibling is not None:
                doomed.append((sibling.location, sibling.location + b"\xff"))

    target = levels[-1]
    later_siblings(target, target.entry.seq)
    for depth in range(len(levels) - 2, -1, -1):
        level = levels[depth]
        entry = level.entry
        child = levels[depth + 1].entry
        if entry.kind == LOOP:
            iteration = _check_loop(history, workflow_id, step, level)
            doomed.append(
                (
                    iteration_location(entry.location, iteration + 1),
                    entry.location + b"\x05\xff",
                )
            )
        elif entry.kind == RACE:
            winner = entry.data if entry.status == COMPLETED else None
            branch = history.names[child.name_index]
            if winner is not None and winner != branch:
                raise ReplayTargetError(
                    workflow_id,
                    step,
                    f"it is in branch {branch!r} of race "
                    f"{history.names[entry.name_index]!r}, which {winner!r} won; the "
                    "race would end the same way: replay from a step in the winning "
                    "branch or before the race",
                )
            _reset(history, entry, batch)
        else:  # join, branch, try
            _reset(history, entry, batch)
        parent = levels[depth - 1].entry if depth else None
        if parent is None or parent.kind not in (JOIN, RACE):
            # a join's or race's branches run side by side: none is "after" another
            later_siblings(level, entry.seq + 1)
    for start, end in doomed:
        _restore_messages(history, start, end, batch)
    for start, end in doomed:  # after every restore: a rerun sends these again
        _unsend_messages(history, start, end, batch)
        batch.delete_range(keys.entry + start, keys.entry + end)
        batch.delete_range(keys.entry_meta + start, keys.entry_meta + end)


def _check_loop(history: History, workflow_id: str, step: object, level: _Level) -> int:
    """The iteration the target is in, if the loop can replay from it."""
    entry = level.entry
    name = history.names[entry.name_index]
    iteration = level.iteration
    if iteration is None:  # `_resolve` puts an iteration after every loop
        raise RuntimeError(f"no iteration of loop {name!r} in the path")
    if entry.status == COMPLETED:
        raise ReplayTargetError(
            workflow_id,
            step,
            f"loop {name!r} has completed and keeps only its output, not the state "
            "its iterations started from; replay from a step before the loop",
        )
    checkpoint = entry.data[0] if isinstance(entry.data, list) else 0
    if checkpoint > iteration:
        raise ReplayTargetError(
            workflow_id,
            step,
            f"loop {name!r} keeps its state from iteration {checkpoint} on, not from "
            f"iteration {iteration}; pick a step in iteration {checkpoint} or later, "
            "or a step before the loop",
        )
    return iteration


def _reset(history: History, entry: Entry, batch: Batch) -> None:
    """Make a finished join, race, branch or try entry pending again."""
    entry.full()
    if entry.status == PENDING:
        return
    entry.status = PENDING
    entry.failure = None
    entry.finished_at = None
    if entry.kind in (RACE, BRANCH):
        entry.data = None  # a race's winner, a branch's output
    keys = history.keys
    batch.put(keys.entry + entry.location, entry.data_record())
    batch.put(keys.entry_meta + entry.location, entry.meta_record())


def _unsend_messages(history: History, start: bytes, end: bytes, batch: Batch) -> None:
    """Take back the messages sent by the ``queue.send`` entries in ``[start, end)``."""
    for entry in history.entries.values():
        if (
            entry.kind == SEND
            and start <= entry.location < end
            and isinstance(entry.data, bytes)  # the message's key
        ):
            batch.delete(entry.data)


def _restore_messages(history: History, start: bytes, end: bytes, batch: Batch) -> None:
    """Put back the messages consumed by the ``queue.next`` entries in ``[start, end)``."""
    for entry in history.entries.values():
        if entry.kind != MESSAGE or not start <= entry.location < end:
            continue
        data = entry.data
        if entry.status != COMPLETED or not isinstance(data, list) or len(data) < 3:
            continue
        for (key, name, sent_at), body in zip(data[2], data[1], strict=True):
            batch.put(key, dump_record([name, body, sent_at]))
