"""ctx.get_version and ctx.removed: changing workflow code under in-flight workflows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import durable
from durable._history import History

from ._support import Counter, JumpClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Workflow = Callable[[durable.WorkflowContext, object], Awaitable[object]]

HOUR = 3600.0


async def run_yield(
    driver: durable.Driver, workflow_id: str, fn: Workflow, clock: JumpClock
) -> durable.WorkflowResult:
    return await durable.run_workflow(
        workflow_id, fn, None, driver=driver, mode="yield", clock=clock
    ).result()


def order_v1(counter: Counter) -> Workflow:
    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        await ctx.step("charge", lambda: counter("charge", "paid"))
        await ctx.sleep("cool-off", HOUR)
        await ctx.step("email", lambda: counter("email", "sent by mail"))
        return "v1"

    return wf


def order_v2(counter: Counter) -> Workflow:
    """v2 replaces the email by a text message, for new workflows only."""

    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        await ctx.step("charge", lambda: counter("charge", "paid"))
        version = await ctx.get_version("notify-by-text", 2)
        await ctx.sleep("cool-off", HOUR)
        if version == 1:
            await ctx.step("email", lambda: counter("email", "sent by mail"))
            return "v1 path"
        await ctx.step("text", lambda: counter("text", "sent by text"))
        return "v2 path"

    return wf


class TestGetVersion:
    async def test_a_new_workflow_gets_the_latest_version(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.get_version("v", 3)

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == 3

    async def test_v1_halfway_then_v2_code_resumes_old_and_new_workflows_correctly(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()
        first = await run_yield(driver, "old", order_v1(counter), clock)
        assert first.state == durable.WorkflowState.SLEEPING
        # the code is upgraded while "old" sleeps; "new" starts under v2
        new_first = await run_yield(driver, "new", order_v2(counter), clock)
        assert new_first.state == durable.WorkflowState.SLEEPING
        clock.advance(2 * HOUR)
        old = await run_yield(driver, "old", order_v2(counter), clock)
        new = await run_yield(driver, "new", order_v2(counter), clock)
        assert (old.output, new.output) == ("v1 path", "v2 path")
        assert counter.calls == {"charge": 2, "email": 1, "text": 1}

    async def test_the_recorded_version_is_returned_on_replay(
        self, driver: durable.Driver
    ) -> None:
        seen: list[int] = []
        clock = JumpClock()

        def wf_with(latest: int) -> Workflow:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                seen.append(await ctx.get_version("v", latest))
                await ctx.sleep("nap", HOUR)
                return seen[-1]

            return wf

        await run_yield(driver, "w", wf_with(2), clock)
        clock.advance(2 * HOUR)
        result = await run_yield(driver, "w", wf_with(5), clock)
        assert seen == [2, 2]
        assert result.output == 2

    async def test_a_version_marker_inside_an_old_history_shifts_nothing_after_it(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def v1(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: counter("a", 1))
            await ctx.step("b", lambda: counter("b", 2))
            await ctx.sleep("nap", HOUR)
            return "done"

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: counter("a", 1))
            version = await ctx.get_version("between", 2)
            await ctx.step("b", lambda: counter("b", 2))
            await ctx.sleep("nap", HOUR)
            return version

        await run_yield(driver, "w", v1, clock)
        clock.advance(2 * HOUR)
        result = await run_yield(driver, "w", v2, clock)
        assert result.output == 1
        assert counter.calls == {"a": 1, "b": 1}

    @pytest.mark.parametrize("latest", [0, -1, True, 1.5, "2"])
    async def test_latest_must_be_an_int_of_at_least_one(
        self, driver: durable.Driver, latest: object
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.get_version("v", latest)  # type: ignore[arg-type]

        with pytest.raises(durable.WorkflowFailedError, match="latest"):
            await durable.run_workflow("w", wf, None, driver=driver).result()


class TestRemoved:
    async def test_removed_satisfies_an_old_step_without_running_anything(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def v1(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("audit", lambda: counter("audit", "logged"))
            await ctx.sleep("nap", HOUR)
            return await ctx.step("ship", lambda: counter("ship", "shipped"))

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("audit", "step")
            await ctx.sleep("nap", HOUR)
            return await ctx.step("ship", lambda: counter("ship", "shipped"))

        await run_yield(driver, "old", v1, clock)
        clock.advance(2 * HOUR)
        result = await run_yield(driver, "old", v2, clock)
        assert result.output == "shipped"
        assert counter.calls == {"audit": 1, "ship": 1}

    async def test_a_new_run_records_a_removed_marker_in_the_same_place(
        self, driver: durable.Driver
    ) -> None:
        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("audit", "step")
            return await ctx.step("ship", lambda: "shipped")

        await durable.run_workflow("new", v2, None, driver=driver).result()
        history = await History.load(driver, "new")
        kinds = sorted((entry.seq, entry.kind) for entry in history.entries.values())
        assert kinds == [(0, "removed"), (1, "step")]

    @pytest.mark.parametrize("kind", ["join", "loop"])
    async def test_removed_retires_the_whole_subtree_of_a_join_or_loop(
        self, driver: durable.Driver, kind: str
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def branch(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("inner", lambda: counter("inner", 1))

        async def body(ctx: durable.WorkflowContext, state: object) -> object:
            await ctx.step("inner", lambda: counter("inner", 1))
            return durable.Loop.break_(state)

        async def v1(ctx: durable.WorkflowContext, _: object) -> object:
            if kind == "join":
                await ctx.join("fanout", {"a": branch, "b": branch})
            else:
                await ctx.loop("fanout", body, state=0)
            await ctx.sleep("nap", HOUR)
            return "done"

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("fanout", kind)
            await ctx.sleep("nap", HOUR)
            return "done without fanout"

        await run_yield(driver, "w", v1, clock)
        clock.advance(2 * HOUR)
        result = await run_yield(driver, "w", v2, clock)
        assert result.output == "done without fanout"

    async def test_removed_of_another_kind_than_recorded_diverges(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def v1(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("audit", lambda: "logged")
            await ctx.sleep("nap", HOUR)
            return "done"

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("audit", "sleep")
            await ctx.sleep("nap", HOUR)
            return "done"

        await run_yield(driver, "w", v1, clock)
        with pytest.raises(durable.HistoryDivergedError, match="audit"):
            await run_yield(driver, "w", v2, clock)

    async def test_a_retired_version_marker_can_be_removed(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            version = await ctx.get_version("v", 2)
            await ctx.sleep("nap", HOUR)
            return version

        async def v3(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("v", "version")
            await ctx.sleep("nap", HOUR)
            return "v3"

        await run_yield(driver, "w", v2, clock)
        clock.advance(2 * HOUR)
        assert (await run_yield(driver, "w", v3, clock)).output == "v3"

    async def test_an_unknown_original_type_is_refused(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.removed("x", "gadget")
            return None

        with pytest.raises(durable.WorkflowFailedError, match="original_type"):
            await durable.run_workflow("w", wf, None, driver=driver).result()


class TestDivergenceDiagnostics:
    async def test_the_message_names_both_entries_and_the_fix(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def v1(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("charge", lambda: 1)
            await ctx.sleep("nap", HOUR)
            return None

        async def v2(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("bill", lambda: 1)
            await ctx.sleep("nap", HOUR)
            return None

        await run_yield(driver, "w", v1, clock)
        with pytest.raises(durable.HistoryDivergedError) as caught:
            await run_yield(driver, "w", v2, clock)
        message = str(caught.value)
        assert "step 'charge'" in message
        assert "step 'bill'" in message
        assert "ctx.removed()" in message
        assert "ctx.get_version()" in message
