"""DAG runs on durable workflows: packages, step graphs, executors, queues.

A *package* describes a run's initial graph of steps; *executors* do the steps'
work and may emit more steps; *queues* bound how many steps run at once and how
fast. Each run is one durable workflow interpreting its graph, so waiting,
retries, crash recovery and history all come from `durable` (see docs/dag.md).
"""

from ._artifacts import (
    ArtifactNotFoundError,
    ArtifactReader,
    ArtifactRef,
    ArtifactStore,
    FileArtifactStore,
)
from ._context import StepContext
from ._errors import (
    DagError,
    GraphError,
    NotConfiguredError,
    Permanent,
    Retryable,
    RunExistsError,
    StepError,
    StepStateError,
    UnknownPackageError,
    UnknownRunError,
    UnknownStepError,
)
from ._model import (
    DEFAULT_QUEUE,
    DEFAULT_QUEUE_POLICY,
    Artifact,
    CycleResult,
    Dependency,
    ErrorInfo,
    QueuePolicy,
    Record,
    RetryPolicy,
    RunHandle,
    RunInfo,
    RunStatus,
    StepHandle,
    StepInfo,
    StepResult,
    StepStatus,
    optional,
    require,
)
from ._package import Executor, Package, PackageBuilder, RunBuilder, package
from ._projections import (
    Projection,
    ProjectionSession,
    ProjectionStore,
    SQLiteProjectionStore,
)
from ._runtime import OP_MESSAGE, RUN_WORKFLOW, Runtime

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_QUEUE_POLICY",
    "OP_MESSAGE",
    "RUN_WORKFLOW",
    "Artifact",
    "ArtifactNotFoundError",
    "ArtifactReader",
    "ArtifactRef",
    "ArtifactStore",
    "CycleResult",
    "DagError",
    "Dependency",
    "ErrorInfo",
    "Executor",
    "FileArtifactStore",
    "GraphError",
    "NotConfiguredError",
    "Package",
    "PackageBuilder",
    "Permanent",
    "Projection",
    "ProjectionSession",
    "ProjectionStore",
    "QueuePolicy",
    "Record",
    "RetryPolicy",
    "Retryable",
    "RunBuilder",
    "RunExistsError",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "Runtime",
    "SQLiteProjectionStore",
    "StepContext",
    "StepError",
    "StepHandle",
    "StepInfo",
    "StepResult",
    "StepStateError",
    "StepStatus",
    "UnknownPackageError",
    "UnknownRunError",
    "UnknownStepError",
    "optional",
    "package",
    "require",
]


def _rehome() -> None:
    """Make tracebacks and reprs say durable.dag.X, not durable.dag._model.X."""
    for name in __all__:
        obj = globals()[name]
        if not isinstance(obj, type) and not callable(obj):
            continue  # constants keep their class's module
        if getattr(obj, "__module__", "").startswith("durable.dag."):
            obj.__module__ = __name__


_rehome()
del _rehome
