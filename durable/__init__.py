"""Durable async workflows that replay from a sorted key-value history."""

from ._clock import Clock, SystemClock
from ._drivers import Alarm, Batch, Driver, LevelDBDriver, MemoryDriver, Subscription
from ._engine._context import WorkflowContext, WorkflowQueue
from ._engine._rollback import RollbackContext
from ._errors import (
    CorruptRecordError,
    CriticalError,
    DurableError,
    EntryInProgressError,
    EvictedError,
    HistoryDivergedError,
    JoinError,
    RaceError,
    ReplayTargetError,
    RollbackCheckpointError,
    RollbackError,
    StepExhaustedError,
    StepTimeoutError,
    StorageError,
    StoreLockedError,
    UnknownWorkflowError,
    UnstorableValueError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowFinishedError,
)
from ._handle import WorkflowHandle, replay_from_step, run_workflow
from ._types import (
    DEFAULT_LOOP_COMMIT_INTERVAL,
    DEFAULT_LOOP_HISTORY_EVERY,
    DEFAULT_LOOP_HISTORY_KEEP,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    Loop,
    RaceResult,
    RollbackErrorEvent,
    StepErrorEvent,
    TryBlockFailure,
    TryBlockResult,
    TryStepFailure,
    TryStepResult,
    WorkflowErrorEvent,
    WorkflowResult,
    WorkflowState,
)
from ._version import __version__

__all__ = [
    "DEFAULT_LOOP_COMMIT_INTERVAL",
    "DEFAULT_LOOP_HISTORY_EVERY",
    "DEFAULT_LOOP_HISTORY_KEEP",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BACKOFF_BASE",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "DEFAULT_STEP_TIMEOUT",
    "Alarm",
    "Batch",
    "Clock",
    "CorruptRecordError",
    "CriticalError",
    "Driver",
    "DurableError",
    "EntryInProgressError",
    "EvictedError",
    "HistoryDivergedError",
    "JoinError",
    "LevelDBDriver",
    "Loop",
    "MemoryDriver",
    "RaceError",
    "RaceResult",
    "ReplayTargetError",
    "RollbackCheckpointError",
    "RollbackContext",
    "RollbackError",
    "RollbackErrorEvent",
    "StepErrorEvent",
    "StepExhaustedError",
    "StepTimeoutError",
    "StorageError",
    "StoreLockedError",
    "Subscription",
    "SystemClock",
    "TryBlockFailure",
    "TryBlockResult",
    "TryStepFailure",
    "TryStepResult",
    "UnknownWorkflowError",
    "UnstorableValueError",
    "WorkflowBusyError",
    "WorkflowCancelledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowErrorEvent",
    "WorkflowFailedError",
    "WorkflowFinishedError",
    "WorkflowHandle",
    "WorkflowQueue",
    "WorkflowResult",
    "WorkflowState",
    "__version__",
    "replay_from_step",
    "run_workflow",
]


def _rehome() -> None:
    """Make tracebacks and reprs say durable.X, not durable._errors.X."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("durable."):
            obj.__module__ = __name__


_rehome()
del _rehome
