"""W3w: W3's workflows run by K worker processes that share one PostgreSQL store.

For each K, on a fresh store: the benchmark stores n workflows of ten steps (not
timed), starts K `benchmarks.worker_proc` processes, each a `durable.Worker` with a
lease, waits until every one has connected, says ``go`` and times until the store
has no alarm left (every workflow reached a final state). It then stops the workers
and checks that every workflow completed once, with its output, and that the step
bodies ran exactly ten times n in all: with a 30 s lease and no crash, a step run
twice would mean two workers ran one workflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg.conninfo
from anyio.streams.buffered import BufferedByteReceiveStream

import durable

from .postgres import (
    SUITE,
    backend_seconds,
    drop_store_after,
    machine_busy,
    machine_jiffies,
    new_store,
    sample_activity,
    store_dsn,
)
from .worker_proc import NAME, STEPS, expected_output, ten_steps

if TYPE_CHECKING:
    from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEASE = 30.0  # seconds, the sound default of docs/workers.md
_POLL = 0.01  # seconds between looks at the alarm index while the workers run


class _Child:
    """One worker process and its line-buffered stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        if process.stdout is None or process.stdin is None:
            raise RuntimeError("a worker process without pipes")
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)

    async def say(self, line: str) -> None:
        await self.stdin.send(f"{line}\n".encode())

    async def hear(self) -> str:
        return (await self.stdout.receive_until(b"\n", 1 << 16)).decode().strip()


async def _spawn(
    dsn: str, store: str, lease: float, backend: str, pool_size: int | None
) -> _Child:
    command = [
        sys.executable,
        "-m",
        "benchmarks.worker_proc",
        "--dsn",
        store_dsn(dsn, store),  # measured: its backends carry the store's name
        "--store",
        store,
        "--lease",
        str(lease),
        "--backend",
        backend,
    ]
    if pool_size is not None:
        command += ["--pool-size", str(pool_size)]
    # stderr is inherited: a worker's warnings show up where the suite's do
    return _Child(await anyio.open_process(command, cwd=ROOT, stderr=None))


async def _each(count: int, fn: Any, limit: int = 16) -> None:
    """Await fn(i) for i in range(count), at most *limit* at once."""
    limiter = anyio.CapacityLimiter(limit)

    async def one(i: int) -> None:
        async with limiter:
            await fn(i)

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)


async def run_once(
    dsn: str,
    n: int,
    workers: int,
    *,
    lease: float,
    backend: str,
    pool_size: int | None,
) -> dict[str, Any]:
    """One K: n workflows drained by *workers* processes; figures and checks."""
    store = new_store()
    try:
        # the benchmark's own connections are named SUITE: not measured as workers'
        mine = psycopg.conninfo.make_conninfo(dsn, application_name=SUITE)
        async with durable.PostgresDriver(mine, store=store) as driver:
            starter = durable.Worker(driver, [ten_steps])  # only stores; never runs

            async def start(i: int) -> None:
                await starter.start(NAME, f"w3w-{i}", i)

            await _each(n, start)
            children: list[_Child] = []
            try:
                while len(children) < workers:  # one at a time: each is killed below
                    children.append(await _spawn(dsn, store, lease, backend, pool_size))
                for child in children:
                    if (ready := await child.hear()) != "ready":
                        raise RuntimeError(f"a W3w worker said {ready!r}, not ready")
                figures = await _drain(driver, dsn, store, children)
                for child in children:
                    await child.say("stop")
                reports = [json.loads(await child.hear()) for child in children]
                for child in children:
                    await child.process.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    for child in children:
                        if child.process.returncode is None:
                            child.process.kill()
                            await child.process.wait()
            await _check(starter, n, reports)
    finally:
        await drop_store_after(dsn, store)
    seconds = figures["seconds"]
    return {
        "seconds": round(seconds, 6),
        "per_sec": round(n / seconds, 1),
        "workflows_by_worker": [report["workflows"] for report in reports],
        "worker_cores": round(sum(r["cpu_seconds"] for r in reports) / seconds, 3),
        **figures["load"],
        "pg_activity": figures["activity"],
    }


async def _drain(
    driver: durable.Driver, dsn: str, store: str, children: list[_Child]
) -> dict[str, Any]:
    """Say go, wait until no alarm is left; the time, CPU and server activity."""
    done = anyio.Event()
    activity: dict[str, float] = {}

    async def sample() -> None:
        activity.update(await sample_activity(dsn, store, done))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        server = await anyio.to_thread.run_sync(backend_seconds, dsn, store)
        machine, cpu = machine_jiffies(), time.process_time()
        started = time.perf_counter()
        for child in children:
            await child.say("go")
        # polled: a final state wakes only its own workflow's subscribers
        while await driver.list_alarms(limit=1):  # noqa: ASYNC110
            await anyio.sleep(_POLL)
        seconds = time.perf_counter() - started
        load: dict[str, float | None] = {
            "machine_busy": machine_busy(machine, machine_jiffies()),
            "bench_cores": round((time.process_time() - cpu) / seconds, 3),
        }
        after = await anyio.to_thread.run_sync(backend_seconds, dsn, store)
        if server is not None and after is not None:
            load["postgres_cores"] = round((after - server) / seconds, 3)
        done.set()
    return {"seconds": seconds, "load": load, "activity": activity}


async def _check(
    starter: durable.Worker, n: int, reports: list[dict[str, Any]]
) -> None:
    """Every workflow completed with its output; every step body ran exactly once."""
    wrong: list[str] = []

    async def check(i: int) -> None:
        result = await starter.handle(f"w3w-{i}").result()
        if result.output != expected_output(i):
            wrong.append(f"w3w-{i} returned {result.output!r}")

    await _each(n, check)
    steps = sum(report["steps"] for report in reports)
    finished = sum(report["workflows"] for report in reports)
    warnings = sum(report["warnings"] for report in reports)
    if wrong or steps != STEPS * n or finished != n or warnings:
        raise RuntimeError(
            f"W3w: {len(wrong)} wrong outputs {wrong[:3]}, {steps} step bodies run "
            f"for {STEPS * n} steps, {finished} workflow bodies finished for {n} "
            f"workflows, {warnings} worker warnings: a workflow ran twice or was lost"
        )


async def w3w(
    dsn: str,
    n: int,
    workers: list[int],
    *,
    lease: float,
    backend: str,
    pool_size: int | None,
) -> dict[str, Any]:
    """Every K in *workers*, one after another; the largest K's figures lead."""
    by_workers: dict[str, dict[str, Any]] = {}
    for k in workers:
        by_workers[str(k)] = await run_once(
            dsn, n, k, lease=lease, backend=backend, pool_size=pool_size
        )
    base = by_workers[str(workers[0])]["per_sec"]
    for figures in by_workers.values():
        figures["ratio"] = round(figures["per_sec"] / base, 2)
    last = by_workers[str(workers[-1])]
    return {
        "n": n,
        "seconds": last["seconds"],
        "extra": {
            "workers": workers,
            "by_workers": by_workers,
            "steps_each": STEPS,
            "lease": lease,
            "concurrency": durable.DEFAULT_CONCURRENCY,
        },
    }
