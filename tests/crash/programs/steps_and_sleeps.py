"""A workflow of sync, async and ephemeral steps and short sleeps, for the crash tests.

Usage: ``python steps_and_sleeps.py STORE LOG BACKEND STEPS DELAY``

Opens a `durable.LevelDBDriver` at STORE and runs workflow ``"crash-me"`` to the end
on the anyio BACKEND. Every step execution appends ``"<step name>\\n"`` to LOG and
fsyncs it *before* the step returns, so LOG records each execution, then lingers
DELAY seconds so that a kill often lands while a step is in flight. The output (a
JSON document) is written to stdout. The test kills this process with SIGKILL and
runs it again on the same store until it completes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

import anyio

import durable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

WORKFLOW_ID = "crash-me"


def log_execution(log: str, name: str) -> None:
    """Append *name* to the side-effect log and make it durable."""
    with open(log, "a", encoding="utf-8") as file:  # noqa: PTH123
        file.write(f"{name}\n")
        file.flush()
        os.fsync(file.fileno())


def make_workflow(
    log: str, delay: float
) -> Callable[[durable.WorkflowContext, int], Awaitable[dict[str, object]]]:
    """The workflow: step i computes ``[i, i * i + total]``; every third one sleeps."""

    def sync_step(name: str, value: list[int]) -> Callable[[], object]:
        def run() -> list[int]:
            log_execution(log, name)
            time.sleep(delay)
            return value

        return run

    def async_step(name: str, value: list[int]) -> Callable[[], object]:
        async def run() -> list[int]:
            log_execution(log, name)
            await anyio.sleep(delay)
            return value

        return run

    async def workflow(ctx: durable.WorkflowContext, steps: int) -> dict[str, object]:
        total = 0
        results = []
        for i in range(steps):
            name = f"step-{i:02d}"
            kind = i % 4
            make = async_step if kind in (1, 3) else sync_step
            value = await ctx.step(
                name, make(name, [i, i * i + total]), ephemeral=kind == 2
            )
            total += value[1]
            results.append(value)
            if i % 3 == 2:
                await ctx.sleep(f"sleep-{i:02d}", 0.001)
        return {"total": total, "results": results}

    return workflow


async def main(store: str, log: str, steps: int, delay: float) -> None:
    """Run the workflow to completion and print its output as JSON."""
    async with durable.LevelDBDriver(store) as driver:
        handle = durable.run_workflow(
            WORKFLOW_ID, make_workflow(log, delay), steps, driver=driver
        )
        result = await handle.result()
    sys.stdout.write(json.dumps(result.output) + "\n")


if __name__ == "__main__":
    store, log, backend, steps, delay = sys.argv[1:6]
    anyio.run(main, store, log, int(steps), float(delay), backend=backend)
