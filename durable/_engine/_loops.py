"""Durable loops with bounded history.

Iteration k of a loop at location L is the scope ``L + (k,)`` (a nested-tuple key
item), so one range delete removes whole iterations with everything inside them.
The loop entry holds ``[next_iteration, state, output, pruned_below]``:

* the state is checkpointed every ``commit_interval`` iterations; after a crash the
  loop restarts at the last checkpoint and replays the iterations after it from
  their (unpruned) history, which rebuilds the same state;
* every ``history_every`` iterations the history of iterations older than both the
  last ``history_keep`` and the last checkpoint is deleted, so a loop of any length
  keeps a bounded number of keys (W4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from .._codec import load_value, store_value
from .._history import COMPLETED, Entry
from .._keys import encode_int
from .._types import Loop
from ._scope import Scope
from ._signals import StopReplay

if TYPE_CHECKING:
    from ._context import WorkflowContext
    from ._run import Run

LOOP: Final = "loop"

LoopFn = Callable[["WorkflowContext", object], Awaitable[object]]
MakeContext = Callable[[Scope], "WorkflowContext"]


def iteration_location(loop: bytes, iteration: int) -> bytes:
    """The location of iteration *iteration* of the loop at *loop*."""
    return loop + b"\x05" + encode_int(iteration) + b"\x00"


async def loop(
    scope: Scope,
    entry: Entry,
    fresh: bool,
    name: str,
    fn: LoopFn,
    state: object,
    commit_interval: int,
    history_every: int,
    history_keep: int,
    make_context: MakeContext,
) -> object:
    """Run ``fn(ctx, state)`` until it returns ``Loop.break_``; see the module docs."""
    run = scope.run
    what = f"loop {name!r} of workflow {run.workflow_id!r}"
    if entry.status == COMPLETED:
        output = load_value(entry.data[2], entry.location)  # type: ignore[index]
        if run.rolling_back and entry.data[1] is not None:  # type: ignore[index]
            await _replay_for_handlers(run, entry, fn, make_context)
        return output
    if fresh:
        iteration, pruned_below = 0, 0
        state_bytes, state = store_value(state, f"the state of {what}")
        entry.data = [iteration, state_bytes, None, pruned_below]
        run.record(entry)  # rides with the first durable write inside the loop
    else:
        iteration, state_bytes, _, pruned_below = entry.data  # type: ignore[misc]
        state = load_value(state_bytes, entry.location)
    checkpoint, checkpoint_state = iteration, state_bytes
    while True:
        body_scope = Scope(run, iteration_location(entry.location, iteration))
        try:
            result = await fn(make_context(body_scope), state)
            body_scope.end()
        finally:
            body_scope.abandon()
        iteration += 1
        if isinstance(result, Loop.Break):
            output_bytes, output = store_value(result.value, f"the output of {what}")
            pruned_below = _prune(run, entry, pruned_below, iteration - history_keep)
            # the final iteration and the state it started from stay (history_keep
            # is at least 1), so rollback mode can replay it to find its handlers
            entry.data = [iteration - 1, state_bytes, output_bytes, pruned_below]
            entry.status = COMPLETED
            entry.finished_at = run.clock.now()
            run.record(entry)
            await run.flush()
            return output
        if isinstance(result, Loop.Continue):
            state = result.state
        elif result is not None:
            raise TypeError(
                f"the body of {what} returned {type(result).__name__}; return "
                "Loop.continue_(state), Loop.break_(value) or None"
            )
        # re-encoded after None too: the body may have changed the state in place,
        # and a checkpoint of the old bytes would resume with a different state
        state_bytes, state = store_value(state, f"the state of {what}")
        changed = iteration % commit_interval == 0
        if changed:
            checkpoint, checkpoint_state = iteration, state_bytes
        if iteration % history_every == 0:
            below = min(iteration - history_keep, checkpoint)
            if below > pruned_below:
                pruned_below = _prune(run, entry, pruned_below, below)
                changed = True
        if changed:
            entry.data = [checkpoint, checkpoint_state, None, pruned_below]
            run.record(entry)
            await run.flush()


async def _replay_for_handlers(
    run: Run, entry: Entry, fn: LoopFn, make_context: MakeContext
) -> None:
    """Rollback mode: replay a finished loop from its last checkpoint.

    Only so the steps of its kept iterations register their rollback handlers; the
    recorded output stands.
    """
    iteration, state_bytes = entry.data[0], entry.data[1]  # type: ignore[index]
    state = load_value(state_bytes, entry.location)
    while True:
        body_scope = Scope(run, iteration_location(entry.location, iteration))
        try:
            result = await fn(make_context(body_scope), state)
        except (StopReplay, Exception):
            return
        finally:
            body_scope.abandon()
        if isinstance(result, Loop.Break):
            return
        if isinstance(result, Loop.Continue):
            state = result.state
        iteration += 1


def _prune(run: Run, entry: Entry, start: int, end: int) -> int:
    """Delete iterations ``[start, end)`` in the next write and from memory.

    Steps with a rollback handler are kept (written back after the range delete, in
    the same batch): their compensation must survive pruning.
    """
    if end <= start:
        return start
    first = iteration_location(entry.location, start)
    last = iteration_location(entry.location, end)
    keys = run.history.keys
    run.pending.delete_range(keys.entry + first, keys.entry + last)
    run.pending.delete_range(keys.entry_meta + first, keys.entry_meta + last)
    kept = set()
    for compensable in run.history.compensable_between(first, last):
        kept.add(compensable.location)
        run.record(compensable)
    run.history.forget(first, last, keep=kept)
    return end
