"""Fixtures for the HTTP API: a running worker on a memory store, and a client."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

import durable
from durable.server import create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SAFETY = 10.0  # seconds of real time any one test may wait; none comes close


class Kit:
    """The workflows the tests register, with counters and switches."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fixed = False  # flaky's step succeeds once this is set
        self.holding = anyio.Event()  # blocker's step is running
        self.release = anyio.Event()  # blocker's step may return

    def count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def workflows(self) -> list[durable.Workflow]:
        kit = self

        @durable.workflow(name="echo")
        async def echo(ctx: durable.WorkflowContext, value: object) -> object:
            return await ctx.step("echo", lambda: value)

        @durable.workflow(name="waiter")
        async def waiter(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("before", lambda: kit.count("before"))
            [body] = await ctx.queue.next("wait", names=["go"])
            return body

        @durable.workflow(name="flaky")
        async def flaky(ctx: durable.WorkflowContext, _: object) -> str:
            def charge() -> str:
                kit.count("charge")
                if not kit.fixed:
                    raise durable.CriticalError("the card was declined")
                return "charged"

            return await ctx.step("charge", charge)

        @durable.workflow(name="steps")
        async def steps(ctx: durable.WorkflowContext, _: object) -> dict[str, int]:
            a = await ctx.step("a", lambda: kit.count("a"))

            async def branch_a(ctx: durable.WorkflowContext) -> int:
                return await ctx.step("charge", lambda: kit.count("branch-a.charge"))

            async def branch_b(ctx: durable.WorkflowContext) -> int:
                return await ctx.step("ship", lambda: kit.count("branch-b.ship"))

            fanout = await ctx.join(
                "fanout", {"branch-a": branch_a, "branch-b": branch_b}
            )
            b = await ctx.step("b", lambda: kit.count("b"))
            return {"a": a, "b": b, **fanout}

        @durable.workflow(name="blocker")
        async def blocker(ctx: durable.WorkflowContext, _: object) -> str:
            async def hold() -> str:
                kit.holding.set()
                await kit.release.wait()
                return "released"

            return await ctx.step("hold", hold)

        return [echo, waiter, flaky, steps, blocker]


class Api:
    """A worker serving its workflows, and an HTTP client of its app."""

    def __init__(
        self, kit: Kit, worker: durable.Worker, client: httpx.AsyncClient
    ) -> None:
        self.kit = kit
        self.worker = worker
        self.client = client

    async def start(self, name: str, workflow_id: str, input: object = None) -> None:
        response = await self.client.post(
            "/workflows",
            json={"name": name, "workflow_id": workflow_id, "input": input},
        )
        assert response.status_code == 201, response.text

    async def finish(self, workflow_id: str) -> httpx.Response:
        """GET the result, waiting until the workflow is final."""
        with anyio.fail_after(SAFETY):
            return await self.client.get(
                f"/workflows/{workflow_id}/result", params={"wait": SAFETY}
            )

    async def snapshot(self) -> object:
        """Everything the store holds, read through the public API."""
        page = await self.worker.list_workflows(limit=1000)
        rows = []
        for summary in page.workflows:
            handle = self.worker.handle(summary.workflow_id)
            rows.append((await handle.get_info(), await handle.get_history()))
        alarms = await self.worker.driver.list_alarms()
        return page, rows, alarms


async def settle() -> None:
    """Let the worker run until every task waits (the memory store has no threads)."""
    await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def open_api(
    kit: Kit, *, token: str | None = None, max_body_size: int | None = None
) -> AsyncIterator[Api]:
    options: dict[str, object] = {"token": token}
    if max_body_size is not None:
        options["max_body_size"] = max_body_size
    async with (
        durable.MemoryDriver() as driver,
        durable.Worker(driver, kit.workflows()) as worker,
    ):
        app = create_app(worker, **options)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://durable.test"
        ) as client:
            try:
                yield Api(kit, worker, client)
            finally:
                kit.release.set()  # a blocked step must end for the worker to stop


@pytest.fixture
def kit() -> Kit:
    return Kit()


@pytest.fixture
async def api(kit: Kit) -> AsyncIterator[Api]:
    async with open_api(kit) as made:
        yield made


def assert_error(response: httpx.Response, status: int, type_name: str) -> None:
    """*response* is the error shape with *status* and *type_name*."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_name
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
