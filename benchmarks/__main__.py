"""The benchmark suite of ../shared/spec/BENCHMARKS.md: ``python -m benchmarks``.

Prints one JSON line per workload. Every workload runs on a fresh store (a
temporary directory, or a PostgreSQL schema dropped afterwards). Compare ratios
taken in one run, never absolute times.

    python -m benchmarks                      # every workload, default sizes
    python -m benchmarks --only W0,W1,W2 --n 2000
    python -m benchmarks --driver memory --sync
    python -m benchmarks --driver leveldb,postgres --only W0,W1,W3,W6
    python -m benchmarks --driver postgres --only W3w --workers 1,2,4
    python -m benchmarks --only WD --n 4000   # a DAG run of 40,002 steps
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import plyvel

import durable
from durable import dag

from . import postgres, scaling

Workload = Callable[["Bench"], Awaitable[dict[str, Any]]]
WORKLOADS: dict[str, Workload] = {}
ONLY_ON: dict[str, set[str]] = {}  # workload -> the drivers it needs, if not every one
DRIVERS = ("leveldb", "memory", "postgres")
PostgresT = TypeVar("PostgresT", bound=postgres.MeasuredPostgresDriver)
PARKED = 10**9  # seconds: a sleep that parks a workflow so a later run replays it


def workload(
    name: str, *, only_on: set[str] | None = None
) -> Callable[[Workload], Workload]:
    def register(fn: Workload) -> Workload:
        WORKLOADS[name] = fn
        if only_on is not None:
            ONLY_ON[name] = only_on
        return fn

    return register


class RecordingLevelDBDriver(durable.LevelDBDriver):
    """A LevelDBDriver that remembers the puts of every batch it writes (for W0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[tuple[bytes, bytes]]] = []

    async def write(self, batch: durable.Batch) -> None:
        self.batches.append([(op[1], op[2]) for op in batch.ops if op[0] == 0])
        await super().write(batch)


class Bench:
    """Options shared by the workloads, and fresh stores for them."""

    def __init__(
        self,
        tmp: Path,
        driver: str,
        n: int | None,
        *,
        sync: bool,
        dsn: str,
        workers: list[int],
        backend: str,
        pool_size: int | None,
    ) -> None:
        self.tmp = tmp
        self.driver_name = driver
        self.n_override = n
        self.sync = sync
        self.dsn = postgres.session_dsn(dsn, sync=sync)
        self.workers = workers
        self.backend = backend
        self.pool_size = pool_size  # None: PostgresDriver's default
        self._count = 0
        self._stores: list[str] = []
        self._drivers: list[postgres.MeasuredPostgresDriver] = []
        self.raw_backend_seconds = 0.0

    def n(self, default: int) -> int:
        return self.n_override or default

    def path(self) -> Path:
        self._count += 1
        return self.tmp / f"store-{self._count}"

    def store(self) -> str:
        """A new PostgreSQL store name, dropped by `cleanup`."""
        self._stores.append(postgres.new_store())
        return self._stores[-1]

    def driver(self) -> durable.Driver:
        if self.driver_name == "memory":
            return durable.MemoryDriver()
        if self.driver_name == "postgres":
            return self.postgres(postgres.MeasuredPostgresDriver)
        return durable.LevelDBDriver(self.path(), sync=self.sync)

    def postgres(self, cls: type[PostgresT]) -> PostgresT:
        """A *cls* driver on a new store, with --pool-size if given."""
        if self.pool_size is None:
            made = cls(self.dsn, store=self.store())
        else:
            made = cls(self.dsn, store=self.store(), pool_size=self.pool_size)
        self._drivers.append(made)
        return made

    def backend_seconds(self) -> float:
        """CPU seconds of the server backends of every driver made since last time
        (each measures its own as it closes), and of W0's raw connection."""
        drivers, self._drivers = self._drivers, []
        raw, self.raw_backend_seconds = self.raw_backend_seconds, 0.0
        return raw + sum(driver.backend_seconds for driver in drivers)

    async def cleanup(self) -> None:
        """Drop the PostgreSQL stores made since the last cleanup."""
        stores, self._stores = self._stores, []
        for store in stores:
            await postgres.drop_store_after(self.dsn, store)


def steps_workflow(
    count: int, executed: list[int], *, park: bool
) -> Callable[[durable.WorkflowContext, object], Awaitable[int]]:
    def work(i: int) -> int:
        executed.append(i)
        return i

    async def workflow(ctx: durable.WorkflowContext, _: object) -> int:
        total = 0
        for i in range(count):
            total += await ctx.step(f"s{i}", functools.partial(work, i))
        if park:
            await ctx.sleep("parked", PARKED)
        return total

    return workflow


async def run_steps(
    driver: durable.Driver, workflow_id: str, count: int, *, park: bool
) -> tuple[float, int]:
    executed: list[int] = []
    handle = durable.run_workflow(
        workflow_id,
        steps_workflow(count, executed, park=park),
        None,
        driver=driver,
        mode="yield",
    )
    started = time.perf_counter()
    await handle.result()
    return time.perf_counter() - started, len(executed)


@workload("W0")
async def w0(bench: Bench) -> dict[str, Any]:
    """Raw plyvel: the batches W1 writes, written straight through plyvel.

    On PostgreSQL: the batches W1 writes there, each one transaction through
    psycopg on one connection (see `postgres.write_raw`).
    """
    n = bench.n(1000)
    if bench.driver_name == "postgres":
        pg_recorder = bench.postgres(postgres.RecordingPostgresDriver)
        async with pg_recorder:
            await run_steps(pg_recorder, "w1", n, park=False)
        seconds, bench.raw_backend_seconds = await anyio.to_thread.run_sync(
            postgres.write_raw, bench.dsn, bench.store(), pg_recorder.batches
        )
        return {
            "n": len(pg_recorder.batches),
            "seconds": seconds,
            "extra": {"steps": n},
        }
    recorder = RecordingLevelDBDriver(bench.path())
    async with recorder:
        await run_steps(recorder, "w1", n, park=False)
    batches = recorder.batches
    db = plyvel.DB(str(bench.path()), create_if_missing=True)
    try:
        started = time.perf_counter()
        for puts in batches:
            with db.write_batch(sync=bench.sync) as wb:
                for key, value in puts:
                    wb.put(key, value)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    return {"n": len(batches), "seconds": seconds, "extra": {"steps": n}}


@workload("W1")
async def w1(bench: Bench) -> dict[str, Any]:
    """One workflow, n sequential steps, fresh run to completion."""
    n = bench.n(1000)
    async with bench.driver() as driver:
        seconds, executed = await run_steps(driver, "w1", n, park=False)
    return {"n": n, "seconds": seconds, "extra": {"executed": executed}}


@workload("W2")
async def w2(bench: Bench) -> dict[str, Any]:
    """Replay of n completed steps: the W1 workflow parked at a final long sleep
    (yield mode) is run again, replaying every step and parking again."""
    n = bench.n(1000)
    async with bench.driver() as driver:
        await run_steps(driver, "w2", n, park=True)
        seconds, executed = await run_steps(driver, "w2", n, park=True)
    return {"n": n, "seconds": seconds, "extra": {"executed": executed}}


@workload("W3")
async def w3(bench: Bench) -> dict[str, Any]:
    """n workflows x 10 steps, to completion, at most 100 in flight."""
    n = bench.n(1000)
    limiter = anyio.CapacityLimiter(100)

    async def one(driver: durable.Driver, i: int) -> None:
        async with limiter:
            await run_steps(driver, f"w3-{i}", 10, park=False)

    async with bench.driver() as driver:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, driver, i)
        seconds = time.perf_counter() - started
    return {"n": n, "seconds": seconds, "extra": {"steps_each": 10, "in_flight": 100}}


@workload("W4")
async def w4(bench: Bench) -> dict[str, Any]:
    """One ctx.loop of n iterations, one step each, default pruning."""
    n = bench.n(10_000)

    async def body(ctx: durable.WorkflowContext, state: int) -> object:
        value = await ctx.step("add", functools.partial(int.__add__, state, 1))
        return (
            durable.Loop.break_(value) if value >= n else durable.Loop.continue_(value)
        )

    async def looping(ctx: durable.WorkflowContext, _: object) -> object:
        return await ctx.loop("loop", body, state=0)

    async with bench.driver() as driver:
        handle = durable.run_workflow("w4", looping, None, driver=driver)
        started = time.perf_counter()
        result = await handle.result()
        seconds = time.perf_counter() - started
        keys = len(await driver.list_range(b"", b"\xff"))
    if result.output != n:
        raise RuntimeError(f"W4 ended with {result.output!r}, not {n}")
    return {"n": n, "seconds": seconds, "extra": {"keys": keys}}


@workload("W5")
async def w5(bench: Bench) -> dict[str, Any]:
    """One workflow reads n messages with queue.next while n are sent to it."""
    n = bench.n(1000)

    async def reader(ctx: durable.WorkflowContext, _: object) -> int:
        total = 0
        for i in range(n):
            [body] = await ctx.queue.next(f"m{i}", names=["m"])
            total += body
        return total

    async with bench.driver() as driver:
        handle = durable.run_workflow("w5", reader, None, driver=driver)
        started = time.perf_counter()
        async with handle:
            for i in range(n):
                await handle.message("m", i)
            result = await handle.result()
        seconds = time.perf_counter() - started
    if result.output != sum(range(n)):
        raise RuntimeError("W5 lost or duplicated messages")
    return {"n": n, "seconds": seconds, "extra": {"sender": "ahead"}}


@workload("W5p")
async def w5p(bench: Bench) -> dict[str, Any]:
    """Ping-pong: send one message, wait until the live workflow consumed it and ran
    one step, n times."""
    n = bench.n(1000)
    consumed = anyio.Event()

    def ack() -> int:
        consumed.set()
        return 1

    async def ponger(ctx: durable.WorkflowContext, _: object) -> int:
        for i in range(n):
            await ctx.queue.next(f"ping{i}", names=["ping"])
            await ctx.step(f"pong{i}", ack)
        return n

    async with bench.driver() as driver:
        handle = durable.run_workflow("w5p", ponger, None, driver=driver)
        started = time.perf_counter()
        async with handle:
            for i in range(n):
                await handle.message("ping", i)
                await consumed.wait()
                consumed = anyio.Event()
            await handle.result()
        seconds = time.perf_counter() - started
    return {"n": n, "seconds": seconds, "extra": {}}


@workload("W6")
async def w6(bench: Bench) -> dict[str, Any]:
    """n workflows that each sleep 10 ms then run one step, live mode."""
    n = bench.n(1000)

    async def sleeper(ctx: durable.WorkflowContext, _: object) -> int:
        await ctx.sleep("nap", 0.01)
        return await ctx.step("work", lambda: 1)

    async def one(driver: durable.Driver, i: int) -> None:
        await durable.run_workflow(f"w6-{i}", sleeper, None, driver=driver).result()

    async with bench.driver() as driver:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, driver, i)
        seconds = time.perf_counter() - started
    return {"n": n, "seconds": seconds, "extra": {}}


@workload("W3w", only_on={"postgres"})
async def w3w(bench: Bench) -> dict[str, Any]:
    """W3's n workflows x 10 steps, run by K worker processes sharing one store,
    for each K of --workers (see benchmarks/scaling.py)."""
    return await scaling.w3w(
        bench.dsn,
        bench.n(1000),
        bench.workers,
        lease=scaling.DEFAULT_LEASE,
        backend=bench.backend,
        pool_size=bench.pool_size,
    )


async def _until_settled(worker: durable.Worker, driver: durable.Driver) -> None:
    """Wait until the worker runs nothing and no workflow is pending."""
    settled = False
    while not settled:
        await anyio.sleep(0.01)
        pending = await durable.list_workflows(driver=driver, state="pending", limit=1)
        settled = not worker.running and not pending.workflows


@workload("WH")
async def wh(bench: Bench) -> dict[str, Any]:
    """Worker host: n due one-step workflows, on an empty store and with 10 n asleep.

    The worker finds due work through the alarm index, so the sleepers should cost
    (almost) nothing: ``extra.ratio`` is the throughput with them over without.
    """
    n = bench.n(1000)
    sleepers = 10 * n

    @durable.workflow(name="sleeper")
    async def sleeper(ctx: durable.WorkflowContext, _: object) -> None:
        await ctx.sleep("nap", PARKED)

    @durable.workflow(name="one-step")
    async def one_step(ctx: durable.WorkflowContext, i: object) -> object:
        return await ctx.step("echo", lambda: i)

    async def run_due(worker: durable.Worker, prefix: str) -> float:
        started = time.perf_counter()
        handles = [await worker.start("one-step", f"{prefix}-{i}", i) for i in range(n)]
        for handle in handles:
            await handle.result()
        return time.perf_counter() - started

    async with (
        bench.driver() as driver,
        durable.Worker(driver, [sleeper, one_step]) as worker,
    ):
        empty = await run_due(worker, "empty")
        for i in range(sleepers):
            await worker.start("sleeper", f"asleep-{i}", None)
        # until every sleeper ran to its sleep (the timed part then finds only due work)
        await _until_settled(worker, driver)
        crowded = await run_due(worker, "crowded")
    return {
        "n": n,
        "seconds": crowded,
        "extra": {
            "sleepers": sleepers,
            "empty_per_sec": round(n / empty, 1),
            "ratio": round(empty / crowded, 2),
        },
    }


@workload("W7")
async def w7(bench: Bench) -> dict[str, Any]:
    """Replay-cost growth: replay time of a 100x larger history over a small one.

    Each size is replayed five times and the fastest replay counts: a 100-step
    replay takes about a millisecond, where one scheduler hiccup skews a ratio.
    """
    large = bench.n(10_000)
    small = max(1, large // 100)
    times = {}
    for count in (small, large):
        async with bench.driver() as driver:
            await run_steps(driver, "w7", count, park=True)
            best = float("inf")
            for _ in range(5):
                seconds, executed = await run_steps(driver, "w7", count, park=True)
                if executed:
                    raise RuntimeError("W7 replay executed steps")
                best = min(best, seconds)
            times[count] = best
    ratio = times[large] / times[small]
    return {
        "n": large,
        "seconds": times[large],
        "per_sec_override": large / times[large],
        "extra": {
            "ratio": round(ratio, 1),
            "small": small,
            "small_seconds": times[small],
            "replays": 5,
        },
    }


WD_GRANDCHILDREN = 9  # per child: the run has 1 + n + 9 n + 1 = 10 n + 2 steps
WD_WORKERS = 64  # max_workers of queue "work", which every WD step is on
WD_POLL = 0.005  # seconds between two looks at the run's workflow state


def wd_runtime(driver: durable.Driver, n: int, executed: list[str]) -> dag.Runtime:
    """A runtime with WD's package ``bench-dag``; *executed* gets each step's id."""
    runtime = dag.Runtime(
        driver, queues={"work": dag.QueuePolicy(max_workers=WD_WORKERS)}
    )

    @runtime.executor("bench/root")
    def root(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        children = [
            step.emit(f"c{i}", i, kind="bench/child", queue="work") for i in range(n)
        ]
        step.emit("fanin", None, kind="bench/fanin", queue="work", depends_on=children)
        return 0

    @runtime.executor("bench/child")
    def child(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        for j in range(WD_GRANDCHILDREN):
            step.emit(f"{step.step_id}.{j}", None, kind="bench/leaf", queue="work")
        return 1

    @runtime.executor("bench/leaf")
    def leaf(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        return 2

    @runtime.executor("bench/fanin")
    def fanin(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        return 3

    def entrypoint(run: dag.RunBuilder, _: object) -> None:
        run.step("root", None, kind="bench/root", queue="work")

    runtime.register_package(dag.package("bench-dag").entrypoint(entrypoint).build())
    return runtime


@workload("WD")
async def wd(bench: Bench) -> dict[str, Any]:
    """DAG: one run of 10 n + 2 steps on a `durable.dag.Runtime` serving it (workers).

    The entrypoint adds a root step; the root emits n children and a fan-in step
    that depends on all of them; each child emits 9 grandchildren. Every executor
    returns a small int; every step is on queue "work" (64 at once). The figure is
    steps/s from `start_run` until the run's workflow completed. That is found by
    listing the workflow (O(1) a look), not by `Runtime.wait_run`, each poll of
    which folds the whole history of the run; ``extra.read_seconds`` is one such
    read (`Runtime.get_run`) of the finished run, not timed in the figure.
    """
    n = bench.n(1000)
    steps = 1 + n + n * WD_GRANDCHILDREN + 1
    executed: list[str] = []
    async with bench.driver() as driver:
        runtime = wd_runtime(driver, n, executed)
        async with runtime:
            started = time.perf_counter()
            handle = await runtime.start_run("bench-dag", None, run_id="wd")
            while True:
                [summary] = (
                    await durable.list_workflows(
                        driver=driver, name=dag.RUN_WORKFLOW, limit=1
                    )
                ).workflows
                # a run that succeeded completes; a failed one waits for an operator
                state = summary.state
                if state.is_final or state == durable.WorkflowState.SLEEPING:
                    break
                await anyio.sleep(WD_POLL)
            seconds = time.perf_counter() - started
        read = time.perf_counter()
        run = await runtime.get_run(handle.id)
        read_seconds = time.perf_counter() - read
    if run.status != dag.RunStatus.SUCCEEDED or len(run.steps) != steps:
        raise RuntimeError(
            f"WD: the run is {run.status.value} with {len(run.steps)} steps, "
            f"not succeeded with {steps}"
        )
    if len(executed) != steps or len(set(executed)) != steps:
        raise RuntimeError(
            f"WD: {len(executed)} executions of {len(set(executed))} steps, not "
            f"one each of {steps}"
        )
    return {
        "n": n,
        "seconds": seconds,
        "per_sec_override": steps / seconds,
        "extra": {
            "steps": steps,
            "status": run.status.value,
            "executed": len(executed),
            "children": n,
            "grandchildren_each": WD_GRANDCHILDREN,
            "max_workers": WD_WORKERS,
            "read_seconds": round(read_seconds, 6),
        },
    }


def _selection(only: str | None, drivers: list[str]) -> dict[str, list[str]] | str:
    """The workloads to run on each driver, or why the selection is refused."""
    by_upper = {name.upper(): name for name in WORKLOADS}
    names = (
        list(WORKLOADS)
        if not only
        else [by_upper.get(w.strip().upper(), w.strip()) for w in only.split(",")]
    )
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        return (
            f"unknown or not yet available workloads: {', '.join(unknown)}; "
            f"available: {', '.join(WORKLOADS)}"
        )
    plan = {
        driver: [n for n in names if driver in ONLY_ON.get(n, {driver})]
        for driver in drivers
    }
    if only:
        nowhere = [n for n in names if not any(n in run for run in plan.values())]
        if nowhere:
            return ", ".join(
                f"{n} runs only on --driver {' or '.join(sorted(ONLY_ON[n]))}"
                for n in nowhere
            )
    return plan


async def main_async(args: argparse.Namespace) -> int:
    plan = _selection(args.only, args.driver)
    if isinstance(plan, str):
        print(plan, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as tmp:
        for driver_name, names in plan.items():
            bench = Bench(
                Path(tmp) / driver_name,
                driver_name,
                args.n,
                sync=args.sync,
                dsn=args.dsn,
                workers=args.workers,
                backend=args.backend,
                pool_size=args.pool_size,
            )
            bench.tmp.mkdir()
            for name in names:
                # start every workload with no garbage and no young objects left by
                # the imports or the workloads before it: collecting them is not its
                # cost
                gc.collect()
                # on PostgreSQL, where the CPU went (W3w measures its own, per K)
                measure = driver_name == "postgres" and name != "W3w"
                machine = postgres.machine_jiffies()
                cpu, wall = time.process_time(), time.perf_counter()
                try:
                    figures = await WORKLOADS[name](bench)
                finally:
                    await bench.cleanup()
                if measure:
                    wall = time.perf_counter() - wall
                    figures["extra"]["load"] = {
                        "machine_busy": postgres.machine_busy(
                            machine, postgres.machine_jiffies()
                        ),
                        "postgres_cores": round(bench.backend_seconds() / wall, 3),
                        "bench_cores": round((time.process_time() - cpu) / wall, 3),
                    }
                seconds = figures["seconds"]
                per_sec = (
                    figures.pop("per_sec_override", None) or figures["n"] / seconds
                )
                # W0 is raw plyvel but on PostgreSQL, where it is raw psycopg
                shown = driver_name
                if name == "W0" and driver_name != "postgres":
                    shown = "leveldb"
                line = {
                    "workload": name,
                    "driver": shown,
                    "n": figures["n"],
                    "seconds": round(seconds, 6),
                    "per_sec": round(per_sec, 1),
                    "extra": {**figures["extra"], "sync": args.sync},
                }
                if driver_name == "postgres":
                    pool_size = bench.pool_size or postgres.default_pool_size()
                    line["extra"]["pool_size"] = pool_size
                print(json.dumps(line), flush=True)
    return 0


def _drivers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in DRIVERS]
    if not names or wrong:
        raise argparse.ArgumentTypeError(
            f"drivers are {', '.join(DRIVERS)} (comma-separated), not {text!r}"
        )
    return list(dict.fromkeys(names))


def _workers(text: str) -> list[int]:
    try:
        counts = sorted({int(k) for k in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(
            f"--workers takes process counts >= 1 such as 1,2,4, not {text!r}"
        )
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", help="comma-separated workloads, e.g. W1,W2")
    parser.add_argument("--n", type=int, help="size override for every workload")
    parser.add_argument(
        "--driver",
        type=_drivers,
        default=["leveldb"],
        help="leveldb, memory or postgres, or several comma-separated (one run each)",
    )
    parser.add_argument(
        "--dsn",
        default=postgres.default_dsn(),
        help=f"PostgreSQL for --driver postgres (default ${postgres.DSN_ENV} or "
        f"{postgres.DEFAULT_DSN!r})",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        help="PostgresDriver pool_size, in every process (default: the driver's)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=[1, 2, 4],
        help="W3w: worker process counts, one measurement each (default 1,2,4)",
    )
    parser.add_argument(
        "--sync",
        action="store_true",
        help="fsync every durable write (the library default is off)",
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    return anyio.run(main_async, args, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
