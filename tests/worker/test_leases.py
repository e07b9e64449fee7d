"""Workers sharing a store: claims, leases, renewals and fencing (any driver)."""

from __future__ import annotations

import contextlib
import logging

import anyio
import pytest

import durable
from durable._lease import Lease, lease_key, read_lease
from durable.testing import FaultyDriver, TestClock

SAFETY = 10.0
LEASE = 30.0


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, line: str) -> str:
        self.lines.append(line)
        return line


def make_chain(log: Log, steps: int, pause: float) -> durable.Workflow:
    @durable.workflow(name="chain")
    async def chain(ctx: durable.WorkflowContext, _: object) -> int:
        for i in range(steps):
            await ctx.step(f"s{i}", lambda i=i: log.step(f"{ctx.workflow_id} s{i}"))
            if i == steps // 2:
                await ctx.sleep("pause", pause)
        return steps

    return chain


async def test_two_workers_share_the_work_and_each_step_runs_once(
    driver: durable.Driver,
) -> None:
    log = Log()
    async with contextlib.AsyncExitStack() as stack:
        clock: durable.Clock
        if isinstance(driver, durable.PostgresDriver):
            # its I/O runs in threads, which an autojumping clock cannot see: time
            # would jump past leases while a write is in flight. Real time, then,
            # and a pause the driver's 0.2 s poll interval turns into a yield.
            driver.poll_interval = 0.2
            clock, chain = durable.SystemClock(), make_chain(log, 6, 0.3)
        else:
            clock = await stack.enter_async_context(TestClock(autojump=True))
            chain = make_chain(log, 6, 5.0)
        first = durable.Worker(driver, [chain], clock=clock, lease=LEASE, concurrency=3)
        second = durable.Worker(
            driver, [chain], clock=clock, lease=LEASE, concurrency=3
        )
        async with first, second:
            handles = [await first.start("chain", f"c-{i}", None) for i in range(20)]
            with anyio.fail_after(SAFETY):
                for handle in handles:
                    assert (await handle.result()).output == 6
    assert sorted(log.lines) == sorted(
        f"c-{i} s{j}" for i in range(20) for j in range(6)
    )
    for i in range(20):  # released: another worker may claim it at once
        lease, _ = await read_lease(driver, f"c-{i}")
        assert lease is not None
        assert lease.owner is None


@pytest.mark.parametrize("driver", ["memory", "postgres"], indirect=True)
async def test_a_worker_that_lost_its_lease_writes_nothing(
    driver: durable.Driver, caplog: pytest.LogCaptureFixture
) -> None:
    entered, release = anyio.Event(), anyio.Event()
    log = Log()

    @durable.workflow(name="slow")
    async def slow(ctx: durable.WorkflowContext, _: object) -> str:
        async def blocked() -> str:
            entered.set()
            await release.wait()
            return log.step("first owner")

        return await ctx.step("work", blocked)

    worker = durable.Worker(driver, [slow], lease=LEASE)
    with caplog.at_level(logging.WARNING, logger="durable.worker"):
        async with worker:
            handle = await worker.start("slow", "s-1", None)
            with anyio.fail_after(SAFETY):
                await entered.wait()
            # another worker takes over (as after a pause longer than the lease)
            lease, raw = await read_lease(driver, "s-1")
            assert lease is not None
            assert lease.owner == worker.id
            batch = durable.Batch()
            batch.check(lease_key("s-1"), raw)
            batch.put(
                lease_key("s-1"),
                Lease("other", lease.token + 1, lease.expires_at + 60).to_bytes(),
            )
            await driver.write(batch)
            release.set()
            with anyio.fail_after(SAFETY):
                while worker.running:
                    await anyio.wait_all_tasks_blocked()
    assert "took it over" in caplog.text
    assert log.lines == ["first owner"]  # the body ran; its result was refused
    assert await handle.get_history() == ()  # the step's result was not recorded
    assert await handle.get_state() != "completed"
    lease, _ = await read_lease(driver, "s-1")
    assert lease is not None
    assert lease.owner == "other"  # the old owner did not even release it


async def test_a_cancel_from_another_process_stops_the_owner() -> None:
    entered, release = anyio.Event(), anyio.Event()
    log = Log()

    @durable.workflow(name="two")
    async def two(ctx: durable.WorkflowContext, _: object) -> str:
        async def blocked() -> str:
            entered.set()
            await release.wait()
            return log.step("one")

        await ctx.step("one", blocked)
        return await ctx.step("two", lambda: log.step("two"))

    async with durable.MemoryDriver() as driver:
        elsewhere = FaultyDriver(driver)  # another driver object: another process
        async with durable.Worker(driver, [two], lease=LEASE) as worker:
            await worker.start("two", "t-1", None)
            with anyio.fail_after(SAFETY):
                await entered.wait()
            await durable.run_workflow("t-1", two, None, driver=elsewhere).cancel()
            release.set()
            with anyio.fail_after(SAFETY):
                while worker.running:
                    await anyio.wait_all_tasks_blocked()
            handle = worker.handle("t-1")
            assert await handle.get_state() == "cancelled"
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()
        assert log.lines == ["one"]  # the owner stopped before step two


async def test_a_lease_is_renewed_while_a_long_step_runs() -> None:
    release = anyio.Event()

    @durable.workflow(name="long")
    async def long(ctx: durable.WorkflowContext, _: object) -> str:
        async def forever() -> str:
            await release.wait()
            return "done"

        return await ctx.step("work", forever, timeout=10 * LEASE)

    clock = TestClock()
    async with (
        durable.MemoryDriver() as driver,
        durable.Worker(driver, [long], lease=LEASE, clock=clock) as worker,
    ):
        handle = await worker.start("long", "l-1", None)
        with anyio.fail_after(SAFETY):
            while (await read_lease(driver, "l-1"))[0] is None:
                await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
        for _ in range(6):  # two lease lengths, a third at a time
            clock.jump(LEASE / 3)
            await anyio.wait_all_tasks_blocked()
        lease, _ = await read_lease(driver, "l-1")
        assert lease is not None
        assert lease.owner == worker.id
        assert lease.token == 1  # renewed, never taken over
        assert lease.expires_at > clock.now()
        assert await driver.get_alarm("l-1") == lease.expires_at
        release.set()
        with anyio.fail_after(SAFETY):
            assert (await handle.result()).output == "done"


async def test_a_message_to_a_running_workflow_does_not_move_it_to_another_worker() -> (
    None
):
    entered, release = anyio.Event(), anyio.Event()

    @durable.workflow(name="asks")
    async def asks(ctx: durable.WorkflowContext, _: object) -> object:
        async def blocked() -> None:
            entered.set()
            await release.wait()

        await ctx.step("work", blocked)
        [body] = await ctx.queue.next("answer", names=["answer"])
        return body

    async with durable.MemoryDriver() as driver:
        first = durable.Worker(driver, [asks], lease=LEASE)
        second = durable.Worker(driver, [asks], lease=LEASE)
        async with first, second:
            handle = await first.start("asks", "a-1", None)
            with anyio.fail_after(SAFETY):
                await entered.wait()
            owner = (await read_lease(driver, "a-1"))[0]
            await handle.message("answer", 42)  # sets the alarm to now
            await anyio.wait_all_tasks_blocked()
            assert (await read_lease(driver, "a-1"))[0] == owner  # not taken over
            release.set()
            with anyio.fail_after(SAFETY):
                assert (await handle.result()).output == 42


async def test_a_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lease"):
        durable.Worker(durable.MemoryDriver(), lease=0)


@pytest.mark.parametrize("driver", ["memory", "postgres"], indirect=True)
async def test_a_message_from_another_process_wakes_a_waiting_workflow(
    driver: durable.Driver, postgres_dsn: str
) -> None:
    @durable.workflow(name="waits")
    async def waits(ctx: durable.WorkflowContext, _: object) -> object:
        [body] = await ctx.queue.next("answer", names=["answer"])
        return body

    if isinstance(driver, durable.MemoryDriver):
        elsewhere: durable.Driver = FaultyDriver(driver)
    else:  # a second pool of connections to the same store, as another process has
        store = driver.store  # type: ignore[attr-defined]
        elsewhere = durable.PostgresDriver(postgres_dsn, store=store)
    async with durable.Worker(driver, [waits], lease=LEASE) as worker:
        handle = await worker.start("waits", "w-1", None)
        with anyio.fail_after(SAFETY):
            # PostgreSQL answers from worker threads: poll rather than wait for
            # every task to block
            while await handle.get_state() != "sleeping":  # noqa: ASYNC110
                await anyio.sleep(0.01)
        async with elsewhere:
            await durable.run_workflow("w-1", waits, None, driver=elsewhere).message(
                "answer", "from afar"
            )
        with anyio.fail_after(SAFETY):
            assert (await handle.result()).output == "from afar"
