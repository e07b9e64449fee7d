"""Shared value types and defaults: workflow states, run results, error events.

Rule: nothing here imports from the rest of `durable` but `_errors`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias, final

import attrs

if TYPE_CHECKING:
    from ._errors import WorkflowError

DEFAULT_MAX_RETRIES: Final = 3
DEFAULT_RETRY_BACKOFF_BASE: Final = 0.1  # seconds
DEFAULT_RETRY_BACKOFF_MAX: Final = 30.0  # seconds
DEFAULT_STEP_TIMEOUT: Final = 30.0  # seconds
DEFAULT_LOOP_COMMIT_INTERVAL: Final = 20
DEFAULT_LOOP_HISTORY_EVERY: Final = 20
DEFAULT_LOOP_HISTORY_KEEP: Final = 20

StoredValue: TypeAlias = object
"""A value that msgpack (with durable's extension types) can store."""


class WorkflowState(enum.StrEnum):
    """Where a workflow is in its life; stored with the workflow's metadata."""

    PENDING = "pending"  # ready to run, no process runs it
    RUNNING = "running"
    SLEEPING = "sleeping"  # waits for a deadline or a message
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for states a run never leaves by itself."""
        return self in _FINAL


_FINAL = frozenset(
    {WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CANCELLED}
)


@attrs.frozen
class WorkflowResult:
    """What a run ended with: a final state and output, or what it waits for."""

    state: WorkflowState
    output: object = None
    sleep_until: float | None = None  # epoch s; set when the run yielded to wait
    waiting_for: tuple[str, ...] | None = None  # message names it waits for


@attrs.frozen
class StepErrorEvent:
    """Passed to ``on_error`` when a step attempt fails."""

    workflow_id: str
    step_name: str
    attempt: int  # 1 for the first attempt
    max_retries: int
    will_retry: bool
    retry_at: float | None  # epoch s of the next attempt, if any
    kind: str  # "error" (retryable), "critical", "timeout", "rollback", "exhausted", "unstorable"
    error: WorkflowError

    @property
    def remaining_retries(self) -> int:
        """Retries still allowed after this attempt."""
        return max(0, self.max_retries - (self.attempt - 1))


@attrs.frozen
class RollbackErrorEvent:
    """Passed to ``on_error`` when a rollback handler fails (it is retried later)."""

    workflow_id: str
    step_name: str
    error: WorkflowError


@attrs.frozen
class WorkflowErrorEvent:
    """Passed to ``on_error`` when the workflow fails."""

    workflow_id: str
    error: WorkflowError


class RaceResult(NamedTuple):
    """The branch that won a ``ctx.race`` and its value; unpacks as a tuple."""

    winner: str
    value: object


@final
class Loop:
    """What a ``ctx.loop`` body returns: ``Loop.continue_(state)`` or ``Loop.break_(value)``.

    Returning ``None`` continues with the same state.
    """

    @attrs.frozen
    class Continue:
        """Run another iteration with *state*."""

        state: object = None

    @attrs.frozen
    class Break:
        """End the loop; ``ctx.loop`` returns *value*."""

        value: object = None

    @staticmethod
    def continue_(state: object = None) -> Loop.Continue:
        """Continue with *state* as the next iteration's state."""
        return Loop.Continue(state)

    @staticmethod
    def break_(value: object = None) -> Loop.Break:
        """Leave the loop, returning *value* from ``ctx.loop``."""
        return Loop.Break(value)


@attrs.frozen
class TryStepFailure:
    """Why a ``ctx.try_step`` failed: kind, the step's name, attempts and the error."""

    kind: str  # "critical", "timeout", "exhausted" or "rollback"
    step_name: str
    attempts: int
    error: BaseException


@attrs.frozen
class TryStepResult:
    """The outcome of ``ctx.try_step``: ``ok`` with ``value``, or ``failure``."""

    ok: bool
    value: object = None
    failure: TryStepFailure | None = None


@attrs.frozen
class TryBlockFailure:
    """Why a ``ctx.try_block`` failed: kind (step, join, race, rollback), name, error."""

    kind: str
    name: str  # the block's name
    error: BaseException


@attrs.frozen
class TryBlockResult:
    """The outcome of ``ctx.try_block``: ``ok`` with ``value``, or ``failure``."""

    ok: bool
    value: object = None
    failure: TryBlockFailure | None = None
