"""Errors of the DAG layer: what executors raise, and what the runtime refuses."""

from __future__ import annotations

from typing import Final

import durable

DEFAULT_ERROR_CODE: Final = "workflow_error"
EXECUTOR_ERROR: Final = "executor_error"  # any other exception an executor raised
MISSING_EXECUTOR: Final = "missing_executor"
BAD_INPUT: Final = "bad_input"
BAD_EMIT: Final = "bad_emit"
PROJECTION_ERROR: Final = "projection_error"


class StepError(Exception):
    """A step failure with a stable *code* for operators, metrics and filters.

    Raise it from an executor, usually through `Retryable` or `Permanent`. Only a
    retryable error is retried, and only while the step's `RetryPolicy` has
    attempts left.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        details: object = None,
    ) -> None:
        super().__init__(message)
        self.code = code or DEFAULT_ERROR_CODE
        self.message = message
        self.retryable = retryable
        self.details = details

    def __repr__(self) -> str:
        kind = "Retryable" if self.retryable else "Permanent"
        return f"{kind}({self.code!r}, {self.message!r})"


def Retryable(  # noqa: N802 - reads as the error kind it builds
    code: str, error: BaseException | str | None = None, *, details: object = None
) -> StepError:
    """A failure worth another attempt (timeouts, rate limits, flaky services)."""
    return _build(code, error, details, retryable=True)


def Permanent(  # noqa: N802 - reads as the error kind it builds
    code: str, error: BaseException | str | None = None, *, details: object = None
) -> StepError:
    """A failure no retry can fix (bad input, a missing record)."""
    return _build(code, error, details, retryable=False)


def _build(
    code: str, error: BaseException | str | None, details: object, *, retryable: bool
) -> StepError:
    message = code if error is None else str(error) or type(error).__name__
    built = StepError(code, message, retryable=retryable, details=details)
    if isinstance(error, BaseException):
        built.__cause__ = error
    return built


class DagError(durable.DurableError):
    """Base class of the errors `durable.dag` raises to its callers."""


class GraphError(DagError, ValueError):
    """A run's graph is malformed: a duplicate id, an unknown dependency, a cycle.

    Nothing was stored: fix the entrypoint (or the emitting executor) and retry.
    """


class UnknownPackageError(DagError, LookupError):
    """No package of this name is registered with the runtime."""

    def __init__(self, name: str, registered: tuple[str, ...]) -> None:
        known = ", ".join(sorted(registered)) or "none"
        super().__init__(
            f"package {name!r} is not registered (registered: {known}); "
            "call runtime.register_package first"
        )
        self.name = name


class UnknownRunError(DagError, LookupError):
    """The store holds no DAG run with this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no DAG run {run_id!r} in this store")
        self.run_id = run_id


class UnknownStepError(DagError, LookupError):
    """The run has no step with this id."""

    def __init__(self, run_id: str, step_id: str) -> None:
        super().__init__(f"run {run_id!r} has no step {step_id!r}")
        self.run_id = run_id
        self.step_id = step_id


class StepStateError(DagError):
    """An operator action does not fit the step's state (retrying one that did not fail)."""


class RunExistsError(DagError):
    """The run id is taken by another package's run or by a non-DAG workflow."""


class NotConfiguredError(DagError):
    """A step used an artifact or projection store the runtime was not given."""
