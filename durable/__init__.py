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
    UnregisteredWorkflowError,
    UnstorableValueError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNameMismatchError,
)
from ._handle import WorkflowHandle, list_workflows, replay_from_step, run_workflow
from ._inspect import HistoryNode, WorkflowInfo, WorkflowPage, WorkflowSummary
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
from ._worker import DEFAULT_CONCURRENCY, Worker
from ._workflow import Workflow, workflow

__all__ = [
    "DEFAULT_CONCURRENCY",
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
    "HistoryNode",
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
    "UnregisteredWorkflowError",
    "UnstorableValueError",
    "Worker",
    "Workflow",
    "WorkflowBusyError",
    "WorkflowCancelledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowErrorEvent",
    "WorkflowFailedError",
    "WorkflowFinishedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNameMismatchError",
    "WorkflowPage",
    "WorkflowQueue",
    "WorkflowResult",
    "WorkflowState",
    "WorkflowSummary",
    "__version__",
    "list_workflows",
    "replay_from_step",
    "run_workflow",
    "workflow",
]


def _rehome() -> None:
    """Make tracebacks and reprs say durable.X, not durable._errors.X."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("durable."):
            obj.__module__ = __name__


_rehome()
del _rehome
