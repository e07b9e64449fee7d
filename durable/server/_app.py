"""The ASGI app: a `Worker`'s workflows over HTTP, JSON in and out.

Every success body is one of the `durable._json` shapes (the CLI's ``--json`` prints
the same ones); every error body is ``{"error": {"type", "message"}}`` (`_errors`).

Rules:
* A request is checked completely (token, size, JSON, fields, query) before the
  store is read or written, so a refused request changes nothing.
* An endpoint for one workflow first reads it (404 if unknown), because some handle
  methods would otherwise create it (``cancel``) or store a message for it.
* The status of a durable error depends on its class alone (`STATUS_BY_ERROR`).
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from typing import TYPE_CHECKING, Final

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import (
    DurableError,
    UnknownWorkflowError,
    UnregisteredWorkflowError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowFailedError,
)
from .._inspect import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .._json import history_json, info_json, page_json, result_json
from .._types import WorkflowResult, WorkflowState
from ._auth import BearerAuth
from ._errors import (
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    RequestError,
    bad_request,
    durable_error_response,
    error_response,
    request_error_response,
)
from ._openapi import openapi_spec
from ._requests import (
    int_param,
    parse_object,
    query,
    read_body,
    seconds_param,
    text_field,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from .._handle import WorkflowHandle
    from .._inspect import WorkflowInfo
    from .._worker import Worker

    Endpoint = Callable[[Request], Awaitable[Response]]

DEFAULT_MAX_BODY_SIZE: Final = 1_048_576
"""The largest request body `create_app` and `serve` accept by default (bytes)."""

MAX_RESULT_WAIT: Final = 60.0  # seconds a GET .../result?wait= may hold a request

_NO_ERROR = WorkflowError("Error", "the workflow failed without a stored error")

log = logging.getLogger("durable.server")


def create_app(
    worker: Worker,
    *,
    token: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Starlette:
    """Build the ASGI app serving *worker*'s HTTP API (see docs/http-api.md).

    The app reads and steers the workflows of the worker's store; it does not run
    the worker (`serve` runs both). With *token*, every route but ``/health`` needs
    ``Authorization: Bearer <token>``. Request bodies over *max_body_size* bytes
    get 413.

    Example:
        app = durable.server.create_app(worker, token="s3cret")
    """
    return build(worker, token=token, max_body_size=max_body_size)[0]


def build(
    worker: Worker, *, token: str | None, max_body_size: int
) -> tuple[Starlette, Api]:
    """The app and the `Api` behind it (`serve` closes the `Api` on shutdown)."""
    if token is not None and (not isinstance(token, str) or not token):  # type: ignore[redundant-expr]
        raise ValueError("token must be a non-empty str or None")
    if (
        isinstance(max_body_size, bool)
        or not isinstance(max_body_size, int)  # type: ignore[redundant-expr]
        or max_body_size < 1
    ):
        raise ValueError(f"max_body_size must be an int >= 1, not {max_body_size!r}")
    api = Api(worker, max_body_size=max_body_size)
    spec = openapi_spec(authenticated=token is not None)

    async def openapi(request: Request) -> Response:
        query(request, ())
        return JSONResponse(spec)

    routes = [
        Route("/health", _guard(api.health), methods=["GET"]),
        Route("/openapi.json", _guard(openapi), methods=["GET"]),
        Route("/workflows", _guard(api.workflows), methods=["GET", "POST"]),
        Route("/workflows/{workflow_id}", _guard(api.info), methods=["GET"]),
        Route("/workflows/{workflow_id}/history", _guard(api.history), methods=["GET"]),
        Route("/workflows/{workflow_id}/result", _guard(api.result), methods=["GET"]),
        Route(
            "/workflows/{workflow_id}/messages", _guard(api.message), methods=["POST"]
        ),
        Route("/workflows/{workflow_id}/cancel", _guard(api.cancel), methods=["POST"]),
        Route(
            "/workflows/{workflow_id}/recover", _guard(api.recover), methods=["POST"]
        ),
        Route("/workflows/{workflow_id}/wake", _guard(api.wake), methods=["POST"]),
        Route(
            "/workflows/{workflow_id}/replay-from",
            _guard(api.replay_from),
            methods=["POST"],
        ),
    ]
    middleware = [] if token is None else [Middleware(BearerAuth, token=token)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
    )
    return app, api


def _guard(endpoint: Endpoint) -> Endpoint:
    """Turn what *endpoint* raises into the error shape."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as exc:
            return request_error_response(exc)
        except DurableError as exc:
            return durable_error_response(exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                500, INTERNAL, "the server failed on this request; its log says why"
            )

    return guarded


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown routes (404) and wrong methods (405), in the error shape."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it
        raise exc
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(
            405,
            METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed on {request.url.path}; use {allowed}",
            exc.headers,
        )
    if exc.status_code == 404:
        return error_response(
            404,
            NOT_FOUND,
            f"no route {request.url.path}; GET /openapi.json lists every route",
        )
    return error_response(exc.status_code, "HTTPError", exc.detail, exc.headers)


class Api:
    """The endpoints, over one worker."""

    def __init__(self, worker: Worker, *, max_body_size: int) -> None:
        self.worker = worker
        self.max_body_size = max_body_size
        self.closing = False
        self._start_lock = anyio.Lock()  # one 201 per new id among HTTP callers
        self._waits: set[anyio.CancelScope] = set()

    def close(self) -> None:
        """Shutting down: end every ``result?wait=`` now (they answer 202)."""
        self.closing = True
        for scope in self._waits:
            scope.cancel()

    # --- helpers ------------------------------------------------------------------

    async def _body(
        self, request: Request, *, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> dict[str, object]:
        query(request, ())
        raw = await read_body(request, self.max_body_size)
        return parse_object(raw, required=required, optional=optional)

    async def _existing(self, request: Request) -> tuple[WorkflowHandle, WorkflowInfo]:
        """The handle of the path's workflow and its info; 404 if unknown."""
        handle = self.worker.handle(request.path_params["workflow_id"])
        return handle, await handle.get_info()

    # --- endpoints ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /health``: whether the server serves, and what the worker does."""
        query(request, ())
        body = {
            "status": "stopping" if self.closing else "ok",
            "running": self.worker.running,
            "parked": len(self.worker.parked),
            "workflows": sorted(self.worker.workflows),
        }
        return JSONResponse(body, status_code=503 if self.closing else 200)

    async def workflows(self, request: Request) -> Response:
        """``GET /workflows`` lists, ``POST /workflows`` starts."""
        if request.method == "POST":
            return await self._start(request)
        return await self._list(request)

    async def _list(self, request: Request) -> Response:
        params = query(request, ("state", "name", "limit", "cursor"))
        state = params.get("state")
        if state is not None and state not in set(WorkflowState):
            states = ", ".join(WorkflowState)
            raise bad_request(f"state must be one of {states}, not {state!r}")
        limit = int_param(params, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        try:
            page = await self.worker.list_workflows(
                state=state,
                name=params.get("name"),
                limit=limit,
                cursor=params.get("cursor"),
            )
        except ValueError as exc:  # a cursor of another listing, or no cursor at all
            raise bad_request(str(exc)) from None
        return JSONResponse(page_json(page))

    async def _start(self, request: Request) -> Response:
        body = await self._body(
            request, required=("name", "workflow_id"), optional=("input",)
        )
        name = text_field(body, "name")
        workflow_id = text_field(body, "workflow_id")
        if "/" in workflow_id:
            raise bad_request(
                f"workflow_id {workflow_id!r} contains '/', which no URL of this API "
                "can address; choose an id without '/'"
            )
        if name not in self.worker.workflows:
            raise UnregisteredWorkflowError(
                name, registered=tuple(self.worker.workflows)
            )
        handle = self.worker.handle(workflow_id)
        async with self._start_lock:
            try:
                await handle.get_info()
                existed = True
            except UnknownWorkflowError:
                existed = False
            handle = await self.worker.start(name, workflow_id, body.get("input"))
        info = await handle.get_info()
        if existed:
            return JSONResponse(info_json(info))
        location = "/workflows/" + urllib.parse.quote(workflow_id, safe="")
        return JSONResponse(
            info_json(info), status_code=201, headers={"Location": location}
        )

    async def info(self, request: Request) -> Response:
        """``GET /workflows/{id}``."""
        query(request, ())
        _, info = await self._existing(request)
        return JSONResponse(info_json(info))

    async def history(self, request: Request) -> Response:
        """``GET /workflows/{id}/history``."""
        query(request, ())
        handle = self.worker.handle(request.path_params["workflow_id"])
        return JSONResponse(history_json(await handle.get_history()))

    async def result(self, request: Request) -> Response:
        """``GET /workflows/{id}/result?wait=``: 200 when completed, else 202 or 409."""
        wait = seconds_param(query(request, ("wait",)), "wait", MAX_RESULT_WAIT)
        handle, info = await self._existing(request)
        if not info.state.is_final and wait > 0 and not self.closing:
            with anyio.move_on_after(wait) as scope:
                self._waits.add(scope)
                try:
                    await handle.result()
                except (WorkflowFailedError, WorkflowCancelledError):
                    pass  # answered from the stored state below
                finally:
                    self._waits.discard(scope)
            info = await handle.get_info()
        if info.state == WorkflowState.COMPLETED:
            result = WorkflowResult(WorkflowState.COMPLETED, info.output)
            return JSONResponse(result_json(result))
        if info.state == WorkflowState.FAILED:
            raise WorkflowFailedError(info.workflow_id, info.error or _NO_ERROR)
        if info.state == WorkflowState.CANCELLED:
            raise WorkflowCancelledError(info.workflow_id)
        return JSONResponse(info_json(info), status_code=202)

    async def message(self, request: Request) -> Response:
        """``POST /workflows/{id}/messages``: store a message; 202."""
        body = await self._body(request, required=("name",), optional=("data",))
        name = text_field(body, "name")
        handle, _ = await self._existing(request)
        await handle.message(name, body.get("data"))
        return JSONResponse(info_json(await handle.get_info()), status_code=202)

    async def cancel(self, request: Request) -> Response:
        """``POST /workflows/{id}/cancel``."""
        query(request, ())
        handle, _ = await self._existing(request)
        await handle.cancel()
        return JSONResponse(info_json(await handle.get_info()))

    async def recover(self, request: Request) -> Response:
        """``POST /workflows/{id}/recover``."""
        query(request, ())
        handle, _ = await self._existing(request)
        await handle.recover()
        return JSONResponse(info_json(await handle.get_info()))

    async def wake(self, request: Request) -> Response:
        """``POST /workflows/{id}/wake``."""
        query(request, ())
        handle, _ = await self._existing(request)
        await handle.wake()
        return JSONResponse(info_json(await handle.get_info()))

    async def replay_from(self, request: Request) -> Response:
        """``POST /workflows/{id}/replay-from`` with ``{"step": name | path}``."""
        body = await self._body(request, required=("step",), optional=())
        step = _step(body["step"])
        handle, _ = await self._existing(request)
        await handle.replay_from(step)
        return JSONResponse(info_json(await handle.get_info()))


def _step(value: object) -> str | tuple[str | int, ...]:
    """A step name, or a path given as a JSON array of names and iterations."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        path: list[str | int] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int):
                break
            path.append(item)
        else:
            return tuple(path)
    raise bad_request(
        '"step" must be a step name or a non-empty array of names and loop '
        'iterations, such as ["fanout", "branch-a", "charge"] or '
        f'["batches", 3, "fetch"]; got {value!r}'
    )
