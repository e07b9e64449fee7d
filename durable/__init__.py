"""Durable async workflows that replay from a sorted key-value history."""

import importlib
import typing

from ._clock import Clock, SystemClock
from ._drivers import Alarm, Batch, Driver, LevelDBDriver, MemoryDriver, Subscription
from ._engine._branches import BranchGroup
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
    WriteConflictError,
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

if typing.TYPE_CHECKING:
    from ._drivers._postgres import PostgresDriver

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
    "BranchGroup",
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
    "PostgresDriver",
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
    "WriteConflictError",
    "__version__",
    "list_workflows",
    "replay_from_step",
    "run_workflow",
    "workflow",
]


# Names whose module needs an optional extra: imported on first access (see __getattr__).
_LAZY = {"PostgresDriver": ("._drivers._postgres", "postgres")}


def __getattr__(name: str) -> object:
    """Import names that need an optional extra on first use, not with durable."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, extra = _LAZY[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"durable.{name} needs the optional dependencies of durable[{extra}] "
            f"({exc.name} is missing); install them with "
            f"pip install 'durable[{extra}]'"
        ) from exc
    obj = getattr(module, name)
    obj.__module__ = __name__
    globals()[name] = obj  # later lookups skip __getattr__
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _rehome() -> None:
    """Make tracebacks and reprs say durable.X, not durable._errors.X."""
    for name in __all__:
        if name in _LAZY:
            continue  # renamed when first imported
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("durable."):
            obj.__module__ = __name__


_rehome()
del _rehome
