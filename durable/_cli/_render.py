"""Output: JSON as the HTTP API answers it, and text for people (tables, the history tree).

Rule: every printer takes an answer in the shapes of `durable._json`, which both modes
return, and prints it to stdout; a missing field prints as ``-`` or is left out. Times
are UTC, and the tree falls back to ASCII where stdout cannot encode its lines.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import TYPE_CHECKING, Final

from .._types import WorkflowState

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from .._json import JSON

_FINAL_STATES: Final = frozenset(
    str(state) for state in WorkflowState if state.is_final
)


def print_json(value: JSON) -> None:
    """*value* as indented JSON (what ``--json`` prints)."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_page(page: JSON) -> None:
    """A page of ``list``: one row a workflow, then how to get the next page."""
    rows = [
        (
            str(row.get("workflow_id")),
            _text(row.get("name")),
            str(row.get("state")),
            _time(row.get("updated_at")),
            waiting(row),
        )
        for row in _dicts(_dict(page).get("workflows"))
    ]
    table = [("ID", "NAME", "STATE", "UPDATED", "WAITING"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table if rows else []:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]).rstrip())
    if not rows:
        print("no workflows")
    cursor = _dict(page).get("cursor")
    if isinstance(cursor, str):
        print(f"more: add --cursor {cursor}")


def print_info(info: JSON) -> None:
    """A workflow's info for ``show``: one labelled line a field, then the traceback."""
    fields = _dict(info)
    error = _dict(fields.get("error"))
    alarm = fields.get("alarm_at")
    lines = [
        ("workflow", str(fields.get("workflow_id"))),
        ("name", _text(fields.get("name"), "- (a plain function)")),
        ("state", str(fields.get("state"))),
        ("created", _time(fields.get("created_at"))),
        ("updated", _time(fields.get("updated_at"))),
        ("input", _value(fields.get("input"))),
    ]
    if fields.get("state") == WorkflowState.COMPLETED:
        lines.append(("output", _value(fields.get("output"))))
    if error:
        lines.append(("error", _error_text(error)))
    if waiting(fields):
        lines.append(("waiting", waiting(fields)))
    lines.append(("due", "never" if alarm is None else _time(alarm)))
    lines.append(("messages", f"{fields.get('pending_messages')} not consumed"))
    for label, text in lines:
        print(f"{label:<9} {text}")
    traceback = error.get("traceback")
    if isinstance(traceback, str) and traceback.strip():
        print("traceback:")
        for line in traceback.rstrip().splitlines():
            print(f"  {line}")


def print_history(workflow_id: str, nodes: JSON) -> None:
    """A workflow's recorded history as a tree under its id."""
    print(workflow_id)
    lines = list(_tree(_dicts(nodes), "", fancy=_can_print("├└│→")))
    for line in lines or ["(nothing recorded yet)"]:
        print(line)


def print_report(info: JSON, done: str = "") -> None:
    """After a change: what was *done*, then one line on the workflow's info."""
    fields = _dict(info)
    line = f"workflow {fields.get('workflow_id')!r}"
    if fields.get("name") is not None:
        line += f" ({fields.get('name')})"
    line += f" is {fields.get('state')}"
    if waiting(fields):
        line += f", waiting for {waiting(fields)}"
    if _dict(fields.get("error")):
        line += f": {_error_text(_dict(fields.get('error')))}"
    print(f"{done}; {line}" if done else line)


def print_migration(answer: JSON, before: int | None) -> None:
    """After ``migrate``: its answer (store, schema version) and what it changed."""
    fields = _dict(answer)
    store = f"the PostgreSQL store {fields.get('store')!r}"
    now = fields.get("schema_version")
    if before is None:
        print(f"created {store} at schema version {now}")
    elif before != now:
        print(f"migrated {store} from schema version {before} to {now}")
    else:
        print(f"{store} is at schema version {now}, the latest; nothing to do")


def waiting(fields: Mapping[str, JSON]) -> str:
    """What a workflow waits for: ``messages a, b``, ``any message``, ``until T``."""
    if fields.get("state") in _FINAL_STATES:
        return ""  # a cancelled workflow keeps the waits it had (see its info)
    parts = []
    names = fields.get("waiting_for")
    if isinstance(names, list):
        parts.append(
            f"messages {', '.join(map(str, names))}" if names else "any message"
        )
    if fields.get("sleep_until") is not None:
        parts.append(f"until {_time(fields.get('sleep_until'))}")
    return " ".join(parts)


def _tree(nodes: list[dict[str, JSON]], prefix: str, *, fancy: bool) -> Iterator[str]:
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        if fancy:
            branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
        else:
            branch, below = ("`-- ", "    ") if last else ("|-- ", "|   ")
        yield prefix + branch + _node_line(node, fancy=fancy)
        yield from _tree(_dicts(node.get("children")), prefix + below, fancy=fancy)


def _node_line(node: Mapping[str, JSON], *, fancy: bool) -> str:
    """``kind name: status, attempts, times; failure: error → output``."""
    kind, name, status = node.get("kind"), node.get("name"), node.get("status")
    head = f"iteration {name}" if kind == "iteration" else f"{kind} {name}"
    details = [str(status)] if status else []
    attempts = node.get("attempts")
    if isinstance(attempts, int) and (kind == "step" or attempts > 1):
        details.append(f"{attempts} attempt{'' if attempts == 1 else 's'}")
    started, finished = node.get("started_at"), node.get("finished_at")
    if isinstance(started, int | float):
        details.append(f"started {_time(started)}")
        if isinstance(finished, int | float):
            details.append(f"took {_duration(finished - started)}")
    elif isinstance(finished, int | float):
        details.append(f"at {_time(finished)}")
    for key, label in (("until", "until"), ("retry_at", "retry at")):
        if node.get(key) is not None:
            details.append(f"{label} {_time(node.get(key))}")
    if node.get("rolled_back_at") is not None:
        details.append(f"rolled back at {_time(node.get('rolled_back_at'))}")
    line = f"{head}: {', '.join(details)}" if details else head
    error = _dict(node.get("error"))
    if error:
        line += f"; {node.get('failure') or 'error'}: {_error_text(error)}"
    if node.get("output") is not None:
        line += f" {'→' if fancy else '->'} {_value(node.get('output'), limit=60)}"
    return line


def _dict(value: JSON) -> dict[str, JSON]:
    return value if isinstance(value, dict) else {}


def _dicts(value: JSON) -> list[dict[str, JSON]]:
    items = value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, dict)]


def _text(value: JSON, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _time(value: JSON) -> str:
    """Epoch seconds as UTC, to the millisecond: ``2025-01-31 12:00:00.000Z``."""
    if not isinstance(value, int | float):
        return "-"
    moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _value(value: JSON, limit: int | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _error_text(error: Mapping[str, JSON]) -> str:
    name, message = error.get("name"), error.get("message")
    return f"{name}: {message}" if message else str(name)


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
