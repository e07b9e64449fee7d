"""check_replay and check_determinism on every workflow feature, and on broken code."""

from __future__ import annotations

import itertools
import random

import pytest

from durable import Loop, WorkflowContext
from durable.testing import check_determinism, check_replay


async def steps_and_sleeps(ctx: WorkflowContext, n: object) -> object:
    total = await ctx.step("first", lambda: 1)
    await ctx.sleep("short", 0.1)
    await ctx.sleep("month", 30 * 86400)
    total += await ctx.step("second", lambda: 2, ephemeral=True)
    return [n, total]


async def messages(ctx: WorkflowContext, _: object) -> object:
    first = await ctx.queue.next("a")
    both = await ctx.queue.next("b", count=2)
    late = await ctx.queue.next("never", timeout=60)
    return [first, both, late]


async def join_and_race(ctx: WorkflowContext, _: object) -> object:
    async def left(c: WorkflowContext) -> object:
        return await c.step("l", lambda: "L")

    async def right(c: WorkflowContext) -> object:
        await c.sleep("wait", 5)
        return await c.step("r", lambda: "R")

    async def slow(c: WorkflowContext) -> object:
        await c.sleep("slow", 3600)
        return "slow"

    joined = await ctx.join("both", {"left": left, "right": right})
    raced = await ctx.race("first", {"fast": left, "slow": slow})
    return [joined, list(raced)]


async def loop_and_try(ctx: WorkflowContext, _: object) -> object:
    async def body(c: WorkflowContext, state: object) -> object:
        assert isinstance(state, int)
        await c.step("add", lambda: state)
        if state >= 4:
            return Loop.break_(state)
        return Loop.continue_(state + 1)

    def boom() -> object:
        raise ValueError("no")

    counted = await ctx.loop("count", body, state=0, commit_interval=2)
    tried = await ctx.try_step("risky", boom, max_retries=1, retry_backoff_base=10)
    return [counted, tried.ok]


@pytest.mark.parametrize("mode", ["live", "yield"])
@pytest.mark.parametrize(
    ("workflow", "sent"),
    [
        (steps_and_sleeps, []),
        (messages, [("a", 1), ("b", 2), ("b", 3)]),
        (join_and_race, []),
        (loop_and_try, []),
    ],
    ids=["steps-sleeps", "messages", "join-race", "loop-try"],
)
async def test_check_replay_passes_on_correct_workflows(
    workflow: object, sent: list[tuple[str, object]], mode: str
) -> None:
    report = await check_replay(workflow, 7, messages=sent, mode=mode)  # type: ignore[arg-type]
    assert report.outcome[0] == "completed"
    assert report.writes >= 2


async def test_report_carries_the_output() -> None:
    report = await check_replay(steps_and_sleeps, 7)
    assert report.output == [7, 3]
    assert "'first': step completed" in report.history


async def test_a_missing_message_is_reported() -> None:
    with pytest.raises(AssertionError, match="never sent"):
        await check_replay(messages, None, messages=[("a", 1)])


_counter = itertools.count()


async def branches_on_a_global(ctx: WorkflowContext, _: object) -> object:
    if next(_counter) % 2:
        return await ctx.step("odd", lambda: 1)
    return await ctx.step("even", lambda: 0)


async def random_step_name(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("setup", lambda: None)
    name = f"fetch-{random.random()}"  # the bug under test
    return await ctx.step(name, lambda: 1)


@pytest.mark.parametrize("workflow", [branches_on_a_global, random_step_name])
async def test_check_replay_fails_on_nondeterministic_code(workflow: object) -> None:
    with pytest.raises(AssertionError, match=r"crash point: write \d+") as info:
        await check_replay(workflow, None)  # type: ignore[arg-type]
    assert "HistoryDivergedError" in str(info.value)
    assert "history at the crash point" in str(info.value)


@pytest.mark.parametrize("workflow", [branches_on_a_global, random_step_name])
async def test_check_determinism_names_the_entry(workflow: object) -> None:
    with pytest.raises(AssertionError, match="diverged"):
        await check_determinism(workflow, None)  # type: ignore[arg-type]


async def test_check_determinism_passes_on_correct_code() -> None:
    await check_determinism(join_and_race, None)
