"""try_step and try_block: turn chosen failure kinds into result objects.

``try_step`` is a step whose failures of the caught kinds come back as a
`TryStepResult`; ``try_block`` runs a function in a named sub-scope and catches the
step, join, race and rollback failures raised inside it. Anything not caught
propagates unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._errors import (
    CriticalError,
    JoinError,
    RaceError,
    RollbackError,
    StepExhaustedError,
    StepTimeoutError,
    UnstorableValueError,
)
from .._history import COMPLETED, FAILED, PENDING, Entry
from .._types import TryBlockFailure, TryBlockResult, TryStepFailure, TryStepResult
from ._scope import Scope

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from ._context import WorkflowContext

TRY: Final = "try"
STEP_KINDS: Final = frozenset({"critical", "timeout", "exhausted", "rollback"})
BLOCK_KINDS: Final = frozenset({"step", "join", "race", "rollback"})


def step_failure_kind(exc: BaseException) -> str | None:
    """The `try_step` kind of a step failure, or ``None`` if it is not one."""
    if isinstance(exc, StepTimeoutError):
        return "timeout"
    if isinstance(exc, RollbackError):
        return "rollback"
    if isinstance(exc, CriticalError):
        return "critical"
    if isinstance(exc, StepExhaustedError):
        return "exhausted"
    return None


async def try_step(
    entry: Entry, name: str, step: Awaitable[object], catch: Collection[str]
) -> TryStepResult:
    """Await *step*, returning failures of the kinds in *catch* as a result."""
    try:
        value = await step
    except (CriticalError, RollbackError, StepExhaustedError) as exc:
        kind = step_failure_kind(exc)
        if kind is None or kind not in catch:
            raise
        return TryStepResult(
            False, None, TryStepFailure(kind, name, entry.attempts, exc)
        )
    return TryStepResult(True, value)


def _block_failure_kind(exc: BaseException) -> str | None:
    if isinstance(exc, RollbackError):
        return "rollback"
    if isinstance(exc, CriticalError | StepExhaustedError | UnstorableValueError):
        return "step"
    if isinstance(exc, JoinError):
        return "join"
    if isinstance(exc, RaceError):
        return "race"
    return None


async def try_block(
    scope: Scope,
    entry: Entry,
    name: str,
    fn: Callable[[WorkflowContext], Awaitable[object]],
    catch: Collection[str],
    make_context: Callable[[Scope], WorkflowContext],
) -> TryBlockResult:
    """Run ``fn(ctx)`` in the sub-scope *entry*, catching the kinds in *catch*."""
    run = scope.run
    if entry.status == PENDING:
        # recorded while unfinished, so a replay of a renamed block whose steps
        # were recorded diverges instead of running them afresh
        run.record(entry)
    inner = Scope(run, entry.location)
    try:
        value = await fn(make_context(inner))
        inner.end()
    except (
        CriticalError,
        RollbackError,
        StepExhaustedError,
        JoinError,
        RaceError,
        UnstorableValueError,
    ) as exc:
        kind = _block_failure_kind(exc)
        if kind is None or kind not in catch:
            raise
        entry.status = FAILED
        entry.finished_at = run.clock.now()
        run.record(entry)
        return TryBlockResult(False, None, TryBlockFailure(kind, name, exc))
    finally:
        inner.abandon()
    if entry.status != COMPLETED:
        entry.status = COMPLETED
        entry.finished_at = run.clock.now()
        run.record(entry)
    return TryBlockResult(True, value)
