"""A replayed step: its recorded value, no run, and the awaitable rules of any step."""

from __future__ import annotations

import gc
import warnings

import anyio
import pytest

import durable

from ._support import JumpClock

LIMIT = 5.0
HOUR = 3600.0


async def run_yield(driver: durable.Driver, wf: object) -> durable.WorkflowResult:
    with anyio.fail_after(LIMIT):
        return await durable.run_workflow(
            "w",
            wf,  # type: ignore[arg-type]
            None,
            driver=driver,
            mode="yield",
            clock=JumpClock(),
        ).result()


async def test_a_replayed_step_returns_its_recorded_value_and_does_not_run(
    driver: durable.Driver,
) -> None:
    calls: list[int] = []
    seen: list[object] = []

    def work() -> dict[str, object]:
        calls.append(1)
        return {"n": len(calls), "t": (1, 2)}

    async def wf(ctx: durable.WorkflowContext, _: object) -> None:
        seen.append(await ctx.step("s", work))
        await ctx.sleep("park", HOUR)

    await run_yield(driver, wf)
    await run_yield(driver, wf)
    assert calls == [1]
    assert seen == [{"n": 1, "t": [1, 2]}] * 2  # the stored form, both times


async def test_awaiting_a_replayed_step_twice_is_refused(
    driver: durable.Driver,
) -> None:
    outcomes: list[object] = []

    async def wf(ctx: durable.WorkflowContext, _: object) -> None:
        step = ctx.step("s", lambda: 1)
        outcomes.append(await step)
        try:
            await step
        except RuntimeError as exc:
            outcomes.append(type(exc))
        await ctx.sleep("park", HOUR)

    await run_yield(driver, wf)
    await run_yield(driver, wf)  # the replay: the same rule as a fresh step
    assert outcomes == [1, RuntimeError, 1, RuntimeError]


@pytest.mark.parametrize("replayed", [False, True], ids=["fresh", "replayed"])
async def test_a_never_awaited_try_step_is_refused_without_a_warning(
    driver: durable.Driver, *, replayed: bool
) -> None:
    async def recorded(ctx: durable.WorkflowContext, _: object) -> None:
        await ctx.try_step("s", lambda: 1)
        await ctx.sleep("park", HOUR)

    async def missing_await(ctx: durable.WorkflowContext, _: object) -> None:
        ctx.try_step("s", lambda: 1)  # type: ignore[unused-awaitable]
        await ctx.sleep("park", HOUR)

    if replayed:
        await run_yield(driver, recorded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(durable.EntryInProgressError):
            await run_yield(driver, missing_await)
        gc.collect()
    assert [str(w.message) for w in caught] == []
