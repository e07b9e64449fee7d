"""WorkflowContext: the façade workflow code talks to.

Each method checks its arguments, begins its entry in the scope *at call time* (so a
missing ``await`` is caught at the next call), and returns the awaitable of one
function in a feature module.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, final, overload

from .._errors import RollbackCheckpointError
from .._history import COMPLETED, SLEEP, STEP, Entry
from .._types import (
    DEFAULT_LOOP_COMMIT_INTERVAL,
    DEFAULT_LOOP_HISTORY_EVERY,
    DEFAULT_LOOP_HISTORY_KEEP,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    RaceResult,
    TryBlockResult,
    TryStepResult,
)
from . import (
    _branches,
    _loops,
    _queue,
    _rollback,
    _steps,
    _timers,
    _tries,
    _versioning,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable

    from ._branches import BranchGroup
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


def _check_step_options(
    name: str,
    max_retries: int,
    retry_backoff_base: float,
    retry_backoff_max: float,
    timeout: float | None,
) -> float | None:
    """Validate a step's options; return its timeout (``None`` when disabled)."""
    if (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)  # type: ignore[redundant-expr]
        or max_retries < 0
    ):
        raise ValueError(
            f"step {name!r}: max_retries must be an int >= 0, not {max_retries!r}"
        )
    _check_seconds(retry_backoff_base, "retry_backoff_base")
    _check_seconds(retry_backoff_max, "retry_backoff_max")
    if timeout is None:
        return None
    return _check_seconds(timeout, "timeout") or None


def _check_kinds(catch: Collection[str], allowed: frozenset[str], what: str) -> None:
    if isinstance(catch, str) or not set(catch) <= allowed:
        raise ValueError(
            f"{what} catch= must be a collection of {sorted(allowed)}, not {catch!r}"
        )


def _check_branches(branches: object, what: str, name: str) -> None:
    if not isinstance(branches, Mapping) or not branches:
        raise ValueError(f"{what} {name!r} needs a non-empty dict of branch functions")
    for branch, fn in branches.items():
        if not isinstance(branch, str) or not callable(fn):
            raise TypeError(
                f"{what} {name!r}: branch {branch!r} must map a str name to an "
                "async function taking ctx"
            )


@final
class WorkflowQueue:
    """``ctx.queue``: the messages sent to this workflow."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def next(
        self,
        name: str,
        *,
        names: Iterable[str] | None = None,
        count: int = 1,
        timeout: float | None = None,
    ) -> Awaitable[list[Any]]:
        """Wait for *count* messages whose name is in *names* (any when ``None``).

        Returns their bodies, oldest first: exactly *count*, or fewer (maybe ``[]``)
        once *timeout* seconds have passed. Consumed messages are recorded in the
        same atomic write that removes them from the queue; a replay returns the
        same bodies and consumes nothing.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:  # type: ignore[redundant-expr]
            raise ValueError(
                f"queue.next {name!r}: count must be an int >= 1, not {count!r}"
            )
        if isinstance(names, str):
            raise TypeError(
                f"queue.next {name!r}: names must be a list of names, not a str"
            )
        wanted = None if names is None else frozenset(names)
        if wanted is not None and not wanted:
            raise ValueError(
                f"queue.next {name!r}: names=[] would wait forever; pass names or None"
            )
        if timeout is not None:
            timeout = _check_seconds(timeout, "timeout")
        scope = self._scope
        entry, fresh = scope.begin(name, _queue.MESSAGE)
        return scope.track(
            f"queue.next {name!r}",
            _queue.next_messages(scope, entry, fresh, wanted, count, timeout),
        )

    def send(self, name: str, body: object) -> Awaitable[None]:
        """Send message *name* with *body* to this workflow, once (not on replay)."""
        scope = self._scope
        entry, fresh = scope.begin(name, _queue.SEND)
        return scope.track(
            f"queue.send {name!r}", _queue.send(scope, entry, fresh, name, body)
        )


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
        entry, run = self._begin_step(
            name,
            fn,
            max_retries,
            retry_backoff_base,
            retry_backoff_max,
            timeout,
            retry_on_timeout,
            ephemeral,
            rollback,
        )
        if run is None:
            return _steps.replayed(entry)  # W2: nothing in progress, one coroutine
        return self._scope.track(("step", name), run)

    def _begin_step(
        self,
        name: str,
        fn: Callable[[], object],
        max_retries: int,
        retry_backoff_base: float,
        retry_backoff_max: float,
        timeout: float | None,
        retry_on_timeout: bool,
        ephemeral: bool,
        rollback: object,
    ) -> tuple[Entry, Coroutine[Any, Any, object] | None]:
        """Begin a step; the coroutine is None when it replays a recorded result."""
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be a callable taking no arguments")
        if (
            max_retries is not DEFAULT_MAX_RETRIES  # W1/W2: defaults need no checks
            or retry_backoff_base is not DEFAULT_RETRY_BACKOFF_BASE
            or retry_backoff_max is not DEFAULT_RETRY_BACKOFF_MAX
            or timeout is not DEFAULT_STEP_TIMEOUT
        ):
            timeout = _check_step_options(
                name, max_retries, retry_backoff_base, retry_backoff_max, timeout
            )
        scope = self._scope
        if rollback is not None:
            if not callable(rollback):
                raise TypeError(
                    f"step {name!r}: rollback must be an async function (rctx, output)"
                )
            if not scope.run.checkpointed:
                raise RollbackCheckpointError(
                    f"step {name!r} has a rollback handler but no rollback checkpoint "
                    "was reached before it; call await ctx.rollback_checkpoint(name) "
                    "first"
                )
        entry, fresh = scope.begin(name, STEP)
        if not fresh and entry.status == COMPLETED:
            if rollback is not None:
                _rollback.register(scope.run, entry, name, rollback)
            return entry, None  # W2 hot path: no coroutine, nothing in progress
        return entry, _steps.run_step(
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
            rollback,
        )

    def try_step(
        self,
        name: str,
        fn: Callable[[], object],
        *,
        catch: Collection[str] = ("critical", "timeout", "exhausted", "rollback"),
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        timeout: float | None = DEFAULT_STEP_TIMEOUT,
        retry_on_timeout: bool = False,
        ephemeral: bool = False,
        rollback: object = None,
    ) -> Awaitable[TryStepResult]:
        """Like `step`, but return failures of the *catch* kinds as a result.

        Kinds: ``"critical"``, ``"timeout"``, ``"exhausted"``, ``"rollback"``.
        Uncaught kinds raise as from `step`.
        """
        _check_kinds(catch, _tries.STEP_KINDS, "try_step")
        entry, run = self._begin_step(
            name,
            fn,
            max_retries,
            retry_backoff_base,
            retry_backoff_max,
            timeout,
            retry_on_timeout,
            ephemeral,
            rollback,
        )
        step = _steps.replayed(entry) if run is None else run
        return self._scope.track(
            ("step", name), _tries.try_step(entry, name, step, frozenset(catch)), step
        )

    def try_block(
        self,
        name: str,
        fn: Callable[[WorkflowContext], Awaitable[object]],
        *,
        catch: Collection[str] = ("step", "join", "race", "rollback"),
    ) -> Awaitable[TryBlockResult]:
        """Run ``await fn(ctx)`` as the named sub-scope *name*, catching failures.

        Kinds: ``"step"`` (a step's critical, timeout, exhausted or unstorable
        failure), ``"join"``, ``"race"``, ``"rollback"``. Others propagate.
        """
        _check_kinds(catch, _tries.BLOCK_KINDS, "try_block")
        scope = self._scope
        entry, _ = scope.begin(name, _tries.TRY)
        return scope.track(
            f"try_block {name!r}",
            _tries.try_block(scope, entry, name, fn, frozenset(catch), WorkflowContext),
        )

    @property
    def queue(self) -> WorkflowQueue:
        """This workflow's message queue: ``ctx.queue.next`` and ``ctx.queue.send``."""
        return WorkflowQueue(self._scope)

    def join(
        self,
        name: str,
        branches: Mapping[str, Callable[[WorkflowContext], Awaitable[T]]],
    ) -> Awaitable[dict[str, T]]:
        """Run every branch ``async (ctx) -> T`` concurrently; return their values.

        Each branch has its own history scope. If any branch fails, the others still
        finish, then `JoinError` is raised with ``.errors`` for every failure.
        """
        scope = self._scope
        _check_branches(branches, "join", name)
        entry, _ = scope.begin(name, _branches.JOIN)
        return scope.track(
            f"join {name!r}",
            _branches.join(scope, entry, name, branches, WorkflowContext),  # type: ignore[arg-type]
        )

    def group(
        self,
        name: str,
        body: Callable[[BranchGroup], Awaitable[T]],
    ) -> Awaitable[T]:
        """Run ``await body(group)``, which starts branches as it goes; return its value.

        ``group.start(branch, fn)`` runs ``await fn(ctx)`` in its own history scope
        while the body goes on; ``await group.next()`` returns ``(branch, value)``
        of the next one to finish. That order is recorded, so a replay sees the
        branches finish in the same order and the body (which must be
        deterministic, like all workflow code) starts the same ones. Branches still
        running when the body returns are cancelled.
        """
        if not callable(body):
            raise TypeError(f"group {name!r}: body must be an async function (group)")
        scope = self._scope
        entry, _ = scope.begin(name, _branches.GROUP)
        return scope.track(
            f"group {name!r}",
            _branches.group(scope, entry, name, body, WorkflowContext),  # type: ignore[arg-type]
        )

    def race(
        self,
        name: str,
        branches: Mapping[str, Callable[[WorkflowContext], Awaitable[object]]],
    ) -> Awaitable[RaceResult]:
        """Run the branches concurrently; the first to succeed wins, the rest are cancelled.

        Returns ``RaceResult(winner, value)``; the winner is recorded, so a replay
        returns the same one. If every branch fails, `RaceError` has ``.errors``.
        """
        scope = self._scope
        _check_branches(branches, "race", name)
        entry, _ = scope.begin(name, _branches.RACE)
        return scope.track(
            f"race {name!r}",
            _branches.race(scope, entry, name, branches, WorkflowContext),
        )

    def loop(
        self,
        name: str,
        fn: Callable[[WorkflowContext, Any], Awaitable[object]],
        *,
        state: object = None,
        commit_interval: int = DEFAULT_LOOP_COMMIT_INTERVAL,
        history_every: int = DEFAULT_LOOP_HISTORY_EVERY,
        history_keep: int = DEFAULT_LOOP_HISTORY_KEEP,
    ) -> Awaitable[Any]:
        """Run ``fn(ctx, state)`` until it returns ``Loop.break_(value)``; return value.

        ``Loop.continue_(new_state)`` (or ``None``, keeping the state) runs another
        iteration. State is checkpointed every *commit_interval* iterations, and
        every *history_every* iterations the history of older iterations is pruned,
        keeping the last *history_keep*, so a loop of any length stays bounded.
        """
        for option, value in (
            ("commit_interval", commit_interval),
            ("history_every", history_every),
            ("history_keep", history_keep),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # type: ignore[redundant-expr]
                raise ValueError(
                    f"loop {name!r}: {option} must be an int >= 1, not {value!r}"
                )
        if not callable(fn):
            raise TypeError(f"loop {name!r}: fn must be an async function (ctx, state)")
        scope = self._scope
        entry, fresh = scope.begin(name, _loops.LOOP)
        return scope.track(
            f"loop {name!r}",
            _loops.loop(
                scope,
                entry,
                fresh,
                name,
                fn,
                state,
                commit_interval,
                history_every,
                history_keep,
                WorkflowContext,
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

    def rollback_checkpoint(self, name: str) -> Awaitable[None]:
        """Enable rollback from here: steps after it may carry ``rollback=`` handlers.

        When the workflow later fails, the handlers of the steps completed after the
        checkpoint run in reverse completion order, each once, surviving restarts.
        """
        _rollback.checkpoint(self._scope, name)
        return _versioning.Done(None)

    def get_version(self, name: str, latest: int) -> Awaitable[int]:
        """Return the version recorded for *name*, recording one on first call.

        A workflow whose history already holds entries this run has not replayed
        (it started before this call was added to the code) gets 1; a new one gets
        *latest*. Branch on the result to keep old workflows on their old path.
        """
        if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:  # type: ignore[redundant-expr]
            raise ValueError(
                f"get_version {name!r}: latest must be an int >= 1, not {latest!r}"
            )
        return _versioning.Done(_versioning.get_version(self._scope, name, latest))

    def removed(self, name: str, original_type: str) -> Awaitable[None]:
        """Stand in for the entry *name* that the code no longer creates.

        An old history's entry of *original_type* (and everything under it) is
        satisfied without running anything; a new run records a removed marker.
        """
        if original_type not in _versioning.REMOVABLE_KINDS:
            raise ValueError(
                f"removed {name!r}: original_type must be one of "
                f"{sorted(_versioning.REMOVABLE_KINDS)}, not {original_type!r}"
            )
        _versioning.removed(self._scope, name, original_type)
        return _versioning.Done(None)

    def is_evicted(self) -> bool:
        """True once eviction was requested; long steps should check it."""
        return self._scope.run.evict_requested
