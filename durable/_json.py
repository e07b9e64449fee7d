"""JSON views of stored values and workflow records, shared by the HTTP API and the CLI.

Stored values are msgpack (`_codec`), richer than JSON; this module maps them one way,
to JSON, without losing what a reader needs: ``bytes`` become ``{"$bytes": base64}``,
datetimes and dates ISO 8601 text, timedeltas seconds, decimals and UUIDs text.
Times of records are epoch seconds (floats), as stored.

Rule: the HTTP API and ``durable ... --json`` print exactly these shapes, so a script
can switch between them.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import uuid
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ._errors import WorkflowError
    from ._inspect import HistoryNode, WorkflowInfo, WorkflowPage, WorkflowSummary
    from ._types import WorkflowResult

JSON: TypeAlias = "bool | int | float | str | list[JSON] | dict[str, JSON] | None"


def to_json(value: object) -> JSON:
    """A JSON-compatible view of a stored user value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.date):  # datetime too
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {_key(key): to_json(item) for key, item in value.items()}
    return repr(value)  # not produced by the codec; shown rather than refused


def _key(key: object) -> str:
    return key if isinstance(key, str) else str(to_json(key))


def error_json(error: WorkflowError | None) -> JSON:
    """``{"name", "message", "traceback"}`` or None."""
    if error is None:
        return None
    return {"name": error.name, "message": error.message, "traceback": error.traceback}


def summary_json(summary: WorkflowSummary) -> dict[str, JSON]:
    """One row of a listing."""
    return {
        "workflow_id": summary.workflow_id,
        "name": summary.name,
        "state": str(summary.state),
        "created_at": summary.created_at,
        "updated_at": summary.updated_at,
        "sleep_until": summary.sleep_until,
        "waiting_for": _names(summary.waiting_for),
    }


def page_json(page: WorkflowPage) -> dict[str, JSON]:
    """A listing page: ``{"workflows": [...], "cursor": str | None}``."""
    return {
        "workflows": [summary_json(summary) for summary in page.workflows],
        "cursor": page.cursor,
    }


def info_json(info: WorkflowInfo) -> dict[str, JSON]:
    """Everything about one workflow but its history."""
    return {
        "workflow_id": info.workflow_id,
        "name": info.name,
        "state": str(info.state),
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "input": to_json(info.input),
        "output": to_json(info.output),
        "error": error_json(info.error),
        "sleep_until": info.sleep_until,
        "waiting_for": _names(info.waiting_for),
        "alarm_at": info.alarm_at,
        "pending_messages": info.pending_messages,
    }


def node_json(node: HistoryNode) -> dict[str, JSON]:
    """One history entry and, nested, the entries recorded inside it."""
    return {
        "kind": node.kind,
        "name": node.name,
        "status": node.status,
        "attempts": node.attempts,
        "started_at": node.started_at,
        "finished_at": node.finished_at,
        "retry_at": node.retry_at,
        "until": node.until,
        "output": to_json(node.output),
        "error": error_json(node.error),
        "failure": node.failure,
        "rolled_back_at": node.rolled_back_at,
        "children": [node_json(child) for child in node.children],
    }


def history_json(nodes: tuple[HistoryNode, ...]) -> list[JSON]:
    """A whole history tree, top-level entries in call order."""
    return [node_json(node) for node in nodes]


def result_json(result: WorkflowResult) -> dict[str, JSON]:
    """What ``handle.result()`` returned."""
    return {
        "state": str(result.state),
        "output": to_json(result.output),
        "sleep_until": result.sleep_until,
        "waiting_for": _names(result.waiting_for),
    }


def _names(names: tuple[str, ...] | None) -> JSON:
    return None if names is None else list(names)
