"""TestClock (jump, autojump, timeouts) and FaultyDriver (raise, crash, at_entry)."""

from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import given, settings

import durable
from durable import MemoryDriver, StepTimeoutError, WorkflowContext, run_workflow
from durable.testing import FaultyDriver, SimulatedCrash, TestClock
from durable.testing.strategies import crash_points, modes, run_with_crash

MONTH = 30 * 86400.0


async def sleeps_a_month(ctx: WorkflowContext, _: object) -> object:
    await ctx.sleep("month", MONTH)
    return await ctx.step("after", lambda: "done")


class TestTestClock:
    async def test_jump_wakes_a_sleeper_at_its_deadline(self) -> None:
        clock = TestClock(100.0)
        woke = []

        async def sleeper() -> None:
            await clock.sleep_until(110.0)
            woke.append(clock.now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            clock.jump(5)
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            clock.jump(5)
        assert woke == [110.0]

    async def test_time_never_goes_back(self) -> None:
        with pytest.raises(ValueError, match="forward"):
            TestClock().jump(-1)

    async def test_cancel_scope_is_cancelled_when_time_passes_its_deadline(
        self,
    ) -> None:
        clock = TestClock(0.0)
        with clock.cancel_scope(10.0) as scope:
            clock.jump(10)
            await anyio.sleep_forever()
        assert scope.cancelled_caught

    @pytest.mark.parametrize("mode", ["live", "yield"])
    async def test_autojump_runs_a_30_day_sleep_at_once(self, mode: str) -> None:
        started = time.perf_counter()
        async with MemoryDriver() as driver, TestClock(autojump=True) as clock:
            handle = run_workflow(
                "w",
                sleeps_a_month,
                None,
                driver=driver,
                mode=mode,
                clock=clock,  # type: ignore[arg-type]
            )
            result = await handle.result()
            if mode == "yield":
                assert result.sleep_until == clock.now() + MONTH
                clock.jump(MONTH)
                result = await handle.result()
            assert result.output == "done"
            assert clock.now() >= 1_700_000_000.0 + MONTH
        assert time.perf_counter() - started < 5

    async def test_a_step_timeout_fires_in_virtual_time(self) -> None:
        async def slow() -> object:
            await anyio.sleep_forever()

        async def workflow(ctx: WorkflowContext, _: object) -> object:
            result = await ctx.try_step("slow", slow, timeout=3600)
            return result.ok

        async with MemoryDriver() as driver, TestClock(autojump=True) as clock:
            result = await run_workflow(
                "w", workflow, None, driver=driver, clock=clock
            ).result()
        assert result.output is False
        assert clock.now() >= 1_700_000_000.0 + 3600

    async def test_is_a_clock(self) -> None:
        assert isinstance(TestClock(), durable.Clock)
        assert StepTimeoutError  # the timeout above is this error, caught by try_step


async def three_steps(ctx: WorkflowContext, _: object) -> object:
    return [await ctx.step(name, lambda n=name: n) for name in ("a", "b", "c")]


class TestFaultyDriver:
    async def test_counts_writes_without_failing(self) -> None:
        async with MemoryDriver() as store:
            faulty = FaultyDriver(store)
            await run_workflow("w", three_steps, None, driver=faulty).result()
        assert faulty.writes >= 3
        assert faulty.failed_at is None

    async def test_raise_fails_one_write_and_the_data_survives(self) -> None:
        async with MemoryDriver() as store:
            faulty = FaultyDriver(store, fail_at=2, mode="raise")
            with pytest.raises(OSError, match="simulated"):
                await run_workflow("w", three_steps, None, driver=faulty).result()
            result = await run_workflow("w", three_steps, None, driver=faulty).result()
        assert result.output == ["a", "b", "c"]

    async def test_crash_kills_every_later_call(self) -> None:
        async with MemoryDriver() as store:
            faulty = FaultyDriver(store, fail_at=2)
            with pytest.raises(SimulatedCrash):
                await run_workflow("w", three_steps, None, driver=faulty).result()
            with pytest.raises(SimulatedCrash):
                await faulty.get(b"x")
            result = await run_workflow(
                "w", three_steps, None, driver=faulty.inner
            ).result()
        assert result.output == ["a", "b", "c"]
        assert faulty.failed_at == 2

    async def test_at_entry_strikes_at_the_first_write_of_that_entry(self) -> None:
        runs: list[str] = []

        async def workflow(ctx: WorkflowContext, _: object) -> object:
            for name in ("a", "b", "c"):
                await ctx.step(name, lambda n=name: runs.append(n))
            return None

        async with MemoryDriver() as store:
            faulty = FaultyDriver(store, at_entry="b")
            with pytest.raises(SimulatedCrash):
                await run_workflow("w", workflow, None, driver=faulty).result()
            assert runs == ["a", "b"]
            await run_workflow("w", workflow, None, driver=store).result()
        assert runs == ["a", "b", "b", "c"]  # "b" was never recorded: it runs again

    async def test_rejects_a_bad_fail_at(self) -> None:
        with pytest.raises(ValueError, match="from 1"):
            FaultyDriver(MemoryDriver(), fail_at=0)


@settings(max_examples=20, deadline=None)
@given(crash_at=crash_points(max_writes=8), mode=modes())
def test_strategies_cover_inputs_and_crash_points(
    crash_at: int | None, mode: str
) -> None:
    for backend in ("asyncio", "trio"):
        output = anyio.run(
            run_with_crash, sleeps_a_month, None, crash_at, mode, backend=backend
        )  # type: ignore[arg-type]
        assert output == "done"
