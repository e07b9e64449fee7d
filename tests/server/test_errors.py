"""Every refused request: its status, its error shape, and that the store is unchanged."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from .conftest import SAFETY, Kit, assert_error, open_api, settle

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Api

# (method, path, request options, status, error type)
Case = tuple[str, str, dict[str, object], int, str]

START = "/workflows"
BAD_BODIES: list[Case] = [
    ("POST", START, {"content": b"{not json"}, 400, "BadRequestError"),
    ("POST", START, {"content": b""}, 400, "BadRequestError"),
    ("POST", START, {"content": b"\xff\xfe\x00"}, 400, "BadRequestError"),
    ("POST", START, {"json": ["echo", "x"]}, 400, "BadRequestError"),
    ("POST", START, {"json": {"workflow_id": "x"}}, 400, "BadRequestError"),
    ("POST", START, {"json": {"name": "echo"}}, 400, "BadRequestError"),
    ("POST", START, {"json": {"name": 3, "workflow_id": "x"}}, 400, "BadRequestError"),
    (
        "POST",
        START,
        {"json": {"name": "echo", "workflow_id": ""}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "echo", "workflow_id": "x", "extra": 1}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "echo", "workflow_id": "a/b"}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        START,
        {"content": b'{"name": "echo", "workflow_id": "x", "input": NaN}'},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "echo", "workflow_id": "x"}, "params": {"a": "1"}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "nope", "workflow_id": "x"}},
        404,
        "UnregisteredWorkflowError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "waiter", "workflow_id": "done"}},
        409,
        "WorkflowNameMismatchError",
    ),
    (
        "POST",
        START,
        {"json": {"name": "echo", "workflow_id": "x", "input": 2**70}},
        422,
        "UnstorableValueError",
    ),
]
BAD_LISTINGS: list[Case] = [
    ("GET", "/workflows", {"params": {"state": "asleep"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"limit": "0"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"limit": "1001"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"limit": "ten"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"cursor": "é"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"cursor": "AAAA"}}, 400, "BadRequestError"),
    ("GET", "/workflows", {"params": {"status": "failed"}}, 400, "BadRequestError"),
    (
        "GET",
        "/workflows",
        {"params": [("limit", "1"), ("limit", "2")]},
        400,
        "BadRequestError",
    ),
]
UNKNOWN_WORKFLOW: list[Case] = [
    ("GET", "/workflows/ghost", {}, 404, "UnknownWorkflowError"),
    ("GET", "/workflows/ghost/history", {}, 404, "UnknownWorkflowError"),
    ("GET", "/workflows/ghost/result", {}, 404, "UnknownWorkflowError"),
    ("GET", "/workflows/ghost/result?wait=1", {}, 404, "UnknownWorkflowError"),
    (
        "POST",
        "/workflows/ghost/messages",
        {"json": {"name": "go", "data": 1}},
        404,
        "UnknownWorkflowError",
    ),
    ("POST", "/workflows/ghost/cancel", {}, 404, "UnknownWorkflowError"),
    ("POST", "/workflows/ghost/recover", {}, 404, "UnknownWorkflowError"),
    ("POST", "/workflows/ghost/wake", {}, 404, "UnknownWorkflowError"),
    (
        "POST",
        "/workflows/ghost/replay-from",
        {"json": {"step": "a"}},
        404,
        "UnknownWorkflowError",
    ),
]
BAD_STEERING: list[Case] = [
    ("GET", "/workflows/waiting?verbose=1", {}, 400, "BadRequestError"),
    ("GET", "/workflows/waiting/history?x=1", {}, 400, "BadRequestError"),
    ("POST", "/workflows/waiting/cancel?force=1", {}, 400, "BadRequestError"),
    ("GET", "/workflows/waiting/result?wait=-1", {}, 400, "BadRequestError"),
    ("GET", "/workflows/waiting/result?wait=61", {}, 400, "BadRequestError"),
    ("GET", "/workflows/waiting/result?wait=soon", {}, 400, "BadRequestError"),
    ("GET", "/workflows/waiting/result?wait=nan", {}, 400, "BadRequestError"),
    ("GET", "/workflows/failed/result", {}, 409, "WorkflowFailedError"),
    ("GET", "/workflows/cancelled/result", {}, 409, "WorkflowCancelledError"),
    (
        "POST",
        "/workflows/waiting/messages",
        {"json": {"data": 1}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        "/workflows/waiting/messages",
        {"json": {"name": ["go"]}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        "/workflows/waiting/messages",
        {"json": {"name": "go", "data": {"n": 2**64}}},
        422,
        "UnstorableValueError",
    ),
    (
        "POST",
        "/workflows/done/messages",
        {"json": {"name": "go"}},
        409,
        "WorkflowFinishedError",
    ),
    (
        "POST",
        "/workflows/cancelled/messages",
        {"json": {"name": "go"}},
        409,
        "WorkflowCancelledError",
    ),
    ("POST", "/workflows/done/replay-from", {"json": {}}, 400, "BadRequestError"),
    (
        "POST",
        "/workflows/done/replay-from",
        {"json": {"step": []}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        "/workflows/done/replay-from",
        {"json": {"step": 3}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        "/workflows/done/replay-from",
        {"json": {"step": ["echo", True]}},
        400,
        "BadRequestError",
    ),
    (
        "POST",
        "/workflows/done/replay-from",
        {"json": {"step": "nope"}},
        422,
        "ReplayTargetError",
    ),
    (
        "POST",
        "/workflows/done/replay-from",
        {"json": {"step": ["echo", 1]}},
        422,
        "ReplayTargetError",
    ),
    (
        "POST",
        "/workflows/cancelled/replay-from",
        {"json": {"step": "before"}},
        409,
        "WorkflowCancelledError",
    ),
    (
        "POST",
        "/workflows/running/replay-from",
        {"json": {"step": "hold"}},
        409,
        "WorkflowBusyError",
    ),
]
BAD_ROUTES: list[Case] = [
    ("GET", "/nope", {}, 404, "NotFoundError"),
    ("GET", "/workflows/done/nope", {}, 404, "NotFoundError"),
    ("POST", "/workflows/done/delete", {}, 404, "NotFoundError"),
    ("DELETE", "/workflows/done", {}, 405, "MethodNotAllowedError"),
    ("PUT", "/workflows", {"json": {}}, 405, "MethodNotAllowedError"),
    ("GET", "/workflows/waiting/cancel", {}, 405, "MethodNotAllowedError"),
    ("POST", "/workflows/done/history", {}, 405, "MethodNotAllowedError"),
    ("POST", "/health", {}, 405, "MethodNotAllowedError"),
]
CASES = BAD_BODIES + BAD_LISTINGS + UNKNOWN_WORKFLOW + BAD_STEERING + BAD_ROUTES


@asynccontextmanager
async def populated() -> AsyncIterator[Api]:
    """A store with a workflow in each state a request can be refused for."""
    kit = Kit()
    async with open_api(kit) as api:
        await api.start("echo", "done", 1)
        await api.start("waiter", "waiting")
        await api.start("waiter", "cancelled")
        await api.start("flaky", "failed")
        await api.start("blocker", "running")
        for workflow_id in ("done", "failed"):
            await api.finish(workflow_id)
        with anyio.fail_after(SAFETY):
            await kit.holding.wait()
        await settle()
        await api.client.post("/workflows/cancelled/cancel")
        yield api


def _case_id(case: Case) -> str:
    method, path, options, status, _ = case
    detail = options.get("json", options.get("content", options.get("params", "")))
    return f"{status}-{method}-{path}-{detail!r}"[:90]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
async def test_a_refused_request_answers_the_error_and_changes_nothing(
    case: Case,
) -> None:
    method, path, options, status, type_name = case
    async with populated() as api:
        before = await api.snapshot()
        response = await api.client.request(method, path, **options)  # type: ignore[arg-type]
        assert_error(response, status, type_name)
        await settle()
        assert await api.snapshot() == before


async def test_a_cursor_of_another_listing_is_refused(api: Api) -> None:
    for n in range(2):
        await api.start("echo", f"e-{n}", n)
        await api.finish(f"e-{n}")
    page = await api.client.get("/workflows", params={"limit": 1})
    cursor = page.json()["cursor"]
    other = await api.client.get(
        "/workflows", params={"limit": 1, "state": "failed", "cursor": cursor}
    )
    assert_error(other, 400, "BadRequestError")
    assert "another listing" in other.json()["error"]["message"]


async def test_a_405_names_the_allowed_methods(api: Api) -> None:
    response = await api.client.delete("/workflows")
    assert_error(response, 405, "MethodNotAllowedError")
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_a_closed_store_answers_503_storage_error(api: Api) -> None:
    await api.worker.driver.close()  # every read now raises StorageError
    assert_error(await api.client.get("/workflows/x"), 503, "StorageError")


async def test_an_unexpected_error_answers_500_and_is_logged(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(**_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api.worker, "list_workflows", broken)
    with caplog.at_level("ERROR", logger="durable.server"):
        response = await api.client.get("/workflows")
    assert_error(response, 500, "InternalServerError")
    assert "secret" not in response.text
    assert "secret detail" in caplog.text
