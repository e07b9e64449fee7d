"""An order service: the workflow waits for a payment webhook, over HTTP.

Run it as a service (one worker process with the HTTP API on a LevelDB store):

    durable worker examples.order_service:workflows --store var/orders --http 127.0.0.1:8000

then start an order and play the payment provider's webhook:

    curl -X POST localhost:8000/workflows -d '{"name": "order", "workflow_id": "order-7", "input": {"sku": "A1", "amount": 42}}'
    curl -X POST localhost:8000/workflows/order-7/messages -d '{"name": "payment", "data": {"status": "paid", "ref": "pay_1"}}'
    curl 'localhost:8000/workflows/order-7/result?wait=5'

Or run this file: it does all of that in one process, on a throwaway store, against a
real HTTP server on a free port, and prints what happens.
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

import anyio

import durable
import durable.server

PAYMENT_TIMEOUT = 3600.0  # seconds an order waits for its payment before it is released


@durable.workflow(name="order")
async def order(
    ctx: durable.WorkflowContext, request: dict[str, object]
) -> dict[str, object]:
    """Reserve stock, wait for the payment webhook, then ship or release the stock."""
    sku = str(request["sku"])
    reservation = await ctx.step("reserve", lambda: f"rsv-{sku}-{ctx.workflow_id}")
    payments = await ctx.queue.next(
        "payment", names=["payment"], timeout=PAYMENT_TIMEOUT
    )
    payment = payments[0] if payments else None
    if not isinstance(payment, dict) or payment.get("status") != "paid":
        await ctx.step("release", lambda: f"released {reservation}")
        return {"state": "released", "reservation": reservation}
    tracking = await ctx.step("ship", lambda: f"TRACK-{ctx.workflow_id}")
    return {"state": "shipped", "payment": payment, "tracking": tracking}


workflows = [order]  # what `durable worker examples.order_service:workflows` serves


def call(
    method: str, url: str, body: object | None = None
) -> tuple[int, dict[str, object]]:
    """One JSON request with the standard library, as a webhook sender would make it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


async def demo(store: Path) -> None:
    async with durable.LevelDBDriver(store) as driver:
        worker = durable.Worker(driver, workflows)
        async with anyio.create_task_group() as tg:
            base = await tg.start(_serve, worker)
            print(f"worker and HTTP API at {base}")

            status, info = await anyio.to_thread.run_sync(
                call,
                "POST",
                f"{base}/workflows",
                {"name": "order", "workflow_id": "order-7", "input": {"sku": "A1"}},
            )
            print(f"POST /workflows -> {status}, state {info['state']}")

            # the order now waits for its payment in the store, not in memory
            handle = worker.handle("order-7")
            with anyio.fail_after(10):
                while (await handle.get_state()) != "sleeping":  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            print("order-7 is waiting for the payment webhook")

            status, _ = await anyio.to_thread.run_sync(
                call,
                "POST",
                f"{base}/workflows/order-7/messages",
                {"name": "payment", "data": {"status": "paid", "ref": "pay_1"}},
            )
            print(f"POST /workflows/order-7/messages -> {status}")

            status, result = await anyio.to_thread.run_sync(
                call, "GET", f"{base}/workflows/order-7/result?wait=10"
            )
            print(f"GET /workflows/order-7/result -> {status}: {json.dumps(result)}")
            worker.shutdown()  # serve() returns once the worker has flushed


async def _serve(
    worker: durable.Worker, *, task_status: anyio.abc.TaskStatus[str]
) -> None:
    await durable.server.serve(worker, port=0, task_status=task_status)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(demo, Path(directory) / "store")
    sys.exit(0)
