"""ctx.queue.next, ctx.queue.send and handle.message: durable, exactly-once messages."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import durable
from durable._codec import load_value
from durable._drivers._base import DELETE, NOTIFY
from durable._engine._queue import Message
from durable._history import COMPLETED, History
from durable._layout import WorkflowKeys
from durable.testing import FaultyDriver, SimulatedCrash

from ._support import T0, Crash, JumpClock, ManualClock, root_entries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from durable import Batch

HOUR = 3600.0
SLEEPING = durable.WorkflowState.SLEEPING
COMPLETED_STATE = durable.WorkflowState.COMPLETED


async def queued(driver: durable.Driver, workflow_id: str = "w") -> list[object]:
    """The unconsumed messages stored for a workflow, oldest first, as [name, body]."""
    history = await History.load(driver, workflow_id)
    found: list[object] = []
    for key, value in history.messages:
        message = Message.from_item(key, value)
        found.append([message.name, load_value(message.body, key)])
    return found


async def wait_for_state(
    handle: durable.WorkflowHandle, state: durable.WorkflowState
) -> None:
    """Poll the store until the workflow is in *state* (the test observes, no timing)."""
    with anyio.fail_after(5):
        while await handle.get_state() != state:  # noqa: ASYNC110 (a store, no event)
            await anyio.sleep(0.001)


def next_once(
    name: str = "get", **options: object
) -> Callable[[durable.WorkflowContext, object], Awaitable[object]]:
    """A workflow that returns what one ``queue.next`` call returns."""

    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        return await ctx.queue.next(name, **options)  # type: ignore[arg-type]

    return wf


class CrashAtConsume(FaultyDriver):
    """Crashes at the first write that deletes a message of *workflow_id*."""

    def __init__(self, inner: durable.Driver, workflow_id: str = "w") -> None:
        super().__init__(inner, mode="crash")
        self._message_prefix = WorkflowKeys(workflow_id).message

    async def write(self, batch: Batch) -> None:
        if self.fail_at is None and any(
            code == DELETE and key.startswith(self._message_prefix)
            for code, key, _ in batch.ops
        ):
            self.fail_at = self.writes + 1
        await super().write(batch)


@pytest.fixture(params=["memory", "leveldb"])
async def slow_poll_driver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[durable.Driver]:
    """A driver whose poll interval (an hour) would make any polling obvious."""
    made: durable.Driver = (
        durable.MemoryDriver(poll_interval=HOUR)
        if request.param == "memory"
        else durable.LevelDBDriver(tmp_path / "store", poll_interval=HOUR)
    )
    async with made:
        yield made


class TestNoMessageIsLost:
    async def test_message_sent_before_the_workflow_starts(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", next_once(names=["go"]), None, driver=driver)
        await handle.message("go", "early")
        assert await queued(driver) == [["go", "early"]]
        result = await handle.result()
        assert result.state == COMPLETED_STATE
        assert result.output == ["early"]
        assert await queued(driver) == []

    async def test_message_sent_while_it_sleeps_in_yield_mode(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        wf = next_once(names=["go"])
        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        first = await handle.result()
        assert first.state == SLEEPING
        await handle.message("go", 1)
        second = await handle.result()
        assert second.state == COMPLETED_STATE
        assert second.output == [1]
        assert await queued(driver) == []

    async def test_message_sent_while_it_waits_live(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(names=["go"]), None, driver=driver, clock=ManualClock()
        )
        async with handle:
            await wait_for_state(handle, SLEEPING)
            await handle.message("go", "live")
            result = await handle.result()
        assert result.output == ["live"]
        assert await queued(driver) == []

    async def test_message_sent_during_a_step_before_the_wait_live(
        self, driver: durable.Driver
    ) -> None:
        in_step, sent = anyio.Event(), anyio.Event()

        async def work() -> None:
            in_step.set()
            await sent.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("work", work)
            return await ctx.queue.next("get", names=["go"])

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await in_step.wait()
            await handle.message("go", "meanwhile")
            sent.set()
            with anyio.fail_after(5):
                result = await handle.result()
        assert result.output == ["meanwhile"]

    async def test_message_sent_during_a_step_is_seen_by_a_zero_timeout_next(
        self, driver: durable.Driver
    ) -> None:
        # the message is stored before queue.next is even called: a poll finds it
        in_step, sent = anyio.Event(), anyio.Event()

        async def work() -> None:
            in_step.set()
            await sent.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("work", work)
            return await ctx.queue.next("poll", names=["go"], timeout=0)

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await in_step.wait()
            await handle.message("go", "meanwhile")
            sent.set()
            result = await handle.result()
        assert result.output == ["meanwhile"]
        assert await queued(driver) == []

    async def test_message_sent_during_a_step_in_yield_mode_is_not_slept_through(
        self, driver: durable.Driver
    ) -> None:
        # the run must not go to sleep (alarm cleared) with a matching message queued
        in_step, sent = anyio.Event(), anyio.Event()

        async def work() -> None:
            in_step.set()
            await sent.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("work", work)
            return await ctx.queue.next("get", names=["go"])

        handle = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        async with handle:
            await in_step.wait()
            await handle.message("go", "meanwhile")
            sent.set()
            result = await handle.result()
        assert result.state == COMPLETED_STATE
        assert result.output == ["meanwhile"]

    async def test_message_sent_while_no_process_runs_it(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        wf = next_once(names=["go"])
        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:  # leaving the block evicts the waiting run
            await wait_for_state(handle, SLEEPING)
        assert await handle.get_state() == SLEEPING
        assert await driver.get_alarm("w") is None  # nothing to wake it for yet
        clock.advance(5)
        other = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        await other.message("go", "offline")
        assert await driver.get_alarm("w") == T0 + 5  # due now
        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.output == ["offline"]
        assert await queued(driver) == []

    async def test_evicted_wait_with_a_timeout_resumes_with_a_message(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        wf = next_once(names=["go"], timeout=HOUR)
        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await wait_for_state(handle, SLEEPING)
            assert await driver.get_alarm("w") == T0 + HOUR
        await handle.message("go", 3)
        assert await driver.get_alarm("w") == T0
        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.output == [3]

    async def test_messages_of_another_workflow_are_not_seen(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        for other_id in ("w2", "w\x00", "ww"):
            await durable.run_workflow(
                other_id, next_once(), None, driver=driver
            ).message("go", other_id)
        result = await durable.run_workflow(
            "w", next_once(timeout=0.5), None, driver=driver, clock=clock
        ).result()
        assert result.output == []
        assert await queued(driver, "w2") == [["go", "w2"]]


class TestOrderCountAndNames:
    async def test_bodies_come_back_oldest_first(self, driver: durable.Driver) -> None:
        handle = durable.run_workflow(
            "w", next_once(names=["m"], count=4), None, driver=driver
        )
        for body in ("a", "b", "c", "d"):
            await handle.message("m", body)
        assert (await handle.result()).output == ["a", "b", "c", "d"]

    async def test_bodies_come_back_in_their_stored_form(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", next_once(count=2), None, driver=driver)
        await handle.message("m", (1, 2))
        await handle.message("m", {"k": [None, 1.5, b"x"]})
        assert (await handle.result()).output == [[1, 2], {"k": [None, 1.5, b"x"]}]

    async def test_count_takes_the_oldest_and_leaves_the_rest(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", next_once(count=2), None, driver=driver)
        for body in (1, 2, 3):
            await handle.message("m", body)
        assert (await handle.result()).output == [1, 2]
        assert await queued(driver) == [["m", 3]]

    async def test_count_waits_for_that_many_live(self, driver: durable.Driver) -> None:
        handle = durable.run_workflow(
            "w", next_once(count=2), None, driver=driver, clock=ManualClock()
        )
        async with handle:
            await handle.message("m", 1)
            await wait_for_state(handle, SLEEPING)
            # the run woke for the first message, took nothing, and waits again
            assert await queued(driver) == [["m", 1]]
            await handle.message("m", 2)
            result = await handle.result()
        assert result.output == [1, 2]
        assert await queued(driver) == []

    async def test_count_waits_for_that_many_in_yield_mode(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(count=3), None, driver=driver, mode="yield"
        )
        await handle.message("m", 1)
        assert (await handle.result()).state == SLEEPING
        await handle.message("m", 2)
        assert (await handle.result()).state == SLEEPING
        assert await queued(driver) == [["m", 1], ["m", 2]]
        await handle.message("m", 3)
        result = await handle.result()
        assert result.output == [1, 2, 3]

    async def test_names_filter_leaves_other_messages_queued(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(names=["go"], count=2), None, driver=driver
        )
        for name, body in [
            ("other", "o1"),
            ("go", "g1"),
            ("other", "o2"),
            ("go", "g2"),
        ]:
            await handle.message(name, body)
        assert (await handle.result()).output == ["g1", "g2"]
        assert await queued(driver) == [["other", "o1"], ["other", "o2"]]

    async def test_messages_left_queued_are_consumed_by_a_later_matching_next(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            first = await ctx.queue.next("first", names=["go"])
            second = await ctx.queue.next("second", names=["other", "more"], count=3)
            anything = await ctx.queue.next("any")
            return [first, second, anything]

        handle = durable.run_workflow("w", wf, None, driver=driver)
        for name, body in [
            ("other", "o1"),
            ("late", "l1"),
            ("more", "m1"),
            ("go", "g1"),
            ("other", "o2"),
        ]:
            await handle.message(name, body)
        result = await handle.result()
        assert result.output == [["g1"], ["o1", "m1", "o2"], ["l1"]]
        assert await queued(driver) == []

    async def test_a_non_matching_message_does_not_end_a_live_wait(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(names=["go"]), None, driver=driver, clock=ManualClock()
        )
        async with handle:
            await wait_for_state(handle, SLEEPING)
            await handle.message("other", "o")
            await wait_for_state(handle, SLEEPING)
            await handle.message("go", "g")
            result = await handle.result()
        assert result.output == ["g"]
        assert await queued(driver) == [["other", "o"]]

    async def test_two_branches_waiting_for_one_name_each_get_one_message(
        self, driver: durable.Driver
    ) -> None:
        async def waiter(ctx: durable.WorkflowContext) -> object:
            return await ctx.queue.next("get", names=["m"])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.join("both", {"a": waiter, "b": waiter})

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=ManualClock())
        async with handle:
            await wait_for_state(handle, SLEEPING)
            await handle.message("m", 1)
            await handle.message("m", 2)
            with anyio.fail_after(5):
                result = await handle.result()
        output = result.output
        assert isinstance(output, dict)
        assert sorted([*output["a"], *output["b"]]) == [1, 2]
        assert await queued(driver) == []


class TestTimeout:
    async def test_short_timeout_returns_nothing(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        result = await durable.run_workflow(
            "w", next_once(timeout=0.5), None, driver=driver, clock=clock
        ).result()
        assert result.output == []
        assert clock.sleeps == [T0 + 0.5]

    async def test_short_timeout_in_yield_mode_waits_in_memory(
        self, driver: durable.Driver
    ) -> None:
        result = await durable.run_workflow(
            "w",
            next_once(timeout=0.5),
            None,
            driver=driver,
            mode="yield",
            clock=JumpClock(),
        ).result()
        assert result.state == COMPLETED_STATE
        assert result.output == []

    async def test_timeout_returns_fewer_and_consumes_them(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(count=3, timeout=0.5), None, driver=driver, clock=JumpClock()
        )
        await handle.message("m", 1)
        await handle.message("m", 2)
        assert (await handle.result()).output == [1, 2]
        assert await queued(driver) == []

    async def test_real_short_timeout_returns_nothing(self) -> None:
        async with durable.MemoryDriver(poll_interval=1.0) as driver:
            result = await durable.run_workflow(
                "w", next_once(timeout=0.01), None, driver=driver
            ).result()
        assert result.output == []

    async def test_zero_timeout_polls(self, driver: durable.Driver) -> None:
        handle = durable.run_workflow(
            "w", next_once(count=2, timeout=0), None, driver=driver, mode="yield"
        )
        await handle.message("m", 1)
        assert (await handle.result()).output == [1]

    async def test_long_timeout_live_records_the_alarm_and_expires(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow(
            "w", next_once(timeout=HOUR), None, driver=driver, clock=clock
        )
        async with handle:
            await wait_for_state(handle, SLEEPING)
            assert await driver.get_alarm("w") == T0 + HOUR
            await clock.wait_for_sleeper()
            clock.advance(HOUR)
            result = await handle.result()
        assert result.output == []
        assert await driver.get_alarm("w") is None

    async def test_message_before_a_long_live_timeout_ends_the_wait(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(timeout=HOUR), None, driver=driver, clock=ManualClock()
        )
        async with handle:
            await wait_for_state(handle, SLEEPING)
            await handle.message("m", "in time")
            result = await handle.result()
        assert result.output == ["in time"]

    async def test_message_before_a_short_timeout_ends_the_wait(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow(
            "w", next_once(timeout=0.5), None, driver=driver, clock=clock
        )
        async with handle:
            await clock.wait_for_sleeper()  # waiting in memory for the deadline
            await handle.message("m", "in time")
            result = await handle.result()
        assert result.output == ["in time"]

    async def test_yield_mode_timeout_sleeps_until_the_deadline_then_returns_empty(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        wf = next_once(names=["go"], timeout=HOUR)

        def handle() -> durable.WorkflowHandle:
            return durable.run_workflow(
                "w", wf, None, driver=driver, mode="yield", clock=clock
            )

        first = await handle().result()
        assert first.state == SLEEPING
        assert first.sleep_until == T0 + HOUR
        assert first.waiting_for == ("go",)
        assert await driver.get_alarm("w") == T0 + HOUR
        clock.advance(HOUR / 2)  # a run before the deadline keeps the same deadline
        again = await handle().result()
        assert again.state == SLEEPING
        assert again.sleep_until == T0 + HOUR
        clock.advance(HOUR / 2)
        last = await handle().result()
        assert last.state == COMPLETED_STATE
        assert last.output == []
        assert clock.sleeps == []

    async def test_yield_mode_timeout_with_a_message_before_the_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        handle = durable.run_workflow(
            "w",
            next_once(names=["go"], count=2, timeout=HOUR),
            None,
            driver=driver,
            mode="yield",
            clock=clock,
        )
        assert (await handle.result()).state == SLEEPING
        clock.advance(60)
        await handle.message("go", 1)
        assert await driver.get_alarm("w") == T0 + 60
        again = await handle.result()  # one of two: wait on for the rest
        assert again.state == SLEEPING
        assert again.sleep_until == T0 + HOUR
        clock.advance(HOUR)
        last = await handle.result()
        assert last.output == [1]


class TestExactlyOnce:
    async def test_crash_at_every_write_delivers_each_message_once(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            got = await ctx.queue.next("get", names=["m"], count=2)
            await ctx.step("use", lambda: None)
            return got

        async with durable.MemoryDriver() as memory:
            sender = durable.run_workflow("w", wf, None, driver=memory)
            await sender.message("m", 1)
            await sender.message("m", 2)
            clean = FaultyDriver(memory)
            await durable.run_workflow("w", wf, None, driver=clean).result()
        assert clean.writes >= 3

        for k in range(1, clean.writes + 1):
            workflow_id = f"w{k}"
            first = durable.run_workflow(workflow_id, wf, None, driver=driver)
            await first.message("m", 1)
            await first.message("m", 2)
            faulty = FaultyDriver(driver, fail_at=k, mode="crash")
            with pytest.raises(SimulatedCrash):
                await durable.run_workflow(
                    workflow_id, wf, None, driver=faulty
                ).result()
            entry = (await root_entries(driver, workflow_id)).get("get")
            if entry is not None and entry.status == COMPLETED:
                assert await queued(driver, workflow_id) == []
            else:  # the consuming write never happened: both still queued
                assert await queued(driver, workflow_id) == [["m", 1], ["m", 2]]
            await first.message("m", 3)  # sent after the crash: not for "get"
            result = await durable.run_workflow(
                workflow_id, wf, None, driver=driver
            ).result()
            assert result.output == [1, 2], k
            assert await queued(driver, workflow_id) == [["m", 3]], k

    async def test_crash_at_the_consuming_write_of_a_live_wait(
        self, driver: durable.Driver
    ) -> None:
        wf = next_once(names=["go"])
        faulty = CrashAtConsume(driver)
        handle = durable.run_workflow("w", wf, None, driver=faulty, clock=ManualClock())
        sender = durable.run_workflow("w", wf, None, driver=driver)

        async def send_once_waiting() -> None:
            await wait_for_state(sender, SLEEPING)
            await sender.message("go", "once")

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_once_waiting)
            with pytest.raises(SimulatedCrash):
                await handle.result()
        assert faulty.crashed
        assert "get" not in await root_entries(driver, "w")
        assert await queued(driver) == [["go", "once"]]
        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == ["once"]
        assert await queued(driver) == []

    async def test_crash_between_consuming_and_the_next_step(
        self, driver: durable.Driver
    ) -> None:
        crash = [True]
        seen: list[object] = []

        def after() -> None:
            if crash[0]:
                raise Crash

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            got = await ctx.queue.next("get")
            seen.append(got)
            await ctx.step("after", after)
            return got

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.message("m", "only")
        with pytest.raises(Crash):
            await handle.result()
        assert await queued(driver) == []  # consumed, and recorded in the same write
        assert (await root_entries(driver, "w"))["get"].status == COMPLETED
        await handle.message("m", "later")
        crash[0] = False
        result = await handle.result()
        assert result.output == ["only"]
        assert seen == [["only"], ["only"]]
        assert await queued(driver) == [["m", "later"]]


class TestReplay:
    async def test_replay_returns_the_same_bodies_and_consumes_nothing_new(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            got = await ctx.queue.next("first", names=["m"], count=2)
            seen.append(got)
            await ctx.sleep("nap", HOUR)
            return got

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        for body in (1, 2):
            await handle.message("m", body)
        assert (await handle.result()).state == SLEEPING
        for body in (3, 4, 5):
            await handle.message("m", body)
        clock.advance(HOUR)
        result = await handle.result()
        assert result.output == [1, 2]
        assert seen == [[1, 2], [1, 2]]
        assert await queued(driver) == [["m", 3], ["m", 4], ["m", 5]]

    async def test_replay_of_an_empty_timed_out_next_stays_empty(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            got = await ctx.queue.next("poll", timeout=0)
            seen.append(got)
            await ctx.sleep("nap", HOUR)
            return got

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).state == SLEEPING
        await handle.message("m", "after the poll")
        clock.advance(HOUR)
        assert (await handle.result()).output == []
        assert seen == [[], []]
        assert await queued(driver) == [["m", "after the poll"]]

    async def test_replay_after_eviction_of_a_live_run(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            first = await ctx.queue.next("first")
            seen.append(first)
            second = await ctx.queue.next("second")
            return [first, second]

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        await handle.message("m", 1)
        async with handle:
            await wait_for_state(handle, SLEEPING)  # consumed 1, waits for another
        await handle.message("m", 2)
        result = await handle.result()
        assert result.output == [[1], [2]]
        assert seen == [[1], [1]]


class TestLiveWakeUp:
    async def test_message_wakes_a_live_wait_without_polling(
        self, slow_poll_driver: durable.Driver
    ) -> None:
        driver = slow_poll_driver
        handle = durable.run_workflow("w", next_once(names=["go"]), None, driver=driver)
        with anyio.fail_after(5):
            async with handle:
                await wait_for_state(handle, SLEEPING)
                await handle.message("go", "now")
                result = await handle.result()
        assert result.output == ["now"]

    async def test_message_wakes_a_live_wait_with_a_long_timeout(
        self, slow_poll_driver: durable.Driver
    ) -> None:
        driver = slow_poll_driver
        handle = durable.run_workflow(
            "w", next_once(names=["go"], timeout=2 * HOUR), None, driver=driver
        )
        with anyio.fail_after(5):
            async with handle:
                await wait_for_state(handle, SLEEPING)
                await handle.message("go", "now")
                result = await handle.result()
        assert result.output == ["now"]

    async def test_request_response_round_trips_each_wake_the_live_run(
        self, slow_poll_driver: durable.Driver
    ) -> None:
        driver = slow_poll_driver
        send_reply, replies = anyio.create_memory_object_stream[object](20)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            total = 0
            for i in range(20):
                [value] = await ctx.queue.next(f"get-{i}", names=["n"])
                total += value
                await ctx.step(f"reply-{i}", partial(send_reply.send_nowait, total))
            return total

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with anyio.fail_after(5), send_reply, replies:
            async with handle:
                for i in range(20):
                    await handle.message("n", i)  # the run waits for each one
                    assert await replies.receive() == sum(range(i + 1))
                result = await handle.result()
        assert result.output == sum(range(20))


class TestYieldModeWaits:
    async def test_result_says_which_names_it_waits_for(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        handle = durable.run_workflow(
            "w",
            next_once(names=["b", "a"]),
            None,
            driver=driver,
            mode="yield",
            clock=clock,
        )
        result = await handle.result()
        assert result.state == SLEEPING
        assert result.waiting_for == ("a", "b")
        assert result.sleep_until is None
        assert await driver.get_alarm("w") is None
        await handle.message("c", "not awaited")
        assert await driver.get_alarm("w") is None  # no reason to run it
        clock.advance(10)
        await handle.message("b", "awaited")
        assert await driver.get_alarm("w") == T0 + 10  # due now
        assert (await handle.result()).output == ["awaited"]
        assert await queued(driver) == [["c", "not awaited"]]

    async def test_any_name_wait_says_empty_tuple_and_any_message_makes_it_due(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        handle = durable.run_workflow(
            "w", next_once(), None, driver=driver, mode="yield", clock=clock
        )
        result = await handle.result()
        assert result.state == SLEEPING
        assert result.waiting_for == ()
        assert await driver.get_alarm("w") is None
        clock.advance(1)
        await handle.message("whatever", 1)
        assert await driver.get_alarm("w") == T0 + 1
        assert (await handle.result()).output == [1]

    async def test_message_to_a_workflow_in_a_timer_sleep_leaves_its_alarm(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.sleep("nap", HOUR)
            return await ctx.queue.next("get", timeout=0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).waiting_for is None
        await handle.message("m", 1)
        assert await driver.get_alarm("w") == T0 + HOUR  # not woken early
        clock.advance(HOUR)
        assert (await handle.result()).output == [1]

    async def test_message_to_a_running_workflow_keeps_it_due(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        in_step, sent = anyio.Event(), anyio.Event()

        async def work() -> None:
            in_step.set()
            await sent.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("work", work)
            await ctx.sleep("nap", HOUR)
            return await ctx.queue.next("get", timeout=0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        async with handle:
            await in_step.wait()
            clock.advance(5)
            await handle.message("m", 1)
            assert await driver.get_alarm("w") == T0 + 5
            sent.set()
            result = await handle.result()
        assert result.sleep_until == T0 + 5 + HOUR
        assert await driver.get_alarm("w") == T0 + 5 + HOUR  # the run's own alarm

    async def test_stored_state_says_what_it_waits_for(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w",
            next_once(names=["go"], timeout=HOUR),
            None,
            driver=driver,
            mode="yield",
            clock=JumpClock(),
        )
        await handle.result()
        meta = (await History.load(driver, "w")).meta
        assert meta is not None
        assert meta.state == SLEEPING
        assert meta.waiting_for == ["go"]
        assert meta.sleep_until == T0 + HOUR


class YieldingDriver(durable.MemoryDriver):
    """A MemoryDriver whose every operation yields first, like one over a socket."""

    async def get(self, key: bytes) -> bytes | None:
        await anyio.lowlevel.checkpoint()
        return await super().get(key)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        await anyio.lowlevel.checkpoint()
        return await super().list_range(start, end, limit=limit, reverse=reverse)

    async def write(self, batch: Batch) -> None:
        await anyio.lowlevel.checkpoint()
        await super().write(batch)


class OtherProcess(FaultyDriver):
    """The same store seen from another process: its writes notify nobody here."""

    async def write(self, batch: Batch) -> None:
        silent = durable.Batch([op for op in batch.ops if op[0] != NOTIFY])
        await super().write(silent)


class TestNoLostWakeUpInYieldMode:
    """A yield-mode run never goes to sleep with no alarm while its message is queued."""

    @pytest.mark.parametrize("sender", ["this process", "another process"])
    async def test_message_racing_the_run_going_to_sleep(self, sender: str) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            for name in ("one", "two", "three"):
                await ctx.step(name, lambda: None)
            return await ctx.queue.next("get", names=["go"])

        for delay in range(12):  # checkpoints before sending: every interleaving
            async with YieldingDriver() as driver:
                via = driver if sender == "this process" else OtherProcess(driver)
                handle = durable.run_workflow(
                    "w", wf, None, driver=driver, mode="yield", clock=clock
                )
                sender_handle = durable.run_workflow(
                    "w", wf, None, driver=via, clock=clock
                )
                outcome: list[durable.WorkflowResult] = []

                async def send(
                    delay: int = delay, sender: durable.WorkflowHandle = sender_handle
                ) -> None:
                    for _ in range(delay):
                        await anyio.lowlevel.checkpoint()
                    await sender.message("go", delay)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send)
                    outcome.append(await handle.result())
                if outcome[0].state == SLEEPING:
                    assert await queued(driver) == [["go", delay]], delay
                    assert await driver.get_alarm("w") == T0, delay  # due now
                    outcome[0] = await handle.result()
                assert outcome[0].output == [delay], delay

    async def test_message_racing_the_first_run_of_the_workflow(self) -> None:
        # the sender finds no workflow yet, but a run of it is starting here
        clock = JumpClock()
        wf = next_once(names=["go"])
        for delay in range(4):
            async with YieldingDriver() as driver:
                handle = durable.run_workflow(
                    "w", wf, None, driver=driver, mode="yield", clock=clock
                )

                async def send(
                    delay: int = delay, handle: durable.WorkflowHandle = handle
                ) -> None:
                    for _ in range(delay):
                        await anyio.lowlevel.checkpoint()
                    await handle.message("go", delay)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send)
                    result = await handle.result()
                if result.state == SLEEPING:
                    assert await driver.get_alarm("w") == T0, delay
                    result = await handle.result()
                assert result.output == [delay], delay

    async def test_message_read_by_another_branch_before_the_run_sleeps(
        self, driver: durable.Driver
    ) -> None:
        # branch "a" goes to sleep for "a"; its message arrives while branch "b" is
        # in a step, and "b" reads it into the inbox before it too waits
        clock = JumpClock()
        in_step, sent = anyio.Event(), anyio.Event()

        async def work() -> None:
            in_step.set()
            await sent.wait()

        async def wait_a(ctx: durable.WorkflowContext) -> object:
            return await ctx.queue.next("get", names=["a"])

        async def wait_b(ctx: durable.WorkflowContext) -> object:
            await ctx.step("work", work)
            return await ctx.queue.next("get", names=["b"])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.join("both", {"a": wait_a, "b": wait_b})

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        async with handle:
            await in_step.wait()
            await handle.message("a", "for a")
            sent.set()
            first = await handle.result()
        assert first.state == SLEEPING
        assert await queued(driver) == [["a", "for a"]]
        assert await driver.get_alarm("w") == T0  # due: branch a can go on
        clock.advance(1)
        await handle.message("b", "for b")
        result = await handle.result()
        assert result.output == {"a": ["for a"], "b": ["for b"]}


class TestSend:
    async def test_send_reaches_the_workflow_itself(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.queue.send("note", {"n": 1})
            return await ctx.queue.next("read", names=["note"])

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == [{"n": 1}]
        assert await queued(driver) == []

    async def test_send_is_not_repeated_on_replay(self, driver: durable.Driver) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.queue.send("note", "x")
            await ctx.sleep("nap", HOUR)
            return await ctx.queue.next("read", names=["note"], count=5, timeout=0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).state == SLEEPING
        assert await queued(driver) == [["note", "x"]]
        assert (await handle.result()).state == SLEEPING  # replays the send
        assert await queued(driver) == [["note", "x"]]
        clock.advance(HOUR)
        assert (await handle.result()).output == ["x"]
        assert await queued(driver) == []

    async def test_send_orders_after_earlier_messages(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.queue.send("m", "self")
            return await ctx.queue.next("read", count=2)

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.message("m", "outside")
        assert (await handle.result()).output == ["outside", "self"]

    async def test_send_of_an_unstorable_body_is_a_type_error_and_sends_nothing(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.queue.send("bad", object())
            except TypeError as exc:
                return type(exc).__name__
            return "sent"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "UnstorableValueError"
        assert await queued(driver) == []


class TestHandleMessageRefusals:
    async def test_message_to_a_completed_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return "done"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.result()
        with pytest.raises(durable.WorkflowFinishedError) as caught:
            await handle.message("m", 1)
        assert caught.value.workflow_id == "w"
        assert await queued(driver) == []

    async def test_message_to_a_cancelled_workflow(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(), None, driver=driver, mode="yield"
        )
        assert (await handle.result()).state == SLEEPING
        await handle.cancel()
        with pytest.raises(durable.WorkflowCancelledError):
            await handle.message("m", 1)
        assert await queued(driver) == []

    async def test_message_to_a_workflow_cancelled_before_it_ran(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", next_once(), None, driver=driver)
        await handle.cancel()
        with pytest.raises(durable.WorkflowCancelledError):
            await handle.message("m", 1)
        assert await queued(driver) == []

    async def test_message_to_a_failed_workflow_is_kept_for_after_recover(
        self, driver: durable.Driver
    ) -> None:
        fail = [True]

        def check() -> None:
            if fail[0]:
                raise durable.CriticalError("not yet")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("check", check)
            return await ctx.queue.next("get")

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        await handle.message("m", "kept")
        fail[0] = False
        await handle.recover()
        assert (await handle.result()).output == ["kept"]

    async def test_unstorable_body_is_refused_and_nothing_is_stored(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", next_once(), None, driver=driver)
        with pytest.raises(durable.UnstorableValueError) as caught:
            await handle.message("m", {1, 2})
        assert isinstance(caught.value, TypeError)
        assert await driver.list_prefix(b"") == []
        assert await driver.get_alarm("w") is None

    async def test_unstorable_body_to_a_sleeping_workflow_changes_nothing(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(), None, driver=driver, mode="yield"
        )
        await handle.result()
        before = await driver.list_prefix(b"")
        with pytest.raises(TypeError):
            await handle.message("m", object())
        assert await driver.list_prefix(b"") == before
        assert await driver.get_alarm("w") is None

    async def test_message_name_must_be_a_str(self, driver: durable.Driver) -> None:
        handle = durable.run_workflow("w", next_once(), None, driver=driver)
        with pytest.raises(TypeError):
            await handle.message(1, "x")  # type: ignore[arg-type]
        assert await driver.list_prefix(b"") == []


class TestNextArguments:
    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"names": "go"}, TypeError),
            ({"count": 0}, ValueError),
            ({"count": -1}, ValueError),
            ({"count": 1.0}, ValueError),
            ({"count": True}, ValueError),
            ({"timeout": -1}, ValueError),
            ({"timeout": "1"}, TypeError),
        ],
    )
    async def test_bad_arguments_are_refused_at_the_call(
        self, driver: durable.Driver, options: dict[str, object], error: type
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            with pytest.raises(error):
                ctx.queue.next("get", **options)  # type: ignore[arg-type,unused-awaitable]
            return "refused"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.message("m", 1)
        assert (await handle.result()).output == "refused"
        assert await queued(driver) == [["m", 1]]  # nothing consumed

    async def test_names_may_be_any_iterable_of_str(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow(
            "w", next_once(names=("a", "b"), count=2), None, driver=driver
        )
        await handle.message("b", 1)
        await handle.message("c", 2)
        await handle.message("a", 3)
        assert (await handle.result()).output == [1, 3]


BACKENDS = ("asyncio", "trio")

actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 3)),
        st.tuples(st.just("noise"), st.just(1)),
        st.tuples(
            st.just("run"), st.integers(0, 6)
        ),  # 0: no crash, k: crash at write k
    ),
    max_size=12,
)


async def interleave(steps: list[tuple[str, int]], counts: list[int]) -> None:
    """Sends, crashing runs and clean runs in the given order, then run to the end."""
    needed = sum(counts)

    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        got: list[object] = []
        for i, count in enumerate(counts):
            got.extend(await ctx.queue.next(f"next-{i}", names=["m"], count=count))
            await ctx.step(f"after-{i}", lambda: None)
        return got

    async with durable.MemoryDriver() as driver:
        sender = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        sent: list[list[object]] = []  # every message stored, in order

        async def send(name: str) -> None:
            body = len(sent)
            try:
                await sender.message(name, body)
            except durable.WorkflowFinishedError:
                return
            sent.append([name, body])

        async def run(crash_at: int | None) -> durable.WorkflowResult | None:
            faulty = FaultyDriver(driver, fail_at=crash_at, mode="crash")
            handle = durable.run_workflow("w", wf, None, driver=faulty, mode="yield")
            try:
                return await handle.result()
            except SimulatedCrash:
                return None

        for action, n in steps:
            if action == "run":
                await run(n or None)
            else:
                for _ in range(n):
                    await send("m" if action == "send" else "x")
        result = await run(None)
        for _ in range(needed + 1):
            if result is not None and result.state == COMPLETED_STATE:
                break
            await send("m")
            result = await run(None)
        assert result is not None
        assert result.state == COMPLETED_STATE
        delivered = [item for item in sent if item[0] == "m"][:needed]
        assert result.output == [body for _, body in delivered]
        assert await queued(driver) == [item for item in sent if item not in delivered]


@settings(deadline=None)
@given(steps=actions, counts=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_messages_are_delivered_exactly_once_in_order_across_crashes(
    steps: list[tuple[str, int]], counts: list[int]
) -> None:
    for backend in BACKENDS:
        anyio.run(interleave, steps, counts, backend=backend)
