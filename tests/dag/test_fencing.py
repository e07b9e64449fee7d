"""durable.dag with leases: a result from an expired lease is rejected (fencing).

Two runtimes share one PostgreSQL store, each through its own `PostgresDriver` (its
own pool and listener, as two processes would have). Runtime A plays a process that
stopped mid-step (a long GC pause, a suspended VM): its clock stands still, so it
never renews its lease. Runtime B takes the run over once the lease ran out, runs
the step again and finishes the run; when A wakes up, its step's result must be
refused by the lease record's fencing token and never reach the history.
"""

from __future__ import annotations

import logging
from collections import Counter

import anyio
import anyio.lowlevel
import pytest

import durable
from durable import dag

pytestmark = pytest.mark.anyio
LIMIT = 20.0  # seconds; a hang fails the test instead of blocking CI
LEASE = 0.5  # seconds


class PausedClock(durable.Clock):
    """The clock of a paused process: time stands still and no future wait ends."""

    def __init__(self, frozen: float) -> None:
        self.frozen = frozen

    def now(self) -> float:
        return self.frozen

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.frozen:
            await anyio.lowlevel.checkpoint()
            return
        await anyio.sleep_forever()


def one_step_package() -> dag.Package:
    def start(run: dag.RunBuilder, _: object) -> None:
        run.step("s", None, kind="work")

    return dag.package("fenced").entrypoint(start).build()


async def test_a_result_from_an_expired_lease_is_rejected(
    postgres_dsn: str,
    postgres_store: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.worker")
    calls: Counter[str] = Counter()
    refusals: list[bool] = []  # per write A's store refused: after A woke up?
    entered = anyio.Event()
    release = anyio.Event()
    returned = anyio.Event()

    async def paused_work(step: dag.StepContext) -> str:
        calls["A"] += 1
        entered.set()
        await release.wait()
        returned.set()
        return "from-A"

    async def work(step: dag.StepContext) -> str:
        calls["B"] += 1
        return "from-B"

    async with (
        durable.PostgresDriver(postgres_dsn, store=postgres_store) as driver_a,
        durable.PostgresDriver(postgres_dsn, store=postgres_store) as driver_b,
    ):
        write = driver_a.write

        async def spied_write(batch: durable.Batch) -> None:
            try:
                await write(batch)
            except durable.WriteConflictError:
                refusals.append(returned.is_set())
                raise

        monkeypatch.setattr(driver_a, "write", spied_write)
        paused = dag.Runtime(
            driver_a,
            lease=LEASE,
            clock=PausedClock(durable.SystemClock().now()),
            worker_id="A",
        )
        paused.register_executor("work", paused_work)
        paused.register_package(one_step_package())
        other = dag.Runtime(
            driver_b, lease=LEASE, clock=durable.SystemClock(), worker_id="B"
        )
        other.register_executor("work", work)
        other.register_package(one_step_package())

        with anyio.fail_after(LIMIT):
            async with paused:
                handle = await paused.start_run("fenced", run_id="r")
                await entered.wait()  # A holds the lease and runs `s`, then pauses
                async with other:
                    run = await other.wait_run(handle.id)  # after the lease ran out
                    assert run.status == dag.RunStatus.SUCCEEDED
                    assert run.steps["s"].status == dag.StepStatus.SUCCEEDED
                    assert run.steps["s"].attempts == 1
                    assert await data_of(other, "r") == "from-B"

                    release.set()  # A wakes up and reports "from-A": refused
                    await returned.wait()
                    while paused._worker.running:  # noqa: ASYNC110 - the worker has no event
                        await anyio.sleep(0.01)
            # A's `async with` exited cleanly after its write was refused

    assert calls == {"A": 1, "B": 1}
    # A wrote nothing refused while it held the lease; its late result was refused
    # (and so was its lease release, which the worker ignores)
    assert refusals, "A's late result was not refused"
    assert all(refusals), refusals
    refused = [
        record
        for record in caplog.records
        if record.name == "durable.worker" and "took it over" in record.getMessage()
    ]
    assert len(refused) == 1, caplog.text
    assert "'r'" in refused[0].getMessage()

    async with durable.PostgresDriver(postgres_dsn, store=postgres_store) as driver:
        reader = dag.Runtime(driver)
        run = await reader.get_run("r")
        assert run.status == dag.RunStatus.SUCCEEDED
        assert run.steps["s"].attempts == 1
        assert await data_of(reader, "r") == "from-B"


async def data_of(runtime: dag.Runtime, run_id: str) -> object:
    result = await runtime.get_result(run_id, "s")
    assert result is not None
    assert result.status == dag.StepStatus.SUCCEEDED
    return result.data
