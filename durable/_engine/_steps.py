"""Steps: run a callable once, record its result, retry with persisted backoff.

Attempt bookkeeping lives in the entry's metadata. A failed attempt that will be
retried is flushed with its ``retry_at`` before the wait starts, so a restarted
process waits out only the rest of the backoff. A recorded failure replays as the same
exception without running anything.

W1 hot path: a fresh successful step costs one call, one encode + decode, two puts
and one batch write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._codec import load_value, store_value
from .._errors import (
    CriticalError,
    RollbackError,
    StepExhaustedError,
    StepTimeoutError,
    UnstorableValueError,
    WorkflowError,
)
from .._history import COMPLETED, FAILED, RETRYING, Entry, StepFailure
from .._types import StepErrorEvent
from ._rollback import register, stop_if_rolling_back
from ._run import describe_exception

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._clock import Clock
    from ._rollback import Handler
    from ._scope import Scope

# Failure kinds, as `try_step(catch=...)` names them.
CRITICAL: Final = "critical"
TIMEOUT: Final = "timeout"
ROLLBACK: Final = "rollback"
EXHAUSTED: Final = "exhausted"
UNSTORABLE: Final = "unstorable"
RETRYABLE: Final = "error"


class _TimeoutExpiredError(Exception):
    pass


async def replayed(entry: Entry) -> object:
    """Return the recorded result of the completed step *entry* (W2 hot path).

    One coroutine that never suspends, untracked: nothing is in progress, the entry
    is complete (a fresh step is `run_step` wrapped by `Scope.track`).
    """
    return load_value(entry.data, entry.location)  # type: ignore[arg-type]


def backoff(attempt: int, base: float, maximum: float) -> float:
    """Seconds to wait after failed attempt number *attempt* (1-based)."""
    return float(min(base * 2 ** (attempt - 1), maximum))


async def _call(
    fn: Callable[[], object], timeout: float | None, clock: Clock
) -> object:
    result = fn()
    if not hasattr(result, "__await__"):
        return result  # sync callables run inline on the event loop
    if not timeout:
        return await result
    with clock.cancel_scope(clock.now() + timeout):
        return await result
    raise _TimeoutExpiredError


async def run_step(
    scope: Scope,
    entry: Entry,
    fresh: bool,
    name: str,
    fn: Callable[[], object],
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    timeout: float | None,
    retry_on_timeout: bool,
    ephemeral: bool,
    rollback: Handler | None = None,
) -> object:
    """Execute or replay the step *entry*; see `WorkflowContext.step`."""
    run = scope.run
    if not fresh:
        if entry.status == COMPLETED:
            return load_value(entry.data, entry.location)  # type: ignore[arg-type]
        if entry.status == FAILED and entry.failure is not None:
            raise _replayed_failure(entry.failure, name, entry.attempts, timeout)
        stop_if_rolling_back(run)  # never attempt a step while rolling back
        if entry.retry_at is not None:
            await run.wait(entry.retry_at)
    clock = run.clock
    while True:
        entry.attempts += 1
        entry.started_at = clock.now()
        try:
            value = await _call(fn, timeout, clock)
        except (CriticalError, RollbackError) as exc:
            kind = ROLLBACK if isinstance(exc, RollbackError) else CRITICAL
            cls = type(exc)
            await _fail(
                scope,
                entry,
                name,
                max_retries,
                kind,
                exc,
                detail=f"{cls.__module__}:{cls.__qualname__}",
            )
            raise
        except _TimeoutExpiredError:
            timed_out = StepTimeoutError(name, timeout or 0.0)
            if not retry_on_timeout:
                await _fail(
                    scope, entry, name, max_retries, TIMEOUT, timed_out, detail=timeout
                )
                raise timed_out from None
            error: Exception = timed_out
        except Exception as exc:
            error = exc
        else:
            try:
                entry.data, decoded = store_value(value, "")
            except UnstorableValueError as unnamed:
                unstorable = UnstorableValueError(
                    f"step {name!r} of workflow {run.workflow_id!r}",
                    unnamed.value_type,
                    unnamed.reason,
                )
                await _fail(
                    scope,
                    entry,
                    name,
                    max_retries,
                    UNSTORABLE,
                    unstorable,
                    detail=unstorable.value_type,
                )
                raise unstorable from None
            entry.status = COMPLETED
            entry.finished_at = clock.now()
            entry.retry_at = None
            entry.failure = None
            if rollback is not None:
                entry.compensable = True  # stored: its compensation outlives pruning
                register(run, entry, name, rollback)
            run.record(entry)
            if not ephemeral:
                await run.flush()
            return decoded
        # a retryable failure
        description = describe_exception(error)
        if entry.attempts > max_retries:
            exhausted = StepExhaustedError(name, entry.attempts, description)
            await _fail(
                scope,
                entry,
                name,
                max_retries,
                EXHAUSTED,
                exhausted,
                description=description,
            )
            raise exhausted from error
        retry_at = entry.started_at + backoff(entry.attempts, backoff_base, backoff_max)
        entry.status = RETRYING
        entry.retry_at = retry_at
        entry.failure = StepFailure(RETRYABLE, description)
        run.record(entry)
        await run.flush()
        await run.report(
            StepErrorEvent(
                run.workflow_id,
                name,
                entry.attempts,
                max_retries,
                True,
                retry_at,
                RETRYABLE,
                description,
            )
        )
        await run.wait(retry_at)


async def _fail(
    scope: Scope,
    entry: Entry,
    name: str,
    max_retries: int,
    kind: str,
    exc: BaseException,
    *,
    detail: object = None,
    description: WorkflowError | None = None,
) -> None:
    run = scope.run
    description = description or describe_exception(exc)
    entry.status = FAILED
    entry.finished_at = run.clock.now()
    entry.retry_at = None
    entry.failure = StepFailure(
        kind, description, "" if detail is None else str(detail)
    )
    run.record(entry)
    await run.flush()
    await run.report(
        StepErrorEvent(
            run.workflow_id,
            name,
            entry.attempts,
            max_retries,
            False,
            None,
            kind,
            description,
        )
    )


def _rebuild(base: type[Exception], qualified_name: str, message: str) -> Exception:
    """Rebuild a user's subclass of *base* by its recorded name, else *base* itself.

    Only classes already defined in this process are considered (never imported
    by name), so ``except CardDeclined:`` catches the replayed failure too.
    """
    pending = [base]
    while pending:
        cls = pending.pop()
        if f"{cls.__module__}:{cls.__qualname__}" == qualified_name:
            try:
                return cls(message)
            except Exception:  # its constructor wants other arguments
                break
        pending.extend(cls.__subclasses__())
    return base(message)


def _replayed_failure(
    failure: StepFailure, name: str, attempts: int, timeout: float | None
) -> BaseException:
    """The exception a recorded failure raised, rebuilt from its description."""
    message = failure.error.message
    if failure.kind in (CRITICAL, ROLLBACK):
        base = CriticalError if failure.kind == CRITICAL else RollbackError
        return _rebuild(base, failure.detail, message)
    if failure.kind == TIMEOUT:
        return StepTimeoutError(name, float(failure.detail or timeout or 0.0))
    if failure.kind == UNSTORABLE:
        return UnstorableValueError(f"step {name!r}", failure.detail or "?")
    return StepExhaustedError(name, attempts, failure.error)
