"""replay_from_step and handle.replay_from: re-run a workflow from a chosen step."""

from __future__ import annotations

import anyio
import pytest

import durable
from durable._history import History
from durable.testing import FaultyDriver

from ._support import Counter, JumpClock, snapshot

HOUR = 3600.0
WID = "wf"


def _run(
    driver: durable.Driver,
    wf: durable._engine._run.WorkflowFn,
    clock: durable.Clock | None = None,
    mode: str = "live",
) -> durable.WorkflowHandle:
    return durable.run_workflow(WID, wf, None, driver=driver, clock=clock, mode=mode)  # type: ignore[arg-type]


async def _result(handle: durable.WorkflowHandle) -> durable.WorkflowResult:
    with anyio.fail_after(10):
        return await handle.result()


class Linear:
    """first, approval message, nap, middle, second message, last."""

    def __init__(self) -> None:
        self.calls = Counter()
        self.factor = 1

    async def __call__(self, ctx: durable.WorkflowContext, _: object) -> object:
        first = await ctx.step("first", lambda: self.calls("first", 1))
        [approval] = await ctx.queue.next("approval")
        await ctx.sleep("nap", HOUR)
        middle = await ctx.step(
            "middle", lambda: self.calls("middle", 10 * self.factor)
        )
        [extra] = await ctx.queue.next("extra")
        last = await ctx.step("last", lambda: self.calls("last", middle + 100))
        return [first, approval, middle, extra, last]


async def _completed_linear(
    driver: durable.Driver, clock: JumpClock
) -> tuple[Linear, durable.WorkflowHandle]:
    wf = Linear()
    handle = _run(driver, wf, clock)
    await handle.message("approval", "yes")
    await handle.message("extra", "more")
    result = await _result(handle)
    assert result.output == [1, "yes", 10, "more", 110]
    return wf, handle


class TestLinear:
    async def test_replays_from_the_middle_step_and_keeps_earlier_entries(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        wf, _ = await _completed_linear(driver, clock)
        sleeps = list(clock.sleeps)
        wf.factor = 2
        await durable.replay_from_step(WID, "middle", driver=driver)
        assert await _run(driver, wf).get_state() == durable.WorkflowState.PENDING
        assert await driver.get_alarm(WID) is not None
        # yield mode: a rerun that waited for a message again would return sleeping
        result = await _result(_run(driver, wf, clock, mode="yield"))
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == [1, "yes", 20, "more", 120]
        assert wf.calls.calls == {"first": 1, "middle": 2, "last": 2}
        assert clock.sleeps == sleeps  # the nap was not slept again
        # neither message was sent again: "approval" replayed, "extra" was put back
        history = await History.load(driver, WID)
        assert history.messages == []

    async def test_the_handle_method_replays_too(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        wf, handle = await _completed_linear(driver, clock)
        await handle.replay_from("last")
        result = await _result(handle)
        assert result.output == [1, "yes", 10, "more", 110]
        assert wf.calls.calls == {"first": 1, "middle": 1, "last": 2}

    async def test_replay_from_the_first_step_keeps_nothing_after_it(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        wf, _ = await _completed_linear(driver, clock)
        sleeps = len(clock.sleeps)
        await durable.replay_from_step(WID, ("first",), driver=driver)
        result = await _result(_run(driver, wf, clock))
        assert result.output == [1, "yes", 10, "more", 110]
        assert wf.calls.calls == {"first": 2, "middle": 2, "last": 2}
        assert len(clock.sleeps) == sleeps + 1  # the nap came after: slept again
        # both consumed messages were put back and consumed again, not lost
        assert (await History.load(driver, WID)).messages == []

    async def test_the_write_is_atomic(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        await _completed_linear(driver, clock)
        before = await snapshot(driver, WID)
        faulty = FaultyDriver(driver, fail_at=1, mode="raise")
        with pytest.raises(OSError, match="simulated"):
            await durable.replay_from_step(WID, "middle", driver=faulty)
        assert faulty.failed_at == 1
        assert await snapshot(driver, WID) == before


class TestSentMessages:
    async def test_a_message_sent_after_the_target_is_not_duplicated(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            price = await ctx.step("price", lambda: counter("price", 5))
            await ctx.queue.send("note", {"price": price})
            await ctx.queue.send("other", "unread")  # stays queued: nobody reads it
            [note] = await ctx.queue.next("read", names=["note"])
            return note

        handle = _run(driver, wf)
        assert (await _result(handle)).output == {"price": 5}
        await durable.replay_from_step(WID, "price", driver=driver)
        assert (await _result(_run(driver, wf))).output == {"price": 5}
        assert counter.calls == {"price": 2}
        history = await History.load(driver, WID)
        # one "other" message, not two: the rerun's send replaced the first one's
        assert len(history.messages) == 1


class TestFailed:
    async def test_a_failed_workflow_is_fixed_by_replaying_the_failed_step(
        self, driver: durable.Driver
    ) -> None:
        calls = Counter()
        broken = [True]

        def charge() -> object:
            calls("charge")
            if broken[0]:
                raise RuntimeError("card service down")
            return "charged"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("reserve", lambda: calls("reserve", "reserved"))
            charged = await ctx.step(
                "charge", charge, max_retries=1, retry_backoff_base=0.001
            )
            return await ctx.step("ship", lambda: calls("ship", f"shipped {charged}"))

        clock = JumpClock()
        with pytest.raises(durable.WorkflowFailedError):
            await _result(_run(driver, wf, clock))
        assert calls.calls == {"reserve": 1, "charge": 2}
        broken[0] = False
        await durable.replay_from_step(WID, "charge", driver=driver)
        result = await _result(_run(driver, wf, clock))
        assert result.output == "shipped charged"
        assert calls.calls == {"reserve": 1, "charge": 3, "ship": 1}


class TestNested:
    async def test_a_step_in_a_join_branch(self, driver: durable.Driver) -> None:
        calls = Counter()
        price = [5]

        async def branch_a(ctx: durable.WorkflowContext) -> object:
            await ctx.step("a1", lambda: calls("a1"))
            return await ctx.step("charge", lambda: calls("charge", price[0]))

        async def branch_b(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("b1", lambda: calls("b1", "b"))

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("before", lambda: calls("before"))
            out = await ctx.join("fanout", {"branch-a": branch_a, "branch-b": branch_b})
            return await ctx.step("after", lambda: calls("after", out))

        assert (await _result(_run(driver, wf))).output == {
            "branch-a": 5,
            "branch-b": "b",
        }
        price[0] = 7
        await durable.replay_from_step(
            WID, ("fanout", "branch-a", "charge"), driver=driver
        )
        result = await _result(_run(driver, wf))
        assert result.output == {"branch-a": 7, "branch-b": "b"}
        assert calls.calls == {"before": 1, "a1": 1, "charge": 2, "b1": 1, "after": 2}

    async def test_a_step_in_a_loop_iteration(self, driver: durable.Driver) -> None:
        calls = Counter()
        broken = [True]

        def fetch(i: int) -> int:
            calls(f"fetch{i}")
            if i == 3 and broken[0]:
                raise durable.CriticalError("bad batch")
            return i

        async def body(ctx: durable.WorkflowContext, total: int) -> object:
            i = await ctx.step("index", lambda: calls("index", total[1]))  # type: ignore[index]
            got = await ctx.step("fetch", lambda: fetch(i))
            if i == 4:
                return durable.Loop.break_(total[0] + got)  # type: ignore[index]
            return durable.Loop.continue_([total[0] + got, i + 1])  # type: ignore[index]

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            total = await ctx.loop("batches", body, state=[0, 0])
            return await ctx.step("report", lambda: calls("report", total))

        with pytest.raises(durable.WorkflowFailedError):
            await _result(_run(driver, wf))
        broken[0] = False
        await durable.replay_from_step(WID, ("batches", 1, "fetch"), driver=driver)
        result = await _result(_run(driver, wf))
        assert result.output == 0 + 1 + 2 + 3 + 4
        assert calls["fetch0"] == 1
        assert calls["fetch1"] == calls["fetch2"] == 2
        assert calls["fetch3"] == 2  # the failed run, and the rerun
        assert calls["fetch4"] == 1
        # iterations 0-3 ran once; in the rerun iteration 1 kept its "index" (it
        # came before the target) and iterations 2-4 ran afresh
        assert calls["index"] == 4 + 3
        assert calls["report"] == 1

    async def test_a_loop_checkpoint_past_the_iteration_is_refused(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, i: int) -> object:
            if i == 3:
                await ctx.step("fail", _critical)
            await ctx.step("fetch", lambda: i)
            return durable.Loop.continue_(i + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("batches", body, state=0, commit_interval=2)

        with pytest.raises(durable.WorkflowFailedError):
            await _result(_run(driver, wf))
        before = await snapshot(driver, WID)
        with pytest.raises(durable.ReplayTargetError, match="iteration 2 or later"):
            await durable.replay_from_step(WID, ("batches", 1, "fetch"), driver=driver)
        assert await snapshot(driver, WID) == before
        await durable.replay_from_step(WID, ("batches", 2, "fetch"), driver=driver)
        history = await History.load(driver, WID)
        assert history.meta is not None
        assert history.meta.state == durable.WorkflowState.PENDING

    async def test_a_completed_loop_is_refused(self, driver: durable.Driver) -> None:
        async def body(ctx: durable.WorkflowContext, i: int) -> object:
            await ctx.step("fetch", lambda: i)
            return durable.Loop.break_(i) if i == 2 else durable.Loop.continue_(i + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("batches", body, state=0)

        await _result(_run(driver, wf))
        with pytest.raises(durable.ReplayTargetError, match="before the loop"):
            await durable.replay_from_step(WID, ("batches", 1, "fetch"), driver=driver)

    async def test_a_losing_race_branch_is_refused(
        self, driver: durable.Driver
    ) -> None:
        async def fast(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("quick", lambda: "fast")

        async def slow(ctx: durable.WorkflowContext) -> object:
            await ctx.step("start", lambda: None)
            # waits for nothing that comes: "fast" wins whatever the store's latency
            await ctx.queue.next("never", names=["never"])
            return "slow"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return (await ctx.race("r", {"fast": fast, "slow": slow})).winner

        clock = JumpClock()
        assert (await _result(_run(driver, wf, clock))).output == "fast"
        with pytest.raises(durable.ReplayTargetError, match="won"):
            await durable.replay_from_step(WID, ("r", "slow", "start"), driver=driver)
        await durable.replay_from_step(WID, ("r", "fast", "quick"), driver=driver)
        assert (await _result(_run(driver, wf, clock))).output == "fast"


def _critical() -> None:
    raise durable.CriticalError("broken")


class TestRefusals:
    async def test_an_unknown_workflow(self, driver: durable.Driver) -> None:
        with pytest.raises(durable.UnknownWorkflowError):
            await durable.replay_from_step("nope", "step", driver=driver)

    async def test_a_missing_target(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        await _completed_linear(driver, clock)
        with pytest.raises(durable.ReplayTargetError) as missing:
            await durable.replay_from_step(WID, "charge", driver=driver)
        assert missing.value.workflow_id == WID
        assert missing.value.target == "charge"
        assert isinstance(missing.value, LookupError)
        assert "no entry 'charge'" in str(missing.value)

    async def test_a_sleep_is_not_a_step(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        await _completed_linear(driver, clock)
        before = await snapshot(driver, WID)
        with pytest.raises(durable.ReplayTargetError, match="is a sleep, not a step"):
            await durable.replay_from_step(WID, "nap", driver=driver)
        assert await snapshot(driver, WID) == before

    async def test_bad_paths(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        await _completed_linear(driver, clock)
        with pytest.raises(durable.ReplayTargetError, match="holds no entries"):
            await durable.replay_from_step(WID, ("first", "x"), driver=driver)
        with pytest.raises(durable.ReplayTargetError, match="does not follow a loop"):
            await durable.replay_from_step(WID, ("first", 1, "x"), driver=driver)
        with pytest.raises(durable.ReplayTargetError, match="ends in a loop iteration"):
            await durable.replay_from_step(WID, ("first", 1), driver=driver)
        with pytest.raises(TypeError):
            await durable.replay_from_step(WID, ["first"], driver=driver)  # type: ignore[arg-type]

    async def test_a_nested_name_given_alone_points_to_its_path(
        self, driver: durable.Driver
    ) -> None:
        async def branch(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("charge", lambda: 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.join("fanout", {"a": branch})

        await _result(_run(driver, wf))
        with pytest.raises(
            durable.ReplayTargetError, match="'fanout' / 'a' / 'charge'"
        ):
            await durable.replay_from_step(WID, "charge", driver=driver)

    async def test_a_workflow_running_in_this_process(
        self, driver: durable.Driver
    ) -> None:
        started = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("first", started.set)
            return await ctx.queue.next("never")

        handle = _run(driver, wf, JumpClock())
        async with handle:
            with anyio.fail_after(5):
                await started.wait()
            with pytest.raises(durable.WorkflowBusyError):
                await durable.replay_from_step(WID, "first", driver=driver)
            with pytest.raises(durable.WorkflowBusyError):
                await handle.replay_from("first")

    async def test_a_cancelled_workflow(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        handle = _run(driver, Linear(), clock, mode="yield")
        await _result(handle)
        await handle.cancel()
        with pytest.raises(durable.WorkflowCancelledError):
            await handle.replay_from("first")
