"""Reading workflows from a store: listing by state and name, one workflow, its history.

Listing walks the ``(state, id)`` and ``(name, state, id)`` indexes that
`WorkflowMeta.write` keeps, so a page costs O(page size) reads whatever the number of
workflows. A history tree is built from one `History.load`.

Rule: nothing here writes; every function works on a store no process runs.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Final

import attrs

from ._codec import load_value
from ._engine._branches import BRANCH, GROUP, NEXT, ORDER_MARK, RACE
from ._engine._loops import LOOP
from ._engine._queue import MESSAGE
from ._errors import UnknownWorkflowError
from ._history import SLEEP, STEP, Entry, History, WorkflowMeta
from ._keys import decode_key, encode_key
from ._layout import WorkflowKeys, index_entry, index_range
from ._types import WorkflowState

if TYPE_CHECKING:
    from ._drivers import Driver
    from ._errors import WorkflowError

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000


@attrs.frozen
class WorkflowSummary:
    """One row of a workflow listing: identity, state and timing."""

    workflow_id: str
    name: str | None  # the registered workflow; None: run from a plain function
    state: WorkflowState
    created_at: float  # epoch s
    updated_at: float  # epoch s of the last state change
    sleep_until: float | None = None
    waiting_for: tuple[str, ...] | None = None


@attrs.frozen
class WorkflowPage:
    """A page of `list_workflows`; pass ``cursor`` back for the next page."""

    workflows: tuple[WorkflowSummary, ...]
    cursor: str | None  # None: this is the last page


@attrs.frozen
class WorkflowInfo:
    """Everything stored about one workflow but its history."""

    workflow_id: str
    name: str | None
    state: WorkflowState
    created_at: float
    updated_at: float
    input: object
    output: object  # the output of a completed workflow, else None
    error: WorkflowError | None  # why it failed (kept while rolling back)
    sleep_until: float | None
    waiting_for: tuple[str, ...] | None
    alarm_at: float | None  # epoch s at which a worker runs it next; None: never
    pending_messages: int  # stored messages it has not consumed


@attrs.frozen
class HistoryNode:
    """One recorded entry of a workflow, with the entries recorded inside it.

    ``kind`` is the entry kind (``step``, ``sleep``, ``message``, ``send``,
    ``join``, ``race``, ``group``, ``branch``, ``loop``, ``try``, ``version``,
    ``removed``, ``rollback_checkpoint``), ``next`` for a group's record that
    branch ``name`` was returned next (after its branches, in that order), or
    ``iteration`` for one kept loop iteration (``name`` is then its number).
    """

    kind: str
    name: str
    status: str  # pending, retrying, completed, failed or cancelled
    attempts: int = 0
    started_at: float | None = None  # epoch s of the last attempt
    finished_at: float | None = None
    retry_at: float | None = None
    until: float | None = None  # a sleep's deadline, a message wait's timeout
    output: object = None  # a step's or branch's result, messages' bodies, ...
    error: WorkflowError | None = None
    failure: str | None = None  # how it failed: error, critical, timeout, ...
    rolled_back_at: float | None = None
    children: tuple[HistoryNode, ...] = ()

    def walk(self) -> list[HistoryNode]:
        """This node and every node below it, depth first."""
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes


async def list_page(
    driver: Driver,
    *,
    state: WorkflowState | str | None = None,
    name: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> WorkflowPage:
    """List workflows, optionally only those in *state* and/or running *name*.

    Workflows come ordered by state, then id (by id alone within one state).
    Raises ``ValueError`` for an unknown state, a bad limit or a foreign cursor.
    """
    if state is not None:
        state = WorkflowState(state)  # ValueError names the bad value
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit!r}")
    start, end = index_range(None if state is None else str(state), name)
    if cursor is not None:
        after = _decode_cursor(cursor)
        if not start <= after < end:
            raise ValueError(
                "this cursor belongs to another listing; pass the cursor from the "
                "previous page of the same state and name filter"
            )
        start = after + b"\x00"
    rows = await driver.list_range(start, end, limit=limit + 1)
    summaries: list[WorkflowSummary] = []
    for key, _ in rows[:limit]:
        workflow_id, _, _ = index_entry(key)
        keys = WorkflowKeys(workflow_id)
        raw = await driver.get(keys.meta)
        if raw is None:
            continue  # an index key outliving its workflow: nothing to show
        summaries.append(_summary(workflow_id, WorkflowMeta.from_bytes(raw, keys.meta)))
    more = len(rows) > limit
    next_cursor = _encode_cursor(rows[limit - 1][0]) if more else None
    return WorkflowPage(tuple(summaries), next_cursor)


async def get_info(driver: Driver, workflow_id: str) -> WorkflowInfo:
    """Read one workflow's state, input, output and error.

    Raises:
        UnknownWorkflowError: the store holds no such workflow.
    """
    keys = WorkflowKeys(workflow_id)
    raw = await driver.get(keys.meta)
    if raw is None:
        raise UnknownWorkflowError(workflow_id)
    meta = WorkflowMeta.from_bytes(raw, keys.meta)
    raw_input = await driver.get(keys.input)
    messages = await driver.list_range(*_message_range(keys))
    return WorkflowInfo(
        workflow_id=workflow_id,
        name=meta.name,
        state=meta.state,
        created_at=meta.created_at,
        updated_at=meta.updated_at,
        input=None if raw_input is None else load_value(raw_input, keys.input),
        output=meta.load_output(keys.meta),
        error=meta.error,
        sleep_until=meta.sleep_until,
        waiting_for=_names(meta.waiting_for),
        alarm_at=await driver.get_alarm(workflow_id),
        pending_messages=len(messages),
    )


async def get_history(driver: Driver, workflow_id: str) -> tuple[HistoryNode, ...]:
    """Read the workflow's history as a tree: the body's entries, in call order.

    Raises:
        UnknownWorkflowError: the store holds no such workflow.
    """
    history = await History.load(driver, workflow_id)
    if history.meta is None:
        raise UnknownWorkflowError(workflow_id)
    return _Tree(history).build()


# --- helpers --------------------------------------------------------------------------


def _summary(workflow_id: str, meta: WorkflowMeta) -> WorkflowSummary:
    return WorkflowSummary(
        workflow_id=workflow_id,
        name=meta.name,
        state=meta.state,
        created_at=meta.created_at,
        updated_at=meta.updated_at,
        sleep_until=meta.sleep_until,
        waiting_for=_names(meta.waiting_for),
    )


def _names(waiting_for: list[str] | None) -> tuple[str, ...] | None:
    return None if waiting_for is None else tuple(waiting_for)


def _message_range(keys: WorkflowKeys) -> tuple[bytes, bytes]:
    _, end = keys.scan_range
    return keys.message, end


def _encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _decode_cursor(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{cursor!r} is not a listing cursor") from None


@attrs.define
class _Node:
    """A node under construction (children still being added)."""

    kind: str
    name: str
    entry: Entry | None
    order: int
    children: dict[bytes, _Node] = attrs.Factory(dict)


class _Tree:
    """Builds `HistoryNode` trees from a loaded history."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.root = _Node("workflow", "", None, 0)
        self.nodes: dict[bytes, _Node] = {b"": self.root}

    def build(self) -> tuple[HistoryNode, ...]:
        # parents sort before their children, so each parent exists when needed
        for location in sorted(self.history.entries):
            entry = self.history.entries[location].full()
            # a group lists its branches in start order, then its finishing order
            order = entry.seq + (1 << 40 if entry.kind == NEXT else 0)
            node = _Node(entry.kind, self._name(entry), entry, order)
            self._parent(location, entry).children[location] = node
            self.nodes[location] = node
        return self._freeze(self.root).children

    def _name(self, entry: Entry) -> str:
        names = self.history.names
        index = entry.name_index
        return names[index] if 0 <= index < len(names) else f"#{index}"

    def _parent(self, location: bytes, entry: Entry) -> _Node:
        scope = location[: len(location) - len(encode_key((entry.name_index,)))]
        parent = self.nodes.get(scope)
        if parent is not None:
            return parent
        if scope.endswith(ORDER_MARK):  # a group's finishing order: under the group
            group = self.nodes.get(scope[: -len(ORDER_MARK)])
            if group is not None and group.kind == GROUP:
                return group
        parts = decode_key(scope)
        marker = parts[-1] if parts else None
        if not isinstance(marker, tuple) or not marker:
            return self.root  # cannot happen in a well-formed history; keep it visible
        loop = self.nodes.get(encode_key(parts[:-1]), self.root)
        iteration = marker[-1]
        node = _Node(
            "iteration",
            str(iteration),
            None,
            iteration if isinstance(iteration, int) else 0,
        )
        loop.children[scope] = node
        self.nodes[scope] = node
        return node

    def _freeze(self, node: _Node) -> HistoryNode:
        children = tuple(
            self._freeze(child)
            for child in sorted(node.children.values(), key=lambda n: n.order)
        )
        entry = node.entry
        if entry is None:
            status = "completed" if node.kind == "iteration" else ""
            return HistoryNode(node.kind, node.name, status, children=children)
        failure = entry.failure
        until, output = _details(entry)
        return HistoryNode(
            kind=entry.kind,
            name=node.name,
            status=entry.status,
            attempts=entry.attempts,
            started_at=entry.started_at,
            finished_at=entry.finished_at,
            retry_at=entry.retry_at,
            until=until,
            output=output,
            error=None if failure is None else failure.error,
            failure=None if failure is None else failure.kind,
            rolled_back_at=entry.rolled_back_at,
            children=children,
        )


def _details(entry: Entry) -> tuple[float | None, object]:
    """``(until, output)`` of an entry, decoded from its kind-specific data."""
    data = entry.data
    kind = entry.kind
    if kind in (STEP, BRANCH, GROUP) and isinstance(data, bytes):
        return None, load_value(data, entry.location)
    if kind == SLEEP and isinstance(data, int | float):
        return float(data), None
    if kind == MESSAGE and isinstance(data, list) and data:
        bodies = data[1] if len(data) > 1 and isinstance(data[1], list) else []
        return data[0], [load_value(body, entry.location) for body in bodies]
    if kind == LOOP and isinstance(data, list) and len(data) > 2:
        output = data[2]
        return None, None if output is None else load_value(output, entry.location)
    if kind == RACE and isinstance(data, str):
        return None, data  # the winning branch
    return None, None
