"""Shared value types and defaults: workflow states, run results, error events.

Rule: nothing here imports from the rest of `durable` but `_errors`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs

if TYPE_CHECKING:
    from ._errors import WorkflowError

DEFAULT_MAX_RETRIES: Final = 3
DEFAULT_RETRY_BACKOFF_BASE: Final = 0.1  # seconds
DEFAULT_RETRY_BACKOFF_MAX: Final = 30.0  # seconds
DEFAULT_STEP_TIMEOUT: Final = 30.0  # seconds
DEFAULT_LOOP_COMMIT_INTERVAL: Final = 20

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
class WorkflowErrorEvent:
    """Passed to ``on_error`` when the workflow fails."""

    workflow_id: str
    error: WorkflowError
