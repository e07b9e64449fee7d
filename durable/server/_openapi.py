"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written by hand, next to the shapes it describes (`durable._json`): the schemas here
list the same fields in the same order. A test checks that the document is valid
OpenAPI and names every route and method of the app.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Final

from .._types import WorkflowState
from .._version import __version__

if TYPE_CHECKING:
    from .._json import JSON

_NUMBER_OR_NULL: Final[JSON] = {"type": ["number", "null"]}
_ANY: Final[JSON] = {}  # any JSON value: a stored value's JSON view
_STATE: Final[JSON] = {
    "type": "string",
    "enum": [str(state) for state in WorkflowState],
}
_NAMES_OR_NULL: Final[JSON] = {"type": ["array", "null"], "items": {"type": "string"}}


def _ref(name: str) -> dict[str, JSON]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(
    properties: dict[str, JSON], required: list[str] | None = None
) -> dict[str, JSON]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else list(required),
    }


_SCHEMAS: Final[dict[str, JSON]] = {
    "WorkflowError": _object(
        {
            "name": {"type": "string", "description": "the exception's type"},
            "message": {"type": "string"},
            "traceback": {"type": "string"},
        }
    ),
    "WorkflowInfo": _object(
        {
            "workflow_id": {"type": "string"},
            "name": {"type": ["string", "null"], "description": "registered name"},
            "state": _STATE,
            "created_at": {"type": "number", "description": "epoch seconds"},
            "updated_at": {"type": "number", "description": "epoch seconds"},
            "input": _ANY,
            "output": _ANY,
            "error": {"oneOf": [_ref("WorkflowError"), {"type": "null"}]},
            "sleep_until": _NUMBER_OR_NULL,
            "waiting_for": _NAMES_OR_NULL,
            "alarm_at": _NUMBER_OR_NULL,
            "pending_messages": {"type": "integer", "minimum": 0},
        }
    ),
    "WorkflowSummary": _object(
        {
            "workflow_id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "state": _STATE,
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "sleep_until": _NUMBER_OR_NULL,
            "waiting_for": _NAMES_OR_NULL,
        }
    ),
    "WorkflowPage": _object(
        {
            "workflows": {"type": "array", "items": _ref("WorkflowSummary")},
            "cursor": {
                "type": ["string", "null"],
                "description": "pass back for the next page; null on the last one",
            },
        }
    ),
    "HistoryNode": _object(
        {
            "kind": {"type": "string"},
            "name": {"type": "string"},
            "status": {"type": "string"},
            "attempts": {"type": "integer"},
            "started_at": _NUMBER_OR_NULL,
            "finished_at": _NUMBER_OR_NULL,
            "retry_at": _NUMBER_OR_NULL,
            "until": _NUMBER_OR_NULL,
            "output": _ANY,
            "error": {"oneOf": [_ref("WorkflowError"), {"type": "null"}]},
            "failure": {"type": ["string", "null"]},
            "rolled_back_at": _NUMBER_OR_NULL,
            "children": {"type": "array", "items": _ref("HistoryNode")},
        }
    ),
    "WorkflowResult": _object(
        {
            "state": {"type": "string", "const": "completed"},
            "output": _ANY,
            "sleep_until": _NUMBER_OR_NULL,
            "waiting_for": _NAMES_OR_NULL,
        }
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "stopping"]},
            "running": {"type": "integer", "description": "workflows running now"},
            "parked": {"type": "integer", "description": "workflows skipped"},
            "workflows": {
                "type": "array",
                "items": {"type": "string"},
                "description": "the registered workflow names",
            },
        }
    ),
    "Error": _object(
        {
            "error": _object(
                {
                    "type": {"type": "string", "description": "the error's class"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "StartRequest": _object(
        {
            "name": {"type": "string", "minLength": 1},
            "workflow_id": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
            "input": _ANY,
        },
        required=["name", "workflow_id"],
    ),
    "MessageRequest": _object(
        {"name": {"type": "string", "minLength": 1}, "data": _ANY},
        required=["name"],
    ),
    "ReplayFromRequest": _object(
        {
            "step": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": ["string", "integer"]},
                    },
                ],
                "description": 'a step name, or a path such as ["batches", 3, "fetch"]',
            }
        }
    ),
}

_ERRORS: Final[dict[str, str]] = {
    "400": "the request is malformed (JSON, fields, query parameters or cursor)",
    "401": "the bearer token is missing or wrong",
    "404": "no such workflow, workflow name or route",
    "409": "the workflow's state or name refuses the request",
    "413": "the request body is larger than the server's limit",
    "422": "a value cannot be stored, or the replay target is refused",
    "503": "the store cannot be reached; try again later",
}


def _json_content(schema: JSON) -> dict[str, JSON]:
    return {"application/json": {"schema": schema}}


def _response(description: str, schema: JSON) -> dict[str, JSON]:
    return {"description": description, "content": _json_content(schema)}


def _operation(
    summary: str,
    responses: dict[str, JSON],
    *,
    errors: tuple[str, ...],
    body: str | None = None,
    parameters: list[JSON] | None = None,
    authenticated: bool,
) -> dict[str, JSON]:
    operation: dict[str, JSON] = {"summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": _json_content(_ref(body)),
        }
    codes = [*errors, "503", *(["401"] if authenticated else [])]
    for code in sorted(codes):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    operation["responses"] = responses
    return operation


def _query(name: str, schema: JSON, description: str) -> JSON:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def openapi_spec(*, authenticated: bool) -> dict[str, JSON]:
    """The OpenAPI document of an app, with bearer auth when *authenticated*."""
    info = _response("the workflow", _ref("WorkflowInfo"))
    id_param: JSON = {
        "name": "workflow_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }

    op = functools.partial(_operation, authenticated=authenticated)

    def steer(summary: str, errors: tuple[str, ...]) -> dict[str, JSON]:
        return {
            "parameters": [id_param],
            "post": op(summary, {"200": info}, errors=errors),
        }

    paths: dict[str, JSON] = {
        "/health": {
            "get": {
                "summary": "Health check (no token needed)",
                "security": [],
                "responses": {
                    "200": _response("serving", _ref("Health")),
                    "503": _response("shutting down", _ref("Health")),
                },
            }
        },
        "/openapi.json": {
            "get": op(
                "This document",
                {"200": _response("OpenAPI 3.1", {"type": "object"})},
                errors=("400",),
            )
        },
        "/workflows": {
            "get": op(
                "List workflows, by state then id",
                {"200": _response("a page", _ref("WorkflowPage"))},
                errors=("400",),
                parameters=[
                    _query("state", _STATE, "only workflows in this state"),
                    _query("name", {"type": "string"}, "only this registered name"),
                    _query(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                        "page size",
                    ),
                    _query("cursor", {"type": "string"}, "from the previous page"),
                ],
            ),
            "post": op(
                "Start a workflow (idempotent for the same name and id)",
                {
                    "201": {
                        **_response("started", _ref("WorkflowInfo")),
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "the workflow's URL",
                            }
                        },
                    },
                    "200": _response("it already existed", _ref("WorkflowInfo")),
                },
                errors=("400", "404", "409", "413", "422"),
                body="StartRequest",
            ),
        },
        "/workflows/{workflow_id}": {
            "parameters": [id_param],
            "get": op("Read a workflow", {"200": info}, errors=("400", "404")),
        },
        "/workflows/{workflow_id}/history": {
            "parameters": [id_param],
            "get": op(
                "Read a workflow's history tree",
                {
                    "200": _response(
                        "top-level entries in call order",
                        {"type": "array", "items": _ref("HistoryNode")},
                    )
                },
                errors=("400", "404"),
            ),
        },
        "/workflows/{workflow_id}/result": {
            "parameters": [id_param],
            "get": op(
                "The result: 200 completed, 409 failed or cancelled, 202 not yet",
                {
                    "200": _response("completed", _ref("WorkflowResult")),
                    "202": _response(
                        "not finished (after waiting)", _ref("WorkflowInfo")
                    ),
                },
                errors=("400", "404", "409"),
                parameters=[
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                        "seconds to wait for the workflow to finish",
                    )
                ],
            ),
        },
        "/workflows/{workflow_id}/messages": {
            "parameters": [id_param],
            "post": op(
                "Send a message to the workflow's queue",
                {"202": _response("stored", _ref("WorkflowInfo"))},
                errors=("400", "404", "409", "413", "422"),
                body="MessageRequest",
            ),
        },
        "/workflows/{workflow_id}/cancel": steer("Cancel for good", ("400", "404")),
        "/workflows/{workflow_id}/recover": steer(
            "Run a failed workflow's failed steps again", ("400", "404")
        ),
        "/workflows/{workflow_id}/wake": steer(
            "Make the workflow due now", ("400", "404")
        ),
        "/workflows/{workflow_id}/replay-from": {
            "parameters": [id_param],
            "post": op(
                "Delete the history from a step on and run it again",
                {"200": info},
                errors=("400", "404", "409", "413", "422"),
                body="ReplayFromRequest",
            ),
        },
    }
    responses: dict[str, JSON] = {
        f"E{code}": _response(description, _ref("Error"))
        for code, description in _ERRORS.items()
    }
    components: dict[str, JSON] = {"schemas": _SCHEMAS, "responses": responses}
    spec: dict[str, JSON] = {
        "openapi": "3.1.0",
        "info": {
            "title": "durable worker",
            "version": __version__,
            "description": "The HTTP API of a durable worker; see docs/http-api.md.",
        },
        "paths": paths,
        "components": components,
    }
    if authenticated:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec
