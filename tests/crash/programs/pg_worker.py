"""A worker process on a shared PostgreSQL store, for the many-workers tests.

Usage: ``python pg_worker.py DSN STORE LOG BACKEND WORKFLOWS STEPS DELAY LEASE``

Runs a `durable.Worker` with ``lease=LEASE`` on ``PostgresDriver(DSN, store=STORE)``
serving workflow ``"chain"``: STEPS async steps, each appending
``"<workflow id> <step> <pid>\\n"`` to LOG (one ``write`` of a short line to a file
opened with O_APPEND, so lines from several processes never interleave) and then
lingering DELAY seconds, with a short durable sleep halfway so that runs leave
memory and come back through the claim path. Every process starts (idempotently)
the WORKFLOWS workflows ``chain-0``…, waits until all of them completed, prints
their outputs as JSON and exits; a process that is killed is replaced by the test.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

import durable


def log_execution(log: str, line: str) -> None:
    """Append *line* with one write on an O_APPEND descriptor, then fsync."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def make_chain(log: str, steps: int, delay: float) -> durable.Workflow:
    @durable.workflow(name="chain")
    async def chain(ctx: durable.WorkflowContext, seed: int) -> int:
        total = seed
        for i in range(steps):

            async def step(i: int = i, total: int = total) -> int:
                log_execution(log, f"{ctx.workflow_id} s{i} {os.getpid()}")
                await anyio.sleep(delay)
                return total * 3 + i

            total = await ctx.step(f"s{i}", step)
            if i == steps // 2:
                await ctx.sleep("pause", 0.05)
        return total

    return chain


async def main(
    dsn: str,
    store: str,
    log: str,
    workflows: int,
    steps: int,
    delay: float,
    lease: float,
) -> None:
    driver = durable.PostgresDriver(dsn, store=store, poll_interval=0.02)
    async with driver:
        worker = durable.Worker(
            driver, [make_chain(log, steps, delay)], concurrency=4, lease=lease
        )
        async with worker:
            handles = [
                await worker.start("chain", f"chain-{i}", i) for i in range(workflows)
            ]
            outputs = {h.workflow_id: (await h.result()).output for h in handles}
    sys.stdout.write(json.dumps(outputs, sort_keys=True))


if __name__ == "__main__":
    dsn, store, log, backend, workflows, steps, delay, lease = sys.argv[1:]
    anyio.run(
        main,
        dsn,
        store,
        log,
        int(workflows),
        int(steps),
        float(delay),
        float(lease),
        backend=backend,
    )
