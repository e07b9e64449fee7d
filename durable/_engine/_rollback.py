"""Compensation (sagas): rollback checkpoints and step rollback handlers.

``ctx.rollback_checkpoint`` enables rollback from that point on; a step with a
``rollback=`` handler registers it when the step completes (or replays as completed).
When the workflow then fails, the state goes to ``rolling_back`` and the handlers run
in reverse completion order with the steps' recorded outputs. Each handler's
completion is recorded in its step's metadata before the next one starts, so after a
crash every handler still runs exactly once: a later run replays the workflow in
*rollback mode* (it stops at the first call the history does not hold, and never
waits) to find the handlers again, then runs the ones not yet done.

Rule: handlers live in code, not in the store; only their completion is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, final

import attrs

from .._codec import load_value
from .._errors import WorkflowError
from .._history import COMPLETED, STEP, Entry
from .._keys import decode_key
from .._types import RollbackErrorEvent
from ._signals import StopReplay

if TYPE_CHECKING:
    from ._run import Run
    from ._scope import Scope

CHECKPOINT: Final = "rollback_checkpoint"


@final
@attrs.frozen
class RollbackContext:
    """What a rollback handler receives besides the step's output."""

    workflow_id: str
    step_name: str
    _run: Run = attrs.field(repr=False, alias="run")

    def is_evicted(self) -> bool:
        """True once eviction of the run was requested."""
        return self._run.evict_requested


Handler = Callable[[RollbackContext, object], Awaitable[object]]


@attrs.define
class Compensation:
    """A completed step with a rollback handler, waiting to be compensated."""

    entry: Entry
    name: str
    handler: Handler


def checkpoint(scope: Scope, name: str) -> None:
    """Record a rollback checkpoint; later steps may carry rollback handlers."""
    entry, fresh = scope.begin(name, CHECKPOINT)
    run = scope.run
    run.checkpointed = True
    if fresh:
        entry.status = COMPLETED
        entry.finished_at = run.clock.now()
        run.record(entry)


def register(run: Run, entry: Entry, name: str, handler: Handler) -> None:
    """Remember a completed step's handler for a rollback of this run."""
    run.compensations.append(Compensation(entry, name, handler))


def _site(location: bytes) -> tuple[object, ...]:
    """Where a step sits in the code: its location without loop iteration numbers."""
    return tuple(item for item in decode_key(location) if not isinstance(item, tuple))


def unregistered_compensations(run: Run) -> list[Entry]:
    """Compensable steps not yet compensated whose handler this run never registered.

    Their code was not reached: a finished loop's older iterations, say.
    """
    if not run.checkpointed and not run.compensations:
        return []  # no rollback in this workflow: skip the scan
    registered = {c.entry.location for c in run.compensations}
    return [
        entry
        for entry in list(run.history.entries.values())
        if entry.kind == STEP
        and entry.status == COMPLETED
        and entry.location not in registered
        and entry.full().compensable
        and entry.rolled_back_at is None
    ]


async def _pending(run: Run) -> list[Compensation]:
    """Registered compensations not done yet, plus stored ones the code did not reach.

    A finished loop's pruned iterations are not replayed: their steps take the
    handler that a step at the same place in the code registered, in another
    iteration.
    """
    pending = [c for c in run.compensations if c.entry.full().rolled_back_at is None]
    by_site = {_site(c.entry.location): c for c in run.compensations}
    history = run.history
    for entry in unregistered_compensations(run):
        twin = by_site.get(_site(entry.location))
        name = history.names[entry.name_index]
        if twin is not None:
            pending.append(Compensation(entry, name, twin.handler))
            continue
        error = WorkflowError(
            "MissingRollbackHandler",
            f"no rollback handler was registered for step {name!r}: the replay did "
            "not reach its code",
        )
        entry.rollback_error = error
        run.record(entry)
        await run.report(RollbackErrorEvent(run.workflow_id, name, error))
    return pending


async def roll_back(run: Run) -> bool:
    """Run the pending handlers, newest completion first; False if one failed."""
    pending = await _pending(run)
    pending.sort(key=lambda c: (c.entry.finished_at or 0.0, c.entry.location))
    for compensation in reversed(pending):
        if run.evict_requested:
            return False
        entry = compensation.entry
        output = load_value(entry.data, entry.location)  # type: ignore[arg-type]
        try:
            await compensation.handler(
                RollbackContext(run.workflow_id, compensation.name, run=run), output
            )
        except Exception as exc:
            from ._run import describe_exception

            error = describe_exception(exc)
            entry.rollback_error = error
            run.record(entry)
            await run.flush()
            await run.report(
                RollbackErrorEvent(run.workflow_id, compensation.name, error)
            )
            return False
        entry.rolled_back_at = run.clock.now()
        entry.rollback_error = None
        run.record(entry)
        await run.flush()
    return True


def stop_if_rolling_back(run: Run) -> None:
    """In rollback mode, a call the history does not hold ends the traversal."""
    if run.rolling_back:
        raise StopReplay
