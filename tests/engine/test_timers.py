"""ctx.sleep and ctx.sleep_until: in memory below the poll interval, else yield or alarm."""

from __future__ import annotations

import datetime

import pytest

import durable

from ._support import T0, Counter, JumpClock, ManualClock, root_entries

HOUR = 3600.0


class TestShortSleeps:
    async def test_short_sleep_waits_in_memory_and_completes(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("blink", 0.01)
            return "awake"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == "awake"

    async def test_short_sleep_in_yield_mode_does_not_yield(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("blink", 0.5)  # below the default 1 s poll interval
            return "awake"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        result = await handle.result()
        assert result.output == "awake"
        assert clock.sleeps == [T0 + 0.5]

    async def test_consecutive_in_memory_waits_each_wait_their_full_time(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        woke_at: list[float] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            for name in ("one", "two", "three"):
                await ctx.sleep(name, 0.5)
                woke_at.append(clock.now() - T0)
            return None

        await durable.run_workflow("w", wf, None, driver=driver, clock=clock).result()
        assert woke_at == [0.5, 1.0, 1.5]

    async def test_sleep_below_a_small_poll_interval_waits_in_memory(self) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("blink", 0.04)
            return "awake"

        async with durable.MemoryDriver(poll_interval=0.05) as driver:
            handle = durable.run_workflow(
                "w", wf, None, driver=driver, mode="yield", clock=clock
            )
            assert (await handle.result()).output == "awake"

    async def test_sleep_of_zero_seconds_completes(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("none", 0)
            return "awake"

        result = await durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield"
        ).result()
        assert result.output == "awake"


class TestLongSleepsInYieldMode:
    async def test_long_sleep_returns_sleeping_with_the_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return "awake"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == T0 + HOUR
        assert result.output is None
        assert clock.sleeps == []

    async def test_long_sleep_stores_sleeping_state_and_an_alarm(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return "awake"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert await driver.get_alarm("w") == T0 + HOUR

    async def test_sleep_above_a_small_poll_interval_yields(self) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", 0.06)
            return "awake"

        async with durable.MemoryDriver(poll_interval=0.05) as driver:
            handle = durable.run_workflow(
                "w", wf, None, driver=driver, mode="yield", clock=clock
            )
            result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == T0 + 0.06

    async def test_run_before_the_deadline_yields_again_with_the_recorded_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return "awake"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR / 2)
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == T0 + HOUR  # not a fresh hour from now

    async def test_run_after_the_deadline_completes_without_sleeping(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return "awake"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        result = await handle.result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == "awake"
        assert clock.sleeps == []
        assert await driver.get_alarm("w") is None

    async def test_restart_in_live_mode_waits_only_until_the_recorded_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return clock.now() - T0

        await durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        ).result()
        clock.advance(600.0)
        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.output == HOUR
        assert clock.sleeps == [T0 + HOUR]

    async def test_completed_sleep_is_never_slept_again(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("first", HOUR)
            counter("after-first")
            await ctx.sleep("second", 2 * HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        second_wait = await handle.result()  # completes "first", yields in "second"
        clock.time = T0  # even with the clock set back before the first deadline
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == second_wait.sleep_until == T0 + 3 * HOUR
        assert counter["after-first"] == 2
        assert clock.sleeps == []

    async def test_completed_sleep_is_recorded_as_completed(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("first", HOUR)
            await ctx.sleep("second", HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        await handle.result()
        entries = await root_entries(driver, "w")
        assert entries["first"].status == "completed"
        assert entries["second"].status != "completed"

    async def test_steps_after_a_sleep_run_once_the_deadline_passed(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("before", lambda: counter("before"))
            await ctx.sleep("nap", HOUR)
            await ctx.step("after", lambda: counter("after"))
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        assert counter.calls == {"before": 1}
        clock.advance(HOUR)
        await handle.result()
        assert counter.calls == {"before": 1, "after": 1}


class TestSleepUntil:
    async def test_aware_datetime_is_the_deadline(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        when = datetime.datetime.fromtimestamp(T0 + HOUR, tz=datetime.UTC)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep_until("alarm", when)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == T0 + HOUR

    async def test_aware_datetime_in_another_zone_is_the_same_instant(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        zone = datetime.timezone(datetime.timedelta(hours=-5))
        when = datetime.datetime.fromtimestamp(T0 + HOUR, tz=zone)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep_until("alarm", when)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).sleep_until == T0 + HOUR

    async def test_epoch_seconds_are_the_deadline(self, driver: durable.Driver) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep_until("alarm", T0 + HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).sleep_until == T0 + HOUR

    async def test_deadline_in_the_past_completes_at_once(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep_until("alarm", T0 - HOUR)
            return "late"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).output == "late"
        assert clock.sleeps == []

    async def test_replayed_sleep_until_keeps_the_recorded_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        deadlines = iter([T0 + HOUR, T0 + 5 * HOUR])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep_until("alarm", next(deadlines))
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        assert (await handle.result()).state == durable.WorkflowState.COMPLETED


class TestInvalidArguments:
    async def test_naive_datetime_is_a_value_error(
        self, driver: durable.Driver
    ) -> None:
        caught: list[BaseException] = []
        naive = datetime.datetime(2030, 1, 1)  # naive on purpose

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                ctx.sleep_until("alarm", naive)
            except ValueError as exc:
                caught.append(exc)
            return "refused"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "refused"
        [error] = caught
        assert "timezone" in str(error)

    async def test_negative_seconds_are_a_value_error(
        self, driver: durable.Driver
    ) -> None:
        caught: list[BaseException] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                ctx.sleep("nap", -1)
            except ValueError as exc:
                caught.append(exc)
            return "refused"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "refused"
        assert len(caught) == 1

    async def test_refused_sleep_records_nothing(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            with pytest.raises(ValueError, match="seconds"):
                ctx.sleep("nap", -1)
            await ctx.sleep("nap", 0)  # the name is still free
            return None

        await durable.run_workflow("w", wf, None, driver=driver).result()
        assert list(await root_entries(driver, "w")) == ["nap"]


class TestLiveMode:
    async def test_long_sleep_completes_in_process(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        entered = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            entered("body")
            await ctx.sleep("nap", HOUR)
            return clock.now() - T0

        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == HOUR
        assert entered["body"] == 1  # continued in memory, never replayed

    async def test_long_sleep_sets_state_sleeping_while_it_waits(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return "awake"

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
            assert await handle.get_state() == durable.WorkflowState.SLEEPING
            assert await driver.get_alarm("w") == T0 + HOUR
            clock.advance(HOUR)
            result = await handle.result()
        assert result.output == "awake"
        assert await handle.get_state() == durable.WorkflowState.COMPLETED

    async def test_state_is_running_again_after_the_sleep(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        handle = durable.run_workflow(
            "w", lambda ctx, _: wf(ctx), None, driver=driver, clock=clock
        )

        async def wf(ctx: durable.WorkflowContext) -> object:
            await ctx.sleep("nap", HOUR)
            await ctx.step("flush", lambda: None)
            return await ctx.step("observe", handle.get_state)

        assert (await handle.result()).output == durable.WorkflowState.RUNNING

    async def test_sleep_longer_than_a_small_poll_interval_completes_in_process(
        self,
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", 0.03)
            return "awake"

        async with durable.MemoryDriver(poll_interval=0.01) as driver:
            result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "awake"
