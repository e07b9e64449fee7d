"""The public error tree, and the private signals the engine unwinds with.

```
DurableError(Exception)
├── CriticalError, RollbackError           raised by user code; the step fails with no retry
│   └── StepTimeoutError (CriticalError)   a step ran past its timeout
├── StepExhaustedError (.step_name .attempts .error)
├── JoinError, RaceError (.errors: dict[str, BaseException])
├── HistoryDivergedError (.workflow_id .location .expected .found)
├── EntryInProgressError, RollbackCheckpointError
├── EvictedError, WorkflowFailedError (.error), WorkflowCancelledError
├── UnknownWorkflowError (.workflow_id), WorkflowFinishedError (.workflow_id .state)
├── WorkflowBusyError (.workflow_id)
├── WorkflowNameMismatchError(DurableError, ValueError) (.workflow_id .stored .requested)
├── UnregisteredWorkflowError(DurableError, LookupError) (.name .registered)
├── ReplayTargetError(DurableError, LookupError) (.workflow_id .target)
├── UnstorableValueError(DurableError, TypeError) (.what .value_type)
└── StorageError ── StoreLockedError (.path), CorruptRecordError (.key),
                   WriteConflictError (.key)
```

Rule: this module imports nothing from `durable` but `_types`. Every message is built
in `__init__` from keyword-carried facts and says what to do next.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class WorkflowError:
    """A stored description of an exception: its type name, message and traceback.

    Errors are stored as text, never pickled, so a failure stays readable by any
    process and any later version of the code.
    """

    name: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name


class DurableError(Exception):
    """Base class of every error that `durable` raises."""


class CriticalError(DurableError):
    """Raised by step code to fail the step at once, without retries."""


class RollbackError(DurableError):
    """Raised by step code to fail the step without retries and roll the workflow back."""


class StepTimeoutError(CriticalError):
    """A step ran longer than its ``timeout``; critical unless ``retry_on_timeout``."""

    def __init__(self, step_name: str, timeout: float) -> None:
        super().__init__(
            f"step {step_name!r} timed out after {timeout:g} s; raise its timeout= or "
            "pass retry_on_timeout=True to retry it"
        )
        self.step_name = step_name
        self.timeout = timeout


class StepExhaustedError(DurableError):
    """A step failed on its last allowed attempt."""

    def __init__(self, step_name: str, attempts: int, error: WorkflowError) -> None:
        super().__init__(
            f"step {step_name!r} failed after {attempts} attempt"
            f"{'' if attempts == 1 else 's'}; last error: {error}. Fix the cause and "
            "call handle.recover() to run it again"
        )
        self.step_name = step_name
        self.attempts = attempts
        self.error = error


class JoinError(DurableError):
    """One or more branches of ``ctx.join`` failed; ``.errors`` maps branch to error."""

    def __init__(self, name: str, errors: dict[str, BaseException]) -> None:
        super().__init__(f"join {name!r} failed in branches: {', '.join(errors)}")
        self.name = name
        self.errors = errors


class RaceError(DurableError):
    """Every branch of ``ctx.race`` failed; ``.errors`` maps branch to error."""

    def __init__(self, name: str, errors: dict[str, BaseException]) -> None:
        super().__init__(
            f"race {name!r} failed: every branch failed ({', '.join(errors)})"
        )
        self.name = name
        self.errors = errors


class HistoryDivergedError(DurableError):
    """Replayed code asked for a different entry than the history holds."""

    def __init__(
        self,
        workflow_id: str,
        location: str,
        *,
        expected: str,
        found: str,
        hint: str = "",
    ) -> None:
        super().__init__(
            f"workflow {workflow_id!r} diverged at {location}: the history has "
            f"{expected} there but the code asked for {found}. "
            + (
                hint
                or "Keep old runs replayable with ctx.removed() or ctx.get_version()."
            )
        )
        self.workflow_id = workflow_id
        self.location = location
        self.expected = expected
        self.found = found


class EntryInProgressError(DurableError):
    """A context call was made while another call of the same scope was not awaited."""

    def __init__(self, workflow_id: str, pending: str, called: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r}: {called} was called while {pending} had not "
            "finished; await every ctx call before the next one, use ctx.join for "
            "concurrency, and inside a branch or loop body use the ctx it receives"
        )
        self.workflow_id = workflow_id
        self.pending = pending
        self.called = called


class RollbackCheckpointError(DurableError):
    """A step with a rollback handler ran before any ``ctx.rollback_checkpoint``."""


class EvictedError(DurableError):
    """The run stopped at a durable point because it was evicted; it can resume later."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} was evicted; its history is saved and a later "
            "run resumes it"
        )
        self.workflow_id = workflow_id


class WorkflowFailedError(DurableError):
    """The workflow failed; ``.error`` describes the error it failed with."""

    def __init__(self, workflow_id: str, error: WorkflowError) -> None:
        super().__init__(f"workflow {workflow_id!r} failed: {error}")
        self.workflow_id = workflow_id
        self.error = error


class WorkflowCancelledError(DurableError):
    """The workflow was cancelled and will not run again."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is cancelled and will not run again"
        )
        self.workflow_id = workflow_id


class UnknownWorkflowError(DurableError, LookupError):
    """No workflow with this id exists in the store."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"no workflow {workflow_id!r} in this store; check the id and the store "
            "(driver or path), or start the workflow first"
        )
        self.workflow_id = workflow_id


class WorkflowNameMismatchError(DurableError, ValueError):
    """The id is taken by a workflow that runs another registered workflow."""

    def __init__(self, workflow_id: str, *, stored: str | None, requested: str) -> None:
        runs = "a plain function (no name)" if stored is None else repr(stored)
        super().__init__(
            f"workflow {workflow_id!r} already exists and runs {runs}, not "
            f"{requested!r}; start {requested!r} under another id, or address the "
            "existing workflow by its own name"
        )
        self.workflow_id = workflow_id
        self.stored = stored
        self.requested = requested


class UnregisteredWorkflowError(DurableError, LookupError):
    """No workflow function is registered under this name."""

    def __init__(self, name: str | None, *, registered: tuple[str, ...]) -> None:
        known = ", ".join(map(repr, registered)) or "none"
        what = "no name" if name is None else f"the name {name!r}"
        super().__init__(
            f"no workflow with {what} is registered (registered: {known}); "
            "pass it to Worker(workflows=[...]) or worker.register()"
        )
        self.name = name
        self.registered = registered


class WorkflowFinishedError(DurableError):
    """The workflow already completed, so it can take no more messages."""

    def __init__(self, workflow_id: str, state: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is {state} and will never read another "
            "message; start a new workflow instead"
        )
        self.workflow_id = workflow_id
        self.state = state


class WorkflowBusyError(DurableError):
    """The workflow is already running in this process under another handle."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is already running in this process; wait for "
            "that run's result() or evict it before starting another run"
        )
        self.workflow_id = workflow_id


class ReplayTargetError(DurableError, LookupError):
    """`replay_from_step` cannot replay from *target*; the message says why and what to do."""

    def __init__(self, workflow_id: str, target: object, reason: str) -> None:
        super().__init__(
            f"cannot replay workflow {workflow_id!r} from {target!r}: {reason}"
        )
        self.workflow_id = workflow_id
        self.target = target
        self.reason = reason


class UnstorableValueError(DurableError, TypeError):
    """A value cannot be stored with msgpack; ``.what`` names the step or workflow."""

    def __init__(self, what: str, value_type: str, reason: str = "") -> None:
        super().__init__(
            f"{what} produced a value of type {value_type} that cannot be stored"
            f"{f' ({reason})' if reason else ''}; return None, bool, int, float, str, "
            "bytes, list, dict or a documented extension type (datetime, date, "
            "timedelta, Decimal, UUID)"
        )
        self.what = what
        self.value_type = value_type
        self.reason = reason


class StorageError(DurableError):
    """The store could not be read or written."""


class StoreLockedError(StorageError):
    """Another process (or another driver in this one) holds the store open."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the LevelDB store at {path} is locked by another process or driver; "
            "stop that process (or close the other driver) and try again, or use a "
            "different path"
        )
        self.path = path


class WriteConflictError(StorageError):
    """A batch's check failed: a key no longer held what its writer expected.

    Nothing of the batch was written. The engine checks a workflow's lease with
    it, so a worker that lost a workflow to another worker (after a pause, a
    partition, or a lease that ran out) can never write into its history again.
    """

    def __init__(self, key: bytes) -> None:
        super().__init__(
            f"write refused: key {key!r} no longer holds the value this writer "
            "expected, so another process changed it (for a workflow: another worker "
            "took it over). Nothing was written; re-read the store before writing again"
        )
        self.key = key


class CorruptRecordError(StorageError):
    """A stored record could not be decoded; the store was written by something else."""

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(
            f"corrupt record at key {key!r}: {reason}. Nothing was changed; restore the "
            "store from a backup or remove this workflow's keys"
        )
        self.key = key
