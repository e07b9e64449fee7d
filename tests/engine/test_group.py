"""ctx.group: branches started as others finish, a recorded finishing order, replay."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

import durable
from durable.testing import FaultyDriver

from ._support import Counter, Crash, JumpClock
from .test_branches import expect_crash, run_live, run_yield

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Branch = Callable[[durable.WorkflowContext], Awaitable[object]]

pytestmark = pytest.mark.anyio


def chain_workflow(
    counter: Counter, gates: dict[str, anyio.Event] | None = None
) -> Callable[[durable.WorkflowContext, object], Awaitable[object]]:
    """Start a and b; each finished branch x (up to depth 2) starts x+"1"; log order."""

    def branch(name: str) -> Branch:
        async def run(ctx: durable.WorkflowContext) -> object:
            async def work() -> str:
                if gates is not None and name in gates:
                    await gates[name].wait()
                return counter(name, name.upper())

            return await ctx.step("work", work)

        return run

    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        async def body(group: durable.BranchGroup) -> list[str]:
            order = []
            group.start("a", branch("a"))
            group.start("b", branch("b"))
            while group.pending:
                name, value = await group.next()
                order.append(f"{name}={value}")
                if len(name) < 3:
                    group.start(name + "1", branch(name + "1"))
            return order

        return await ctx.group("g", body)

    return wf


class TestGroup:
    async def test_starts_branches_as_others_finish(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        result = await run_live(driver, chain_workflow(counter))
        assert sorted(result.output) == sorted(  # type: ignore[arg-type]
            ["a=A", "b=B", "a1=A1", "b1=B1", "a11=A11", "b11=B11"]
        )
        assert all(n == 1 for n in counter.calls.values())

    async def test_finishing_order_is_recorded_and_replayed(
        self, driver: durable.Driver
    ) -> None:
        # b finishes first only in the first run; the replay must keep that order
        gates = {"a": anyio.Event()}
        counter = Counter()
        wf = chain_workflow(counter, gates)

        async def release_a_late() -> None:
            await anyio.sleep(0.05)
            gates["a"].set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(release_a_late)
            first = await run_live(driver, wf)
        assert first.output[0] == "b=B"  # type: ignore[index]
        replayed = await run_live(driver, chain_workflow(Counter()))
        assert replayed.output == first.output

    async def test_history_lists_branches_then_the_finishing_order(
        self, driver: durable.Driver
    ) -> None:
        result = await run_live(driver, chain_workflow(Counter()))
        handle = durable.run_workflow(
            "w", chain_workflow(Counter()), None, driver=driver
        )
        (group,) = await handle.get_history()
        assert group.kind == "group"
        assert group.output == result.output
        branches = [n.name for n in group.children if n.kind == "branch"]
        taken = [n.name for n in group.children if n.kind == "next"]
        assert branches[:2] == ["a", "b"]
        assert taken == [item.split("=")[0] for item in result.output]  # type: ignore[union-attr]

    async def test_a_failed_branch_raises_from_next(
        self, driver: durable.Driver
    ) -> None:
        async def bad(ctx: durable.WorkflowContext) -> object:
            raise ValueError("boom")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def body(group: durable.BranchGroup) -> str:
                group.start("bad", bad)
                try:
                    await group.next()
                except ValueError as exc:
                    return f"caught {exc}"
                return "not raised"

            return await ctx.group("g", body)

        assert (await run_live(driver, wf)).output == "caught boom"

    async def test_next_with_nothing_started_is_a_clear_error(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def body(group: durable.BranchGroup) -> object:
                return await group.next()

            return await ctx.group("g", body)

        with pytest.raises(durable.WorkflowFailedError, match="no branch left"):
            await run_live(driver, wf)

    async def test_crash_at_every_write_resumes_without_rerunning_finished_work(
        self,
    ) -> None:
        counter = Counter()
        async with durable.MemoryDriver() as clean:
            counting = FaultyDriver(clean)
            expected = (await run_live(counting, chain_workflow(counter))).output
        writes = counting.writes
        assert writes >= 6
        for k in range(1, writes + 1):
            counter.calls.clear()
            async with durable.MemoryDriver() as store:
                await expect_crash(
                    run_live(FaultyDriver(store, fail_at=k), chain_workflow(counter)),
                    BaseException,
                )
                result = await run_live(store, chain_workflow(counter))
                assert sorted(result.output) == sorted(expected), k  # type: ignore[arg-type]
                # a step runs again only if the crash hit before its result was stored
                assert all(n <= 2 for n in counter.calls.values()), k

    async def test_crash_inside_a_branch_reruns_that_branch_only(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        crash = [True]

        async def ok(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("s", lambda: counter("ok", 1))

        async def dies(ctx: durable.WorkflowContext) -> object:
            def work() -> int:
                counter("dies")
                if crash[0]:
                    raise Crash
                return 2

            return await ctx.step("s", work)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def body(group: durable.BranchGroup) -> int:
                group.start("ok", ok)
                total = (await group.next())[1]
                group.start("dies", dies)
                return total + (await group.next())[1]  # type: ignore[operator]

            return await ctx.group("g", body)

        await expect_crash(run_live(driver, wf))
        crash[0] = False
        assert (await run_live(driver, wf)).output == 3
        assert counter["ok"] == 1
        assert counter["dies"] == 2

    async def test_yield_mode_waits_for_the_other_branches_then_sleeps(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        async def sleeper(ctx: durable.WorkflowContext) -> object:
            await ctx.sleep("nap", 3600)
            return counter("sleeper", "S")

        async def quick(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("q", lambda: counter("quick", "Q"))

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def body(group: durable.BranchGroup) -> list[object]:
                group.start("sleeper", sleeper)
                group.start("quick", quick)
                return [await group.next(), await group.next()]

            return await ctx.group("g", body)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        first = await handle._run_once()
        assert first.state == durable.WorkflowState.SLEEPING
        assert counter["quick"] == 1
        assert counter["sleeper"] == 0
        clock.advance(3600)
        result = await run_yield(driver, wf, clock)
        assert result.output == [["quick", "Q"], ["sleeper", "S"]]
        assert counter["quick"] == 1


class TestLiveWorkflowsUnderAWorker:
    async def test_waits_stay_in_memory_until_every_task_waits(
        self, driver: durable.Driver
    ) -> None:
        loads = [0]
        started = anyio.Event()
        release = anyio.Event()

        @durable.workflow(name="coordinator", live=True)
        async def coordinator(ctx: durable.WorkflowContext, _: object) -> object:
            loads[0] += 1  # once per run of the function: each replay counts

            async def short_sleeper(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("nap", 0.3)  # long enough to be stored in yield mode
                return "slept"

            async def worker(ctx: durable.WorkflowContext) -> object:
                async def work() -> str:
                    started.set()
                    await release.wait()
                    return "worked"

                return await ctx.step("work", work)

            async def idle(ctx: durable.WorkflowContext) -> object:
                return (await ctx.queue.next("go"))[0]

            async def body(group: durable.BranchGroup) -> list[object]:
                group.start("sleeper", short_sleeper)
                group.start("worker", worker)
                group.start("idle", idle)
                return [await group.next() for _ in range(3)]

            return await ctx.group("g", body)

        async with durable.Worker(driver, [coordinator]) as worker:
            handle = await worker.start("coordinator", "c", None)
            with anyio.fail_after(5):
                await started.wait()
                await anyio.sleep(0.5)  # the sleeper woke in memory meanwhile
                release.set()
                # now only "idle" waits, for a message: the run leaves memory
                while worker.running:  # noqa: ASYNC110 - the worker has no event
                    await anyio.sleep(0.01)
            assert loads == [1]
            assert (await handle.get_state()) == durable.WorkflowState.SLEEPING
            await handle.message("go", "went")
            result = await handle.result()
        assert result.output == [
            ["sleeper", "slept"],
            ["worker", "worked"],
            ["idle", "went"],
        ]
        assert loads == [2]  # one replay, for the one idle spell
