"""Reading requests: bodies within a size limit, JSON objects, fields, query strings.

Rule: everything here only reads the request; a value that does not fit raises a
`RequestError` (400 or 413) before any endpoint reaches the store.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import TYPE_CHECKING

from ._errors import PAYLOAD_TOO_LARGE, RequestError, bad_request

if TYPE_CHECKING:
    from collections.abc import Collection

    from starlette.requests import Request


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as it is longer than *limit* bytes.

    A declared ``Content-Length`` over the limit is refused before reading, and the
    stream is counted as it arrives, so a body without (or lying about) its length
    is cut off at the limit too.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request(f"Content-Length must be a number, not {declared!r}")
        if int(declared) > limit:
            raise _too_large(limit)
    body = bytearray()
    # aclosing: leaving early closes the stream here, not in the garbage collector
    async with contextlib.aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413,
        PAYLOAD_TOO_LARGE,
        f"the request body is larger than {limit} bytes; send less data (or raise "
        "the server's max_body_size)",
    )


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_object(
    body: bytes, *, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, object]:
    """*body* as a JSON object with exactly the *required* fields, plus *optional*."""
    if not body.strip():
        raise bad_request(
            f"the request needs a JSON object body with {_fields(required)}"
        )
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(
            f"the request body must be a JSON object with {_fields(required)}, "
            f"not a JSON {_json_type(value)}"
        )
    missing = [name for name in required if name not in value]
    if missing:
        raise bad_request(f"the request body lacks {_fields(missing)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        allowed = [*required, *optional]
        raise bad_request(
            f"the request body has unknown {_fields(unknown)}; "
            f"expected {_fields(allowed)}"
        )
    return value


def text_field(body: dict[str, object], name: str) -> str:
    """The field *name* of *body*, a non-empty string."""
    value = body[name]
    if not isinstance(value, str):
        raise bad_request(f'"{name}" must be a string, not a JSON {_json_type(value)}')
    if not value:
        raise bad_request(f'"{name}" must not be empty')
    return value


def query(request: Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters, each at most once and each one of *allowed*."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            expected = ", ".join(allowed) or "none"
            raise bad_request(
                f"unknown query parameter {name!r}; this endpoint takes: {expected}"
            )
        if name in params:
            raise bad_request(f"the query parameter {name!r} is given twice")
        params[name] = value
    return params


def int_param(
    params: dict[str, str], name: str, default: int, low: int, high: int
) -> int:
    """An integer query parameter between *low* and *high*."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, not {value}")
    return value


def seconds_param(params: dict[str, str], name: str, high: float) -> float:
    """A duration query parameter (seconds) between 0 and *high*; 0 when absent."""
    raw = params.get(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise bad_request(f"{name} must be between 0 and {high:g} seconds, not {raw}")
    return value


def _fields(names: Collection[str]) -> str:
    quoted = ", ".join(f'"{name}"' for name in names)
    return f"the field{'s' if len(names) != 1 else ''} {quoted}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
