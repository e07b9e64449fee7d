"""The one error shape of the HTTP API, and which status each error gets.

Every error response is ``{"error": {"type": "<ErrorClassName>", "message": "..."}}``.
A `DurableError` keeps its class name and message (they say what to do next); a
request the API refuses before reaching the store is a `RequestError` with one of
the type names below.

Rule: the status of a durable error depends on its class alone (`STATUS_BY_ERROR`,
looked up along the MRO), so the same failure always gets the same status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from starlette.responses import JSONResponse

from .._errors import (
    CorruptRecordError,
    ReplayTargetError,
    StorageError,
    UnknownWorkflowError,
    UnregisteredWorkflowError,
    UnstorableValueError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNameMismatchError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._errors import DurableError

BAD_REQUEST: Final = "BadRequestError"  # 400: bad JSON, fields, query or cursor
UNAUTHORIZED: Final = "UnauthorizedError"  # 401: missing or wrong bearer token
NOT_FOUND: Final = "NotFoundError"  # 404: no such route
METHOD_NOT_ALLOWED: Final = "MethodNotAllowedError"  # 405
PAYLOAD_TOO_LARGE: Final = "PayloadTooLargeError"  # 413: body over max_body_size
INTERNAL: Final = "InternalServerError"  # 500: a bug; the details are logged

STATUS_BY_ERROR: Final[Mapping[type[DurableError], int]] = {
    UnknownWorkflowError: 404,
    UnregisteredWorkflowError: 404,
    WorkflowNameMismatchError: 409,
    WorkflowFinishedError: 409,
    WorkflowFailedError: 409,
    WorkflowCancelledError: 409,
    WorkflowBusyError: 409,
    UnstorableValueError: 422,
    ReplayTargetError: 422,
    CorruptRecordError: 500,  # retrying will not help
    StorageError: 503,  # the store is unreachable or locked: try again later
}


class RequestError(Exception):
    """A request the API refuses before touching the store."""

    def __init__(
        self,
        status: int,
        type_name: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name
        self.message = message
        self.headers = headers


def bad_request(message: str) -> RequestError:
    """A 400 `RequestError` with *message*."""
    return RequestError(400, BAD_REQUEST, message)


def error_response(
    status: int,
    type_name: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error shape with *status*."""
    body = {"error": {"type": type_name, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def request_error_response(exc: RequestError) -> JSONResponse:
    """The response for a refused request."""
    return error_response(exc.status, exc.type_name, exc.message, exc.headers)


def durable_error_status(exc: DurableError) -> int:
    """The status of a durable error: by its class, else 500."""
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def durable_error_response(exc: DurableError) -> JSONResponse:
    """The response for a durable error raised while serving a request."""
    return error_response(durable_error_status(exc), type(exc).__name__, str(exc))
