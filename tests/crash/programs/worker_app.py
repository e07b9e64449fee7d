"""A worker running several multi-step workflows, for the worker crash tests.

Usage: ``python worker_app.py STORE LOG BACKEND WORKFLOWS STEPS DELAY``

Opens a `durable.LevelDBDriver` at STORE (poll interval 0.02 s) and runs a
`durable.Worker` with workflow ``"chain"``: STEPS async steps, each appending
``"<workflow id> <step name>\\n"`` to LOG (fsynced before the step returns) and then
lingering DELAY seconds, with a 0.05 s durable sleep halfway, so runs leave memory
and come back through the alarm index. It starts (idempotently) WORKFLOWS workflows
``chain-0``…, waits for all of them, prints their outputs as JSON and exits.
The test kills it with SIGKILL and runs it again on the same store until it completes.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

import durable


def log_execution(log: str, line: str) -> None:
    """Append *line* to the side-effect log and make it durable."""
    with open(log, "a", encoding="utf-8") as file:  # noqa: PTH123
        file.write(f"{line}\n")
        file.flush()
        os.fsync(file.fileno())


def make_chain(log: str, steps: int, delay: float) -> durable.Workflow:
    @durable.workflow(name="chain")
    async def chain(ctx: durable.WorkflowContext, seed: int) -> int:
        total = seed
        for i in range(steps):

            async def step(i: int = i, total: int = total) -> int:
                log_execution(log, f"{ctx.workflow_id} s{i}")
                await anyio.sleep(delay)
                return total * 3 + i

            total = await ctx.step(f"s{i}", step)
            if i == steps // 2:
                await ctx.sleep("pause", 0.05)
        return total

    return chain


async def main(store: str, log: str, workflows: int, steps: int, delay: float) -> None:
    async with durable.LevelDBDriver(store, poll_interval=0.02) as driver:
        worker = durable.Worker(driver, [make_chain(log, steps, delay)], concurrency=3)
        async with worker:
            handles = [
                await worker.start("chain", f"chain-{i}", i) for i in range(workflows)
            ]
            outputs = {h.workflow_id: (await h.result()).output for h in handles}
    sys.stdout.write(json.dumps(outputs, sort_keys=True))


if __name__ == "__main__":
    store, log, backend, workflows, steps, delay = sys.argv[1:]
    anyio.run(
        main, store, log, int(workflows), int(steps), float(delay), backend=backend
    )
