"""Determinism guards: divergence at every level, duplicate names, missing awaits, names."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

import durable
from durable._history import History

from ._support import Counter, JumpClock, root_entries, snapshot

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Workflow = Callable[[durable.WorkflowContext, object], Awaitable[object]]

HOUR = 3600.0


async def _original(ctx: durable.WorkflowContext, _: object) -> object:
    a = await ctx.step("a", lambda: "A")
    b = await ctx.step("b", lambda: "B")
    await ctx.sleep("nap", HOUR)
    return [a, b]


async def _renamed(ctx: durable.WorkflowContext, _: object) -> object:
    a = await ctx.step("a2", lambda: "A")
    b = await ctx.step("b", lambda: "B")
    await ctx.sleep("nap", HOUR)
    return [a, b]


async def _reordered(ctx: durable.WorkflowContext, _: object) -> object:
    b = await ctx.step("b", lambda: "B")
    a = await ctx.step("a", lambda: "A")
    await ctx.sleep("nap", HOUR)
    return [a, b]


async def _truncated(ctx: durable.WorkflowContext, _: object) -> object:
    a = await ctx.step("a", lambda: "A")
    return [a]


async def _step_became_sleep(ctx: durable.WorkflowContext, _: object) -> object:
    await ctx.step("a", lambda: "A")
    await ctx.sleep("b", 1.0)
    await ctx.sleep("nap", HOUR)
    return None


async def _inserted(ctx: durable.WorkflowContext, _: object) -> object:
    a = await ctx.step("a", lambda: "A")
    await ctx.step("new", lambda: "N")
    b = await ctx.step("b", lambda: "B")
    await ctx.sleep("nap", HOUR)
    return [a, b]


async def _yield_in_original(driver: durable.Driver, clock: JumpClock) -> None:
    handle = durable.run_workflow(
        "w", _original, None, driver=driver, mode="yield", clock=clock
    )
    result = await handle.result()
    assert result.state == durable.WorkflowState.SLEEPING


async def _diverge(
    driver: durable.Driver, clock: JumpClock, changed: Workflow
) -> durable.HistoryDivergedError:
    handle = durable.run_workflow(
        "w", changed, None, driver=driver, mode="yield", clock=clock
    )
    with pytest.raises(durable.HistoryDivergedError) as diverged:
        await handle.result()
    return diverged.value


class TestRootScopeDivergence:
    async def test_renamed_root_step_is_detected(self, driver: durable.Driver) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        error = await _diverge(driver, clock, _renamed)
        assert error.workflow_id == "w"
        assert "workflow body" in error.location
        assert "#1" in error.location
        assert error.expected == "step 'a'"
        assert "step 'a2'" in error.found
        for part in ("workflow body", "step 'a'", "step 'a2'"):
            assert part in str(error)

    async def test_removed_root_step_is_detected_at_the_end_of_the_body(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        clock.advance(HOUR)
        error = await _diverge(driver, clock, _truncated)
        assert error.expected == "step 'b'"
        assert "end of the workflow body" in error.found
        assert "#2" in error.location

    async def test_reordered_root_steps_are_detected(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        error = await _diverge(driver, clock, _reordered)
        assert error.expected == "step 'a'"
        assert "step 'b'" in error.found
        assert "#1" in error.location

    async def test_step_replaced_by_a_sleep_of_the_same_name_is_detected(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        error = await _diverge(driver, clock, _step_became_sleep)
        assert error.expected == "step 'b'"
        assert "sleep 'b'" in error.found
        assert "step 'b'" in str(error)
        assert "sleep 'b'" in str(error)

    async def test_step_inserted_before_recorded_ones_is_detected(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        error = await _diverge(driver, clock, _inserted)
        assert error.expected == "step 'b'"
        assert "step 'new'" in error.found

    async def test_replay_of_the_unchanged_code_does_not_diverge(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        clock.advance(HOUR)
        handle = durable.run_workflow("w", _original, None, driver=driver, clock=clock)
        assert (await handle.result()).output == ["A", "B"]

    async def test_appending_a_call_after_the_recorded_ones_does_not_diverge(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        clock.advance(HOUR)

        async def extended(ctx: durable.WorkflowContext, _: object) -> object:
            await _original(ctx, None)
            return await ctx.step("c", lambda: "C")

        handle = durable.run_workflow("w", extended, None, driver=driver, clock=clock)
        assert (await handle.result()).output == "C"


class TestDivergenceLeavesTheStoreAlone:
    @pytest.mark.parametrize(
        "changed", [_renamed, _reordered, _truncated, _step_became_sleep, _inserted]
    )
    async def test_stored_history_and_state_are_unchanged(
        self, driver: durable.Driver, changed: Workflow
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        clock.advance(HOUR)
        before = await snapshot(driver, "w")
        await _diverge(driver, clock, changed)
        assert await snapshot(driver, "w") == before

    @pytest.mark.parametrize(
        "changed", [_renamed, _reordered, _truncated, _step_became_sleep, _inserted]
    )
    async def test_workflow_resumes_once_the_original_code_runs_again(
        self, driver: durable.Driver, changed: Workflow
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def original(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.step("a", lambda: counter("a", "A"))
            b = await ctx.step("b", lambda: counter("b", "B"))
            await ctx.sleep("nap", HOUR)
            return [a, b]

        first = durable.run_workflow(
            "w", original, None, driver=driver, mode="yield", clock=clock
        )
        await first.result()
        clock.advance(HOUR)
        await _diverge(driver, clock, changed)
        fixed = durable.run_workflow("w", original, None, driver=driver, clock=clock)
        assert (await fixed.result()).output == ["A", "B"]
        assert counter.calls == {"a": 1, "b": 1}

    async def test_divergence_does_not_mark_the_workflow_failed(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        events: list[object] = []
        await _yield_in_original(driver, clock)
        handle = durable.run_workflow(
            "w",
            _renamed,
            None,
            driver=driver,
            mode="yield",
            clock=clock,
            on_error=events.append,
        )
        with pytest.raises(durable.HistoryDivergedError):
            await handle.result()
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert events == []


class TestDeterminismErrorsCannotBeCaught:
    async def test_divergence_wrapped_in_another_error_is_still_raised_as_divergence(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        await _yield_in_original(driver, clock)
        before = await snapshot(driver, "w")

        async def wrapping(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await _renamed(ctx, None)
            except Exception as exc:
                raise RuntimeError("wrapped") from exc
            return None

        await _diverge(driver, clock, wrapping)
        assert await snapshot(driver, "w") == before

    async def test_swallowed_duplicate_name_still_fails_the_run_and_records_nothing_more(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: 1)
            with contextlib.suppress(durable.HistoryDivergedError):
                await ctx.step("a", lambda: 2)
            await ctx.step("after", lambda: counter("after"))
            return "carried on"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.HistoryDivergedError):
            await handle.result()
        assert "after" not in await root_entries(driver, "w")
        assert await handle.get_state() == durable.WorkflowState.RUNNING

    async def test_swallowed_missing_await_still_fails_the_run(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            first = ctx.step("a", lambda: 1)
            with contextlib.suppress(durable.EntryInProgressError):
                ctx.step("b", lambda: 2)
            del first
            return await ctx.step("c", lambda: 3)

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.EntryInProgressError):
            await handle.result()
        assert await handle.get_state() != durable.WorkflowState.COMPLETED


class TestDuplicateNames:
    async def test_second_step_with_the_same_name_diverges(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: 1)
            await ctx.step("a", lambda: 2)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.HistoryDivergedError) as diverged:
            await handle.result()
        assert "'a'" in str(diverged.value)
        assert await handle.get_state() != durable.WorkflowState.FAILED

    async def test_step_and_sleep_share_one_namespace(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("x", lambda: 1)
            await ctx.sleep("x", 0)
            return None

        with pytest.raises(durable.HistoryDivergedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()


class TestEntryInProgress:
    async def test_call_while_an_earlier_call_is_not_awaited_is_refused(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            first = ctx.step("a", lambda: 1)
            second = ctx.step("b", lambda: 2)
            return [await first, await second]

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.EntryInProgressError) as refused:
            await handle.result()
        assert "'a'" in str(refused.value)
        assert "'b'" in str(refused.value)

    async def test_scope_ending_with_a_never_awaited_call_is_refused(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            ctx.step("forgotten", lambda: 1)
            return "done"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.EntryInProgressError) as refused:
            await handle.result()
        assert "'forgotten'" in str(refused.value)
        assert "end of the workflow body" in str(refused.value)

    async def test_never_awaited_step_does_not_run(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            ctx.step("forgotten", lambda: counter("forgotten"))
            return "done"

        with pytest.raises(durable.EntryInProgressError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["forgotten"] == 0

    async def test_missing_await_does_not_mark_the_workflow_failed(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: 1)
            ctx.step("forgotten", lambda: 2)
            return "done"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.EntryInProgressError):
            await handle.result()
        assert await handle.get_state() != durable.WorkflowState.FAILED

    async def test_fixed_code_resumes_after_a_missing_await(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def broken(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", lambda: counter("a", "A"))
            ctx.step("b", lambda: counter("b", "B"))
            return "done"

        async def fixed(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.step("a", lambda: counter("a", "A"))
            return [a, await ctx.step("b", lambda: counter("b", "B"))]

        with pytest.raises(durable.EntryInProgressError):
            await durable.run_workflow("w", broken, None, driver=driver).result()
        result = await durable.run_workflow("w", fixed, None, driver=driver).result()
        assert result.output == ["A", "B"]
        assert counter.calls == {"a": 1, "b": 1}


class TestNamesDoNotAlias:
    NAMES = (
        "a",
        "b",
        "a/b",
        "a~1b",
        "a~b",
        "a:b",
        "a\x00b",
        "a\x00",
        "\x00",
        "/",
        "~1",
        ":",
        "",
        "a/b/c",
        "\x00\x01",
        "é/ü",
    )

    async def test_each_name_gets_its_own_entry(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return [await ctx.step(name, lambda name=name: name) for name in self.NAMES]

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == list(self.NAMES)
        entries = await root_entries(driver, "w")
        assert sorted(entries) == sorted(self.NAMES)

    async def test_each_name_replays_its_own_value(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            values = [
                await ctx.step(name, lambda name=name: counter(name, name))
                for name in self.NAMES
            ]
            await ctx.sleep("nap", HOUR)
            return values

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        result = await handle.result()
        assert result.output == list(self.NAMES)
        assert all(counter[name] == 1 for name in self.NAMES)

    async def test_separator_names_are_stored_verbatim(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            for name in self.NAMES:
                await ctx.step(name, lambda: None)
            return None

        await durable.run_workflow("w", wf, None, driver=driver).result()
        history = await History.load(driver, "w")
        assert sorted(history.names) == sorted(self.NAMES)
