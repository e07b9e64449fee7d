"""WorkflowContext: the façade workflow code talks to.

Each method checks its arguments, begins its entry in the scope *at call time* (so a
missing ``await`` is caught at the next call), and returns the awaitable of one
function in a feature module.
"""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, TypeVar, final, overload

from .._history import SLEEP, STEP
from .._types import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
)
from . import _steps, _timers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._scope import Scope

T = TypeVar("T")


def _check_seconds(value: float, what: str, *, allow_zero: bool = True) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)  # type: ignore[redundant-expr]
        or math.isnan(value)
    ):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{what} must be {'>=' if allow_zero else '>'} 0 seconds, not {value!r}"
        )
    return float(value)


def _epoch(when: float | datetime.datetime) -> float:
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            raise ValueError(
                "sleep_until needs a timezone-aware datetime (a naive one is ambiguous); "
                "use datetime.now(timezone.utc) or pass epoch seconds"
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or math.isnan(when):  # type: ignore[redundant-expr]
        raise TypeError(
            f"when must be epoch seconds or an aware datetime, not {when!r}"
        )
    return float(when)


@final
class WorkflowContext:
    """The handle workflow code uses for every durable call.

    Code outside ``ctx`` calls must be deterministic; every side effect belongs in a
    step. Every method registers its entry when called, so await each call before
    the next one.
    """

    __slots__ = ("_scope", "workflow_id")

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self.workflow_id: str = scope.run.workflow_id

    @overload
    def step(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        max_retries: int = ...,
        retry_backoff_base: float = ...,
        retry_backoff_max: float = ...,
        timeout: float | None = ...,
        retry_on_timeout: bool = ...,
        ephemeral: bool = ...,
        rollback: object = ...,
    ) -> Awaitable[T]: ...

    @overload
    def step(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        max_retries: int = ...,
        retry_backoff_base: float = ...,
        retry_backoff_max: float = ...,
        timeout: float | None = ...,
        retry_on_timeout: bool = ...,
        ephemeral: bool = ...,
        rollback: object = ...,
    ) -> Awaitable[T]: ...

    def step(
        self,
        name: str,
        fn: Callable[[], object],
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        timeout: float | None = DEFAULT_STEP_TIMEOUT,
        retry_on_timeout: bool = False,
        ephemeral: bool = False,
        rollback: object = None,
    ) -> Awaitable[object]:
        """Run ``fn()`` (sync or async) once and record its result.

        On replay the recorded result comes back without calling *fn*. A failure is
        retried after ``min(retry_backoff_base * 2**(n-1), retry_backoff_max)``
        seconds for the n-th retry, up to *max_retries* retries; the wait survives
        restarts. The value returned is always the stored (decoded) form.

        Raises:
            StepExhaustedError: the last allowed attempt failed.
            CriticalError: *fn* raised it (no retry); `StepTimeoutError` is one.
            RollbackError: *fn* raised it (no retry).
            UnstorableValueError: *fn* returned a value msgpack cannot store.
        """
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be a callable taking no arguments")
        if (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)  # type: ignore[redundant-expr]
            or max_retries < 0
        ):
            raise ValueError(
                f"step {name!r}: max_retries must be an int >= 0, not {max_retries!r}"
            )
        if retry_backoff_base != DEFAULT_RETRY_BACKOFF_BASE:
            _check_seconds(retry_backoff_base, "retry_backoff_base")
        if retry_backoff_max != DEFAULT_RETRY_BACKOFF_MAX:
            _check_seconds(retry_backoff_max, "retry_backoff_max")
        if timeout is not None and timeout != DEFAULT_STEP_TIMEOUT:
            timeout = _check_seconds(timeout, "timeout") or None
        if rollback is not None:
            raise NotImplementedError("rollback handlers are not available yet")
        scope = self._scope
        entry, fresh = scope.begin(name, STEP)
        return scope.track(
            f"step {name!r}",
            _steps.run_step(
                scope,
                entry,
                fresh,
                name,
                fn,
                max_retries,
                retry_backoff_base,
                retry_backoff_max,
                timeout,
                retry_on_timeout,
                ephemeral,
            ),
        )

    def sleep(self, name: str, seconds: float) -> Awaitable[None]:
        """Wait durably for *seconds*; a completed sleep is never slept again.

        Short sleeps (below the driver's poll interval) wait in memory; longer ones
        record an alarm and, in yield mode, make the run return ``sleeping``.
        """
        seconds = _check_seconds(seconds, "seconds")
        scope = self._scope
        entry, fresh = scope.begin(name, SLEEP)
        when = scope.run.clock.now() + seconds if fresh else 0.0
        return scope.track(
            f"sleep {name!r}", _timers.sleep_until(scope, entry, fresh, when)
        )

    def sleep_until(
        self, name: str, when: float | datetime.datetime
    ) -> Awaitable[None]:
        """Wait durably until *when* (epoch seconds or an aware datetime)."""
        deadline = _epoch(when)
        scope = self._scope
        entry, fresh = scope.begin(name, SLEEP)
        return scope.track(
            f"sleep {name!r}", _timers.sleep_until(scope, entry, fresh, deadline)
        )

    def is_evicted(self) -> bool:
        """True once eviction was requested; long steps should check it."""
        return self._scope.run.evict_requested
