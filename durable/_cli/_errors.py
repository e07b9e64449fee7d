"""Exit codes, and the error that ends a command with one.

Rule: a failure prints one ``durable: error: ...`` line to stderr that says what to do,
and exits with an `ExitCode` (the table in docs/cli.md); only a bug shows a traceback.
Commands raise `CommandError` for that, and only `main` prints it. A core error maps to
its code by class name, so that store mode (which raises it) and server mode (which
reads the HTTP API's error "type") exit with the same code.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping


class ExitCode(enum.IntEnum):
    """What the exit status of ``durable`` means (docs/cli.md has the table)."""

    OK = 0
    FAILED = 1  # result: the workflow failed or was cancelled
    USAGE = 2  # bad arguments, invalid JSON, an app that cannot be imported
    NOT_FOUND = 3  # no such workflow id, no workflow registered under the name
    REFUSED = 4  # finished, cancelled, busy, id taken by another name, replay refused
    UNAVAILABLE = 5  # store missing or locked, server unreachable, token refused
    NOT_FINISHED = 6  # result: the workflow has not finished (yet)
    INTERRUPTED = 130  # Ctrl-C


class CommandError(Exception):
    """Ends the command: one error line and *code*; *kind* names the core error."""

    def __init__(self, code: ExitCode, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


# An error's class name (raised in store mode, or the HTTP API's error "type") → code.
_CODES: Final[Mapping[str, ExitCode]] = {
    "UnknownWorkflowError": ExitCode.NOT_FOUND,
    "UnregisteredWorkflowError": ExitCode.NOT_FOUND,
    "WorkflowFinishedError": ExitCode.REFUSED,
    "WorkflowCancelledError": ExitCode.REFUSED,
    "WorkflowBusyError": ExitCode.REFUSED,
    "WorkflowNameMismatchError": ExitCode.REFUSED,
    "ReplayTargetError": ExitCode.REFUSED,
    "WorkflowFailedError": ExitCode.FAILED,
    "StoreLockedError": ExitCode.UNAVAILABLE,
    "CorruptRecordError": ExitCode.UNAVAILABLE,
    "StorageError": ExitCode.UNAVAILABLE,
    "UnauthorizedError": ExitCode.UNAVAILABLE,
    "NotFoundError": ExitCode.UNAVAILABLE,  # no such route: --url is not the API root
    "UnstorableValueError": ExitCode.USAGE,
    "BadRequestError": ExitCode.USAGE,
    "PayloadTooLargeError": ExitCode.USAGE,
    "ValueError": ExitCode.USAGE,
    "TypeError": ExitCode.USAGE,
}
# An HTTP error of a type not in _CODES → code by status (5xx: UNAVAILABLE).
_STATUS_CODES: Final[Mapping[int, ExitCode]] = {
    400: ExitCode.USAGE,
    401: ExitCode.UNAVAILABLE,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.REFUSED,
    413: ExitCode.USAGE,
    422: ExitCode.USAGE,
}


def code_of(exc: BaseException) -> ExitCode:
    """The code of an error raised in store mode: its class's, or a base class's."""
    for cls in type(exc).__mro__:  # e.g. a StorageError subclass → StorageError
        code = _CODES.get(cls.__name__)
        if code is not None:
            return code
    return ExitCode.FAILED


def code_of_answer(kind: str | None, status: int) -> ExitCode:
    """The code of an HTTP error answer: its error type's, else its *status*'s."""
    code = _CODES.get(kind or "") or _STATUS_CODES.get(status)
    if code is None:
        code = ExitCode.UNAVAILABLE if status >= 500 else ExitCode.FAILED
    return code
