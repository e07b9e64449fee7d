"""Durable async workflows that replay from a sorted key-value history."""

from ._clock import Clock, SystemClock
from ._drivers import Alarm, Batch, Driver, LevelDBDriver, MemoryDriver, Subscription
from ._engine._context import WorkflowContext
from ._errors import (
    CorruptRecordError,
    CriticalError,
    DurableError,
    EntryInProgressError,
    EvictedError,
    HistoryDivergedError,
    JoinError,
    RaceError,
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
)
from ._handle import WorkflowHandle, run_workflow
from ._types import (
    DEFAULT_LOOP_COMMIT_INTERVAL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    StepErrorEvent,
    WorkflowErrorEvent,
    WorkflowResult,
    WorkflowState,
)
from ._version import __version__

__all__ = [
    "DEFAULT_LOOP_COMMIT_INTERVAL",
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
    "MemoryDriver",
    "RaceError",
    "RollbackCheckpointError",
    "RollbackError",
    "StepErrorEvent",
    "StepExhaustedError",
    "StepTimeoutError",
    "StorageError",
    "StoreLockedError",
    "Subscription",
    "SystemClock",
    "UnknownWorkflowError",
    "UnstorableValueError",
    "WorkflowBusyError",
    "WorkflowCancelledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowErrorEvent",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowResult",
    "WorkflowState",
    "__version__",
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
