"""Worker: named workflows, due-time scheduling, limits, restarts and shutdown."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

import durable
from durable.testing import TestClock

if TYPE_CHECKING:
    from pathlib import Path

SAFETY = 10.0  # seconds of real time any one test may wait; none comes close


class Calls:
    """Counts step executions by name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return name


def make_sleeper(calls: Calls, log: list[str]) -> durable.Workflow:
    @durable.workflow(name="sleeper")
    async def sleeper(ctx: durable.WorkflowContext, seconds: float) -> str:
        await ctx.step("before", lambda: calls("before"))
        await ctx.sleep("nap", seconds)
        log.append(ctx.workflow_id)
        return await ctx.step("after", lambda: calls("after"))

    return sleeper


@durable.workflow(name="waiter")
async def waiter(ctx: durable.WorkflowContext, _: object) -> object:
    [body] = await ctx.queue.next("wait", names=["go"])
    return body


@durable.workflow(name="echo")
async def echo(ctx: durable.WorkflowContext, value: object) -> object:
    return await ctx.step("echo", lambda: value)


async def until_state(handle: durable.WorkflowHandle, state: str) -> None:
    """Wait (bounded by the caller's fail_after) until the stored state is *state*."""
    while await handle.get_state() != state:
        await anyio.wait_all_tasks_blocked()


class TestRegistry:
    def test_decorator_names_default_to_the_function_name(self) -> None:
        @durable.workflow
        async def shipping(ctx: durable.WorkflowContext, _: object) -> None:
            pass

        assert shipping.name == "shipping"

    def test_a_plain_function_registers_under_its_name(self) -> None:
        async def billing(ctx: durable.WorkflowContext, _: object) -> None:
            pass

        worker = durable.Worker(durable.MemoryDriver(), [billing])
        assert list(worker.workflows) == ["billing"]

    def test_two_functions_with_one_name_are_refused(self) -> None:
        async def other(ctx: durable.WorkflowContext, _: object) -> None:
            pass

        worker = durable.Worker(durable.MemoryDriver(), [echo])
        with pytest.raises(ValueError, match="'echo'"):
            worker.register(durable.workflow(name="echo")(other))

    def test_registering_the_same_workflow_twice_is_harmless(self) -> None:
        worker = durable.Worker(durable.MemoryDriver(), [echo, echo])
        assert worker.workflows["echo"] is echo

    def test_an_empty_name_is_refused(self) -> None:
        with pytest.raises(ValueError, match="non-empty"):
            durable.workflow(name="")(echo.fn)

    def test_a_bad_concurrency_is_refused(self) -> None:
        with pytest.raises(ValueError, match="concurrency"):
            durable.Worker(durable.MemoryDriver(), concurrency=0)


class TestStart:
    async def test_started_workflow_runs_and_its_result_is_returned(self) -> None:
        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [echo]) as worker,
        ):
            handle = await worker.start("echo", "e-1", {"n": 1})
            with anyio.fail_after(SAFETY):
                result = await handle.result()
            assert result.output == {"n": 1}
            info = await handle.get_info()
            assert (info.name, info.state, info.input) == (
                "echo",
                "completed",
                {"n": 1},
            )

    async def test_starting_an_existing_id_with_the_same_name_is_idempotent(
        self,
    ) -> None:
        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [echo]) as worker,
        ):
            first = await worker.start("echo", "e-1", "first")
            await first.result()
            second = await worker.start("echo", "e-1", "second")
            assert (await second.result()).output == "first"
            assert (await second.get_info()).input == "first"

    async def test_starting_an_existing_id_with_another_name_is_refused(self) -> None:
        async with durable.MemoryDriver() as driver:
            worker = durable.Worker(driver, [echo, waiter])
            await worker.start("echo", "x-1", 1)
            with pytest.raises(durable.WorkflowNameMismatchError) as caught:
                await worker.start("waiter", "x-1", 1)
            assert (caught.value.stored, caught.value.requested) == ("echo", "waiter")
            assert isinstance(caught.value, ValueError)
            assert (await worker.handle("x-1").get_info()).name == "echo"

    async def test_an_unregistered_name_is_refused_and_nothing_is_stored(
        self,
    ) -> None:
        async with durable.MemoryDriver() as driver:
            worker = durable.Worker(driver, [echo])
            with pytest.raises(durable.UnregisteredWorkflowError, match="'echo'"):
                await worker.start("nope", "n-1", None)
            page = await worker.list_workflows()
            assert page.workflows == ()

    async def test_an_unstorable_input_is_refused_and_nothing_is_stored(
        self,
    ) -> None:
        async with durable.MemoryDriver() as driver:
            worker = durable.Worker(driver, [echo])
            with pytest.raises(durable.UnstorableValueError):
                await worker.start("echo", "u-1", object())
            assert (await worker.list_workflows()).workflows == ()

    async def test_run_workflow_of_a_named_workflow_records_the_name(self) -> None:
        async with durable.MemoryDriver() as driver:
            await durable.run_workflow("r-1", echo, 5, driver=driver).result()
            handle = durable.Worker(driver, [echo]).handle("r-1")
            assert (await handle.get_info()).name == "echo"

    async def test_a_run_with_another_named_workflow_is_refused(self) -> None:
        async with durable.MemoryDriver() as driver:
            await durable.run_workflow("r-1", echo, 5, driver=driver).result()
            with pytest.raises(durable.WorkflowNameMismatchError):
                await durable.run_workflow("r-1", waiter, 5, driver=driver).result()

    async def test_a_worker_handle_cannot_run_the_workflow_itself(self) -> None:
        async with durable.MemoryDriver() as driver:
            handle = durable.Worker(driver, [echo]).handle("e-1")
            with pytest.raises(RuntimeError, match="worker runs"):
                async with handle:
                    pass

    async def test_result_of_an_unknown_id_raises(self) -> None:
        async with durable.MemoryDriver() as driver:
            handle = durable.Worker(driver, [echo]).handle("ghost")
            with pytest.raises(durable.UnknownWorkflowError):
                await handle.result()


class TestScheduling:
    @pytest.mark.parametrize("sleepers", [7, 500])
    async def test_sleepers_wake_in_deadline_order(self, sleepers: int) -> None:
        calls, log = Calls(), []
        sleeper = make_sleeper(calls, log)
        rng = random.Random(sleepers)
        seconds = [rng.uniform(1.0, 30 * 86400.0) for _ in range(sleepers)]
        async with (
            TestClock(autojump=True) as clock,
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [sleeper], clock=clock, concurrency=50) as worker,
        ):
            handles = [
                await worker.start("sleeper", f"s-{i}", s)
                for i, s in enumerate(seconds)
            ]
            with anyio.fail_after(SAFETY):
                for handle in handles:
                    await handle.result()
        by_deadline = sorted(range(len(seconds)), key=lambda i: seconds[i])
        assert log == [f"s-{i}" for i in by_deadline]
        assert calls.counts == {"before": sleepers, "after": sleepers}

    async def test_a_message_wakes_a_workflow_that_left_memory(self) -> None:
        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [waiter]) as worker,
        ):
            handle = await worker.start("waiter", "w-1", None)
            with anyio.fail_after(SAFETY):
                await until_state(handle, "sleeping")
                assert worker.running == 0  # it waits in the store, not in memory
                await handle.message("go", "now")
                assert (await handle.result()).output == "now"

    async def test_at_most_concurrency_workflows_run_at_once(self) -> None:
        release = anyio.Event()
        running = 0
        peak = 0

        @durable.workflow(name="busy")
        async def busy(ctx: durable.WorkflowContext, _: object) -> None:
            async def work() -> None:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

            await ctx.step("work", work)

        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [busy], concurrency=3) as worker,
        ):
            handles = [await worker.start("busy", f"b-{i}", None) for i in range(10)]
            with anyio.fail_after(SAFETY):
                while running < 3:
                    await anyio.wait_all_tasks_blocked()
                assert (running, worker.running) == (3, 3)
                release.set()
                for handle in handles:
                    await handle.result()
        assert peak == 3

    async def test_finding_due_work_reads_only_what_is_due(self) -> None:
        """10,000 far-off alarms: a pass reads a handful of alarms, not 10,000."""
        driver = _CountingDriver()
        batch = durable.Batch()
        for i in range(10_000):
            batch.set_alarm(f"later-{i}", 4_000_000_000.0 + i)
        await driver.write(batch)
        clock = TestClock()
        async with durable.Worker(driver, [echo], clock=clock) as worker:
            await anyio.wait_all_tasks_blocked()
            for i in range(5):
                handle = await worker.start("echo", f"e-{i}", i)
                with anyio.fail_after(SAFETY):
                    await handle.result()
            await anyio.wait_all_tasks_blocked()
        assert driver.alarms_read <= 5 * 2 * (5 + 2), driver.alarms_read

    async def test_an_idle_worker_reads_nothing(self) -> None:
        driver = _CountingDriver()
        calls, log = Calls(), []
        clock = TestClock()
        async with durable.Worker(driver, [make_sleeper(calls, log)], clock=clock) as w:
            handle = await w.start("sleeper", "s-1", 3600.0)
            with anyio.fail_after(SAFETY):
                while (await handle.get_state()) != durable.WorkflowState.SLEEPING:
                    await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
            reads = driver.reads
            for _ in range(20):  # give a polling loop every chance to show itself
                await anyio.lowlevel.checkpoint()
                await anyio.wait_all_tasks_blocked()
            assert driver.reads == reads
            clock.jump(3600.0)
            with anyio.fail_after(SAFETY):
                assert (await handle.result()).output == "after"
        assert log == ["s-1"]


class TestRestart:
    async def test_a_new_worker_resumes_sleepers_and_message_waiters(
        self, tmp_path: Path
    ) -> None:
        calls, log = Calls(), []
        sleeper = make_sleeper(calls, log)
        store = tmp_path / "store"
        clock = TestClock()
        async with (
            durable.LevelDBDriver(store) as driver,
            durable.Worker(driver, [sleeper, waiter], clock=clock) as worker,
        ):
            await worker.start("sleeper", "s-1", 60.0)
            await worker.start("waiter", "w-1", None)
            with anyio.fail_after(SAFETY):
                for workflow_id in ("s-1", "w-1"):
                    await until_state(worker.handle(workflow_id), "sleeping")
        assert calls.counts == {"before": 1}
        clock.jump(120.0)
        async with (
            durable.LevelDBDriver(store) as driver,
            durable.Worker(driver, [sleeper, waiter], clock=clock) as worker,
        ):
            await worker.handle("w-1").message("go", 7)
            with anyio.fail_after(SAFETY):
                assert (await worker.handle("s-1").result()).output == "after"
                assert (await worker.handle("w-1").result()).output == 7
        assert calls.counts == {"before": 1, "after": 1}

    async def test_shutdown_evicts_a_running_workflow_which_the_next_worker_finishes(
        self, tmp_path: Path
    ) -> None:
        calls = Calls()
        entered = anyio.Event()
        release = anyio.Event()

        @durable.workflow(name="long")
        async def long(ctx: durable.WorkflowContext, _: object) -> int:
            async def slow() -> str:
                entered.set()
                await release.wait()
                return calls("slow")

            await ctx.step("one", lambda: calls("one"))
            await ctx.step("slow", slow)
            await ctx.step("two", lambda: calls("two"))
            return 3

        store = tmp_path / "store"
        async with durable.LevelDBDriver(store) as driver:
            worker = durable.Worker(driver, [long])
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await worker.start("long", "l-1", None)
                with anyio.fail_after(SAFETY):
                    await entered.wait()
                worker.shutdown()
                release.set()  # the running step finishes and is recorded
            assert await worker.handle("l-1").get_state() == "pending"
        assert calls.counts == {"one": 1, "slow": 1}
        async with (
            durable.LevelDBDriver(store) as driver,
            durable.Worker(driver, [long]) as worker,
        ):
            with anyio.fail_after(SAFETY):
                assert (await worker.handle("l-1").result()).output == 3
        assert calls.counts == {"one": 1, "slow": 1, "two": 1}


class TestParking:
    async def test_a_workflow_of_an_unregistered_name_is_parked_untouched(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with durable.MemoryDriver() as driver:
            await durable.Worker(driver, [echo]).start("echo", "e-1", 1)
            worker = durable.Worker(driver, [waiter])
            with caplog.at_level(logging.ERROR, logger="durable.worker"):
                async with worker:
                    with anyio.fail_after(SAFETY):
                        while "e-1" not in worker.parked:
                            await anyio.wait_all_tasks_blocked()
                    await anyio.wait_all_tasks_blocked()
            assert "'echo'" in worker.parked["e-1"]
            assert "parked" in caplog.text
            info = await worker.handle("e-1").get_info()
            assert info.state == "pending"
            assert info.alarm_at is not None  # still due for a worker that knows it

    async def test_diverged_code_is_parked_until_woken(self) -> None:
        version = 1

        @durable.workflow(name="changing")
        async def changing(ctx: durable.WorkflowContext, _: object) -> str:
            await ctx.step("a" if version == 1 else "b", lambda: "x")
            await ctx.sleep("nap", 60.0)
            return "done"

        clock = TestClock()
        async with durable.MemoryDriver() as driver:
            async with durable.Worker(driver, [changing], clock=clock) as worker:
                handle = await worker.start("changing", "c-1", None)
                with anyio.fail_after(SAFETY):
                    while await handle.get_state() != "sleeping":
                        await anyio.wait_all_tasks_blocked()
            version = 2
            clock.jump(60.0)
            async with durable.Worker(driver, [changing], clock=clock) as worker:
                with anyio.fail_after(SAFETY):
                    while "c-1" not in worker.parked:
                        await anyio.wait_all_tasks_blocked()
                assert "HistoryDivergedError" in worker.parked["c-1"]
                history = await worker.handle("c-1").get_history()
                assert [node.name for node in history] == ["a", "nap"]
                version = 1
                await worker.handle("c-1").wake()
                with anyio.fail_after(SAFETY):
                    assert (await worker.handle("c-1").result()).output == "done"
                assert worker.parked == {}


class TestSteering:
    async def test_cancel_through_the_worker_stops_a_waiting_workflow(self) -> None:
        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [waiter]) as worker,
        ):
            handle = await worker.start("waiter", "w-1", None)
            with anyio.fail_after(SAFETY):
                await until_state(handle, "sleeping")
            await handle.cancel()
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()

    async def test_a_failed_workflow_raises_from_result_and_recovers(self) -> None:
        attempts = 0

        @durable.workflow(name="flaky")
        async def flaky(ctx: durable.WorkflowContext, _: object) -> str:
            def once() -> str:
                nonlocal attempts
                attempts += 1
                if attempts == 1:
                    raise durable.CriticalError("first time fails")
                return "ok"

            return await ctx.step("once", once)

        async with (
            durable.MemoryDriver() as driver,
            durable.Worker(driver, [flaky]) as worker,
        ):
            handle = await worker.start("flaky", "f-1", None)
            with anyio.fail_after(SAFETY):
                with pytest.raises(durable.WorkflowFailedError, match="first time"):
                    await handle.result()
                await handle.recover()
                assert (await handle.result()).output == "ok"

    async def test_two_workers_cannot_serve_at_once(self) -> None:
        async with durable.MemoryDriver() as driver:
            worker = durable.Worker(driver, [echo])
            async with worker:
                with pytest.raises(RuntimeError, match="already running"):
                    await worker.run()


class _CountingDriver(durable.MemoryDriver):
    """A MemoryDriver that counts reads and the alarms it lists."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.alarms_read = 0

    async def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return await super().get(key)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self.reads += 1
        return await super().list_range(start, end, limit=limit, reverse=reverse)

    async def get_alarm(self, workflow_id: str) -> float | None:
        self.reads += 1
        return await super().get_alarm(workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[durable.Alarm]:
        self.reads += 1
        alarms = await super().list_alarms(until=until, limit=limit)
        self.alarms_read += len(alarms)
        return alarms


class FlakyReads(durable.MemoryDriver):
    """A memory store whose next *failures* point reads fail, as a restarting database."""

    failures = 0

    async def get(self, key: bytes) -> bytes | None:
        if self.failures:
            self.failures -= 1
            raise durable.StorageError("the store is restarting")
        return await super().get(key)


async def test_a_worker_handle_waits_through_a_store_outage() -> None:
    @durable.workflow(name="waits")
    async def waits(ctx: durable.WorkflowContext, _: object) -> object:
        return (await ctx.queue.next("go"))[0]

    async with FlakyReads() as driver, durable.Worker(driver, [waits]) as worker:
        handle = await worker.start("waits", "w", None)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                outcome: list[object] = []

                async def wait() -> None:
                    outcome.append((await handle.result()).output)

                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                driver.failures = 2  # the waiter's next reads fail, then recover
                wake = durable.Batch()
                wake.notify("w")  # the waiter reads the workflow record again
                await driver.write(wake)
                while driver.failures:  # noqa: ASYNC110 - the driver has no event
                    await anyio.sleep(0.01)
                await handle.message("go", "done")
        assert outcome == ["done"]
