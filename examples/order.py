"""A durable order workflow that survives a crash.

    python examples/order.py

starts the workflow in a child process that dies (``os._exit``) right after the
card is charged, then resumes it here on the same LevelDB store: the charge is not
made again, and the workflow finishes where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import anyio.lowlevel

import durable


def charge_card(order_id: str) -> dict[str, object]:
    print(f"  [pid {os.getpid()}] charging the card for {order_id}")
    return {"order": order_id, "amount": 42, "status": "paid"}


async def reserve_stock(order_id: str) -> list[str]:
    print(f"  [pid {os.getpid()}] reserving stock for {order_id}")
    await anyio.lowlevel.checkpoint()
    return ["widget", "gadget"]


def send_email(order_id: str) -> str:
    print(f"  [pid {os.getpid()}] emailing the receipt for {order_id}")
    return "sent"


async def order(ctx: durable.WorkflowContext, order_id: str) -> dict[str, object]:
    payment = await ctx.step("charge", lambda: charge_card(order_id))
    if os.environ.get("ORDER_EXAMPLE_CRASH"):
        print(f"  [pid {os.getpid()}] crashing after the charge was recorded")
        sys.stdout.flush()
        os._exit(1)
    items = await ctx.step("reserve", lambda: reserve_stock(order_id))
    await ctx.sleep("cool-off", 0.2)
    email = await ctx.step("notify", lambda: send_email(order_id))
    return {"order": order_id, "payment": payment, "items": items, "email": email}


async def run(store: str) -> durable.WorkflowResult:
    async with durable.LevelDBDriver(store) as driver:
        return await durable.run_workflow(
            "order-1", order, "order-1", driver=driver
        ).result()


def main() -> None:
    if len(sys.argv) > 1:  # the child: run until the crash
        anyio.run(run, sys.argv[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        print("1. a child process starts the workflow and crashes:")
        env = {**os.environ, "ORDER_EXAMPLE_CRASH": "1"}
        child = subprocess.run([sys.executable, __file__, store], env=env, check=False)
        print(f"   child exited with code {child.returncode}")
        print("2. this process resumes it on the same store:")
        result = anyio.run(run, store)
        print(f"   state:  {result.state}")
        print(f"   output: {result.output}")


if __name__ == "__main__":
    main()
