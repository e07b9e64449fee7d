"""ctx.join and ctx.race: concurrency, branch scopes, failures, crash and replay, yield mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

import durable
from durable._history import Entry, History
from durable._keys import encode_int
from durable.testing import FaultyDriver

from ._support import T0, Counter, Crash, JumpClock, ManualClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Workflow = Callable[[durable.WorkflowContext, object], Awaitable[object]]
    Branch = Callable[[durable.WorkflowContext], Awaitable[object]]

HOUR = 3600.0
LIMIT = 5.0  # seconds a test may wait for something that should happen at once


class Tree:
    """A loaded history, addressed by paths of names."""

    def __init__(self, history: History) -> None:
        self.history = history

    def location(self, *path: str) -> bytes:
        return b"".join(encode_int(self.history.name_index[name]) for name in path)

    def entry(self, *path: str) -> Entry:
        return self.history.entries[self.location(*path)]

    def children(self, *path: str) -> dict[str, Entry]:
        """The entries directly inside *path*, by name, in their scope's order."""
        location = self.location(*path)
        found = [
            entry
            for entry in self.history.entries.values()
            if entry.location == location + encode_int(entry.name_index)
        ]
        return {
            self.history.names[entry.name_index]: entry
            for entry in sorted(found, key=lambda entry: entry.seq)
        }

    def status(self, *path: str) -> str:
        return self.entry(*path).status


async def tree(driver: durable.Driver, workflow_id: str = "w") -> Tree:
    return Tree(await History.load(driver, workflow_id))


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(inner, kind) for inner in exc.exceptions)
    return False


async def expect_crash(
    awaitable: Awaitable[object], kind: type[BaseException] = Crash
) -> None:
    """Await *awaitable* and check it died of *kind* (bare or inside a group)."""
    try:
        await awaitable
    except BaseException as exc:
        if not _contains(exc, kind):
            raise
    else:
        pytest.fail(f"expected a {kind.__name__}")


async def run_live(
    driver: durable.Driver,
    wf: Workflow,
    *,
    clock: durable.Clock | None = None,
    workflow_id: str = "w",
) -> durable.WorkflowResult:
    with anyio.fail_after(LIMIT):
        return await durable.run_workflow(
            workflow_id, wf, None, driver=driver, clock=clock
        ).result()


async def run_yield(
    driver: durable.Driver, wf: Workflow, clock: durable.Clock
) -> durable.WorkflowResult:
    with anyio.fail_after(LIMIT):
        return await durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        ).result()


async def wait_for_state(
    handle: durable.WorkflowHandle, state: durable.WorkflowState
) -> None:
    """Poll the store until the workflow records *state* (fails after LIMIT)."""
    with anyio.fail_after(LIMIT):
        while await handle.get_state() != state:  # noqa: ASYNC110 - a stored state
            await anyio.sleep(0.001)


def step_of(value: object, counter: Counter, name: str) -> Branch:
    """A branch that runs one step *name* returning *value*."""

    async def branch(ctx: durable.WorkflowContext) -> object:
        return await ctx.step(name, lambda: counter(name, value))

    return branch


class TestJoin:
    async def test_branches_run_concurrently(self, driver: durable.Driver) -> None:
        b_started = anyio.Event()

        async def wait_for_b() -> str:
            await b_started.wait()  # only returns if b runs while a waits
            return "A"

        async def start_b() -> str:
            b_started.set()
            return "B"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def a(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("a", wait_for_b)

            async def b(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("b", start_b)

            return await ctx.join("both", {"a": a, "b": b})

        result = await run_live(driver, wf)
        assert result.output == {"a": "A", "b": "B"}

    async def test_results_come_back_in_branch_order_not_finishing_order(
        self, driver: durable.Driver
    ) -> None:
        finished: list[str] = []
        fast_done = anyio.Event()

        async def slow() -> str:
            await fast_done.wait()
            finished.append("slow")
            return "S"

        def fast() -> str:
            finished.append("fast")
            fast_done.set()
            return "F"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def slow_branch(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", slow)

            async def fast_branch(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("f", fast)

            result = await ctx.join("j", {"slow": slow_branch, "fast": fast_branch})
            return list(result.items())

        result = await run_live(driver, wf)
        assert finished == ["fast", "slow"]
        assert result.output == [["slow", "S"], ["fast", "F"]]

    async def test_value_is_the_decoded_form(self, driver: durable.Driver) -> None:
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def pair(ctx: durable.WorkflowContext) -> object:
                return (1, 2)  # returned by the branch itself, not by a step

            result = await ctx.join("j", {"p": pair})
            seen.append(result)
            return result

        result = await run_live(driver, wf)
        assert seen == [{"p": [1, 2]}]
        assert result.output == {"p": [1, 2]}

    async def test_same_step_name_in_two_branches_does_not_collide(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        def branch(value: str) -> Branch:
            async def run(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("fetch", lambda: counter(value, value))

            return run

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.join("j", {"a": branch("A"), "b": branch("B")})
            await ctx.sleep("nap", HOUR)
            return result

        assert (await run_yield(driver, wf, clock)).state == "sleeping"
        stored = await tree(driver)
        a_fetch = stored.entry("j", "a", "fetch")
        b_fetch = stored.entry("j", "b", "fetch")
        assert a_fetch.location != b_fetch.location
        assert (a_fetch.status, b_fetch.status) == ("completed", "completed")
        clock.advance(HOUR)
        result = await run_yield(driver, wf, clock)
        assert result.output == {"a": "A", "b": "B"}
        assert counter.calls == {"A": 1, "B": 1}

    async def test_branch_entries_are_recorded_in_branch_order(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.join(
                "j",
                {
                    "x": step_of(1, counter, "sx"),
                    "y": step_of(2, counter, "sy"),
                    "z": step_of(3, counter, "sz"),
                },
            )

        assert (await run_live(driver, wf)).output == {"x": 1, "y": 2, "z": 3}
        stored = await tree(driver)
        branches = stored.children("j")
        assert list(branches) == ["x", "y", "z"]
        assert [entry.kind for entry in branches.values()] == ["branch"] * 3
        assert all(entry.status == "completed" for entry in branches.values())
        assert stored.entry("j").kind == "join"
        assert stored.status("j") == "completed"

    async def test_failing_branch_does_not_stop_the_others(
        self, driver: durable.Driver
    ) -> None:
        a_failed = anyio.Event()

        def fail() -> object:
            a_failed.set()
            raise durable.CriticalError("card declined")

        async def after_a_failed() -> str:
            await a_failed.wait()
            await anyio.lowlevel.checkpoint()
            return "B"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def a(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("charge", fail)

            async def b(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("ship", after_a_failed)

            async def c(ctx: durable.WorkflowContext) -> object:
                await ctx.step("log", lambda: "L")
                raise ValueError("bad branch code")

            try:
                await ctx.join("j", {"a": a, "b": b, "c": c})
            except durable.JoinError as exc:
                return {
                    branch: [type(error).__name__, str(error)]
                    for branch, error in exc.errors.items()
                }
            return "no error"

        result = await run_live(driver, wf)
        assert result.output == {
            "a": ["CriticalError", "card declined"],
            "c": ["ValueError", "bad branch code"],
        }
        stored = await tree(driver)
        assert stored.status("j", "b", "ship") == "completed"
        assert stored.status("j", "b") == "completed"
        assert stored.status("j", "a", "charge") == "failed"
        assert stored.status("j", "a") == "failed"
        assert stored.status("j", "c") == "failed"
        assert stored.status("j") == "failed"

    async def test_join_error_fails_the_workflow_when_not_caught(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def bad(ctx: durable.WorkflowContext) -> object:
                raise durable.CriticalError("nope")

            async def good(ctx: durable.WorkflowContext) -> object:
                return "ok"

            return await ctx.join("j", {"bad": bad, "good": good})

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "JoinError"
        assert "bad" in failed.value.error.message

    async def test_crash_mid_join_resumes_unfinished_branches_only(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        crash = [True]
        a_done = anyio.Event()

        async def b1() -> str:
            await a_done.wait()  # a's branch is finished (not yet flushed)
            return counter("b1", "B1")

        def b2() -> str:
            counter("b2")
            if crash[0]:
                raise Crash
            return "B2"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def a(ctx: durable.WorkflowContext) -> object:
                counter("branch a")
                value = await ctx.step("a1", lambda: counter("a1", "A1"))
                a_done.set()
                return value

            async def b(ctx: durable.WorkflowContext) -> object:
                counter("branch b")
                first = await ctx.step("b1", b1)
                return [first, await ctx.step("b2", b2)]

            return await ctx.join("j", {"a": a, "b": b})

        await expect_crash(run_live(driver, wf))
        stored = await tree(driver)
        assert stored.status("j", "a") == "completed"
        assert stored.status("j", "b", "b1") == "completed"
        assert "b2" not in stored.children("j", "b")
        crash[0] = False
        result = await run_live(driver, wf)
        assert result.output == {"a": "A1", "b": ["B1", "B2"]}
        assert counter.calls == {
            "branch a": 1,  # finished: its recorded value came back
            "a1": 1,
            "branch b": 2,  # unfinished: it resumed, replaying b1
            "b1": 1,
            "b2": 2,
        }
        assert (await tree(driver)).status("j") == "completed"

    async def test_crash_at_every_write_of_a_join_converges(
        self, anyio_backend: str
    ) -> None:
        executions = Counter()

        def make(step: str, value: object) -> Callable[[], object]:
            async def run() -> object:
                await anyio.lowlevel.checkpoint()
                return executions(step, value)

            return run

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def a(ctx: durable.WorkflowContext) -> object:
                one = await ctx.step("a1", make("a1", 1))
                return [one, await ctx.step("a2", make("a2", 2))]

            async def b(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("b-nap", 0.001)
                return await ctx.step("b1", make("b1", 3))

            before = await ctx.step("before", make("before", 0))
            joined = await ctx.join("j", {"a": a, "b": b})
            after = await ctx.step("after", make("after", 4))
            return [before, joined, after]

        async with durable.MemoryDriver() as clean:
            counting = FaultyDriver(clean)
            expected = (await run_live(counting, wf)).output
        writes = counting.writes
        assert writes >= 5
        for k in range(1, writes + 1):
            executions.calls.clear()
            async with durable.MemoryDriver() as store:
                await expect_crash(
                    run_live(FaultyDriver(store, fail_at=k), wf),
                    BaseException,
                )
                result = await run_live(store, wf)
                assert result.output == expected, k
                assert all(n <= 2 for n in executions.calls.values()), k
                stored = await tree(store)
                assert stored.status("j") == "completed", k

    async def test_yield_mode_join_sleeps_until_the_earliest_branch_deadline(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def later(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("wait", 2 * HOUR)
                return await ctx.step("late", lambda: counter("late", "L"))

            async def sooner(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("wait", HOUR)
                return "S"

            async def work(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("work", lambda: counter("work", "W"))

            return await ctx.join("j", {"later": later, "sooner": sooner, "work": work})

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        assert first.sleep_until == T0 + HOUR
        assert await driver.get_alarm("w") == T0 + HOUR
        stored = await tree(driver)
        assert stored.status("j", "work", "work") == "completed"
        assert counter.calls == {"work": 1}
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert second.state == durable.WorkflowState.SLEEPING
        assert second.sleep_until == T0 + 2 * HOUR
        assert (await tree(driver)).status("j", "sooner") == "completed"
        clock.advance(HOUR)
        third = await run_yield(driver, wf, clock)
        assert third.state == durable.WorkflowState.COMPLETED
        assert third.output == {"later": "L", "sooner": "S", "work": "W"}
        assert counter.calls == {"work": 1, "late": 1}

    async def test_live_mode_join_of_waiting_branches_records_sleeping(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def one(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("nap", HOUR)
                return 1

            async def two(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("nap", 2 * HOUR)
                return 2

            return await ctx.join("j", {"one": one, "two": two})

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            # every branch waits: the run records that it sleeps, with an alarm at
            # the earliest deadline (fails after LIMIT if it never does)
            await wait_for_state(handle, durable.WorkflowState.SLEEPING)
            assert await driver.get_alarm("w") == T0 + HOUR
            clock.advance(2 * HOUR)
            with anyio.fail_after(LIMIT):
                result = await handle.result()
        assert result.output == {"one": 1, "two": 2}

    async def test_live_mode_join_with_a_long_sleep_completes(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def sleeper(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("nap", HOUR)
                return clock.now() - T0

            return await ctx.join(
                "j", {"sleeper": sleeper, "work": step_of("W", counter, "work")}
            )

        result = await run_live(driver, wf, clock=clock)
        assert result.output == {"sleeper": HOUR, "work": "W"}

    async def test_many_concurrent_branches_all_replay(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            branches = {f"b{i}": step_of(i, counter, f"step-{i}") for i in range(60)}
            result = await ctx.join("many", branches)
            await ctx.sleep("nap", HOUR)
            return sum(result.values())  # type: ignore[arg-type]

        assert (await run_yield(driver, wf, clock)).state == "sleeping"
        clock.advance(HOUR)
        result = await run_yield(driver, wf, clock)
        assert result.output == sum(range(60))
        assert all(n == 1 for n in counter.calls.values())
        assert len(counter.calls) == 60

    async def test_recover_reruns_the_failed_branch_only(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        broken = [True]

        def charge() -> object:
            counter("charge")
            if broken[0]:
                raise durable.CriticalError("card declined")
            return "charged"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def pay(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("charge", charge)

            return await ctx.join(
                "j", {"pay": pay, "pack": step_of("packed", counter, "pack")}
            )

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        broken[0] = False
        await handle.recover()
        result = await run_live(driver, wf)
        assert result.output == {"pay": "charged", "pack": "packed"}
        assert counter.calls == {"charge": 2, "pack": 1}
        stored = await tree(driver)
        assert stored.status("j") == "completed"
        assert stored.status("j", "pay") == "completed"

    async def test_eviction_keeps_every_waiting_branch_s_wake_up(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def shipment(ctx: durable.WorkflowContext) -> object:
                return await ctx.queue.next("wait", names=["shipped"])

            async def reminder(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("remind", HOUR)
                return "reminded"

            return await ctx.join("j", {"shipment": shipment, "reminder": reminder})

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await wait_for_state(handle, durable.WorkflowState.SLEEPING)
            handle.evict()
            with pytest.raises(durable.EvictedError), anyio.fail_after(LIMIT):
                await handle.result()
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert await driver.get_alarm("w") == T0 + HOUR  # the reminder's deadline
        meta = (await History.load(driver, "w")).meta
        assert meta is not None
        assert meta.waiting_for == ["shipped"]
        await handle.message("shipped", "T-1")
        clock.advance(HOUR)
        result = await run_live(driver, wf, clock=clock)
        assert result.output == {"shipment": ["T-1"], "reminder": "reminded"}

    async def test_eviction_while_a_branch_runs_leaves_the_run_due(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        counter = Counter()
        entered = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def long_step() -> str:
                counter("long")
                entered.set()
                while not ctx.is_evicted():  # noqa: ASYNC110 - eviction has no event
                    await anyio.sleep(0.001)
                return "L"

            async def worker(ctx: durable.WorkflowContext) -> object:
                long = await ctx.step("long", long_step)
                return [long, await ctx.step("next", lambda: counter("next", "N"))]

            async def sleeper(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("nap", HOUR)
                return "S"

            return await ctx.join("j", {"worker": worker, "sleeper": sleeper})

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            with anyio.fail_after(LIMIT):
                await entered.wait()
            handle.evict()
            with pytest.raises(durable.EvictedError), anyio.fail_after(LIMIT):
                await handle.result()
        assert await handle.get_state() == durable.WorkflowState.PENDING
        assert await driver.get_alarm("w") == T0  # due: work is left to do now
        clock.advance(HOUR)
        result = await run_live(driver, wf, clock=clock)
        assert result.output == {"worker": ["L", "N"], "sleeper": "S"}
        assert counter.calls == {"long": 1, "next": 1}


class TestBranchesMisc:
    @pytest.mark.parametrize("kind", ["join", "race"])
    async def test_bad_branches_are_refused_at_call_time(
        self, driver: durable.Driver, kind: str
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            method = getattr(ctx, kind)
            with pytest.raises(ValueError, match="non-empty"):
                method("x", {})
            with pytest.raises(TypeError, match="branch"):
                method("x", {"a": "not a function"})
            return await ctx.step("after", lambda: "fine")

        assert (await run_live(driver, wf)).output == "fine"

    async def test_nested_join_and_race_replay(self, driver: durable.Driver) -> None:
        counter = Counter()
        clock = JumpClock()

        def region(name: str) -> Branch:
            async def run(ctx: durable.WorkflowContext) -> object:
                async def slow(ctx: durable.WorkflowContext) -> object:
                    return await ctx.step("fetch", anyio.sleep_forever, timeout=None)

                winner = await ctx.race(
                    "fastest",
                    {"fast": step_of(name, counter, f"fetch-{name}"), "slow": slow},
                )
                inner = await ctx.join(
                    "both",
                    {
                        "x": step_of(1, counter, f"x-{name}"),
                        "y": step_of(2, counter, f"y-{name}"),
                    },
                )
                return [list(winner), inner]

            return run

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.join("regions", {"eu": region("eu"), "us": region("us")})
            await ctx.sleep("nap", HOUR)
            return result

        assert (await run_yield(driver, wf, clock)).state == "sleeping"
        clock.advance(HOUR)
        result = await run_yield(driver, wf, clock)
        assert result.output == {
            "eu": [["fast", "eu"], {"x": 1, "y": 2}],
            "us": [["fast", "us"], {"x": 1, "y": 2}],
        }
        assert all(n == 1 for n in counter.calls.values())
        assert len(counter.calls) == 6
        stored = await tree(driver)
        assert stored.status("regions", "eu", "fastest", "slow") == "cancelled"

    async def test_missing_await_in_a_branch_raises_entry_in_progress(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def careless(ctx: durable.WorkflowContext) -> object:
                ctx.step("forgotten", lambda: 1)  # type: ignore[unused-awaitable]
                return await ctx.step("next", lambda: 2)

            return await ctx.join("j", {"careless": careless})

        with pytest.raises(durable.EntryInProgressError):
            await run_live(driver, wf)
        assert (
            await durable.run_workflow("w", wf, None, driver=driver).get_state()
            != durable.WorkflowState.FAILED
        )

    async def test_branch_using_the_outer_ctx_raises_entry_in_progress(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            outer = ctx

            async def confused(ctx: durable.WorkflowContext) -> object:
                return await outer.step("s", lambda: 1)

            return await ctx.join("j", {"confused": confused})

        with pytest.raises(durable.EntryInProgressError):
            await run_live(driver, wf)


class TestJoinDivergence:
    @staticmethod
    def _workflow(branches: list[str]) -> Workflow:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def branch(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", lambda: "v")

            result = await ctx.join("j", dict.fromkeys(branches, branch))
            await ctx.sleep("nap", HOUR)
            return result

        return wf

    @pytest.mark.parametrize("changed", [["a", "renamed"], ["a"], ["b", "a"]], ids=str)
    async def test_changed_branches_raise_history_diverged(
        self, driver: durable.Driver, changed: list[str]
    ) -> None:
        clock = JumpClock()
        await run_yield(driver, self._workflow(["a", "b"]), clock)
        before = await History.load(driver, "w")
        clock.advance(HOUR)
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, self._workflow(changed), clock)
        after = await History.load(driver, "w")
        assert after.meta == before.meta
        # the original code still resumes
        result = await run_yield(driver, self._workflow(["a", "b"]), clock)
        assert result.output == {"a": "v", "b": "v"}

    async def test_renamed_step_inside_an_unfinished_branch_raises_history_diverged(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def workflow(step: str) -> Workflow:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                async def branch(ctx: durable.WorkflowContext) -> object:
                    value = await ctx.step(step, lambda: "v")
                    await ctx.sleep("nap", HOUR)  # the branch yields unfinished
                    return value

                return await ctx.join("j", {"a": branch})

            return wf

        assert (await run_yield(driver, workflow("s"), clock)).state == "sleeping"
        clock.advance(HOUR)
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, workflow("t"), clock)
        assert (await run_yield(driver, workflow("s"), clock)).output == {"a": "v"}

    @pytest.mark.parametrize("kind", ["join", "race"])
    @pytest.mark.parametrize(
        ("name", "branches"),
        [("renamed", ["a", "b"]), ("j", ["a"]), ("j", ["b", "a"])],
        ids=["renamed", "removed-branch", "reordered-branches"],
    )
    async def test_changing_an_unfinished_join_or_race_raises_history_diverged(
        self, driver: durable.Driver, kind: str, name: str, branches: list[str]
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        def workflow(name: str, branches: list[str]) -> Workflow:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                async def branch(ctx: durable.WorkflowContext) -> object:
                    await ctx.step("s", lambda: counter("s"))
                    await ctx.sleep("nap", HOUR)  # every branch yields unfinished
                    return "v"

                method = getattr(ctx, kind)
                return await method(name, dict.fromkeys(branches, branch))

            return wf

        first = await run_yield(driver, workflow("j", ["a", "b"]), clock)
        assert first.state == durable.WorkflowState.SLEEPING
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, workflow(name, branches), clock)
        assert counter.calls == {"s": 2}  # the recorded steps did not run again
        clock.advance(HOUR)
        result = await run_yield(driver, workflow("j", ["a", "b"]), clock)
        assert result.state == durable.WorkflowState.COMPLETED
        assert counter.calls == {"s": 2}

    async def test_finished_branch_is_not_run_again_so_its_code_may_change(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def workflow(step: str) -> Workflow:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                async def branch(ctx: durable.WorkflowContext) -> object:
                    return await ctx.step(step, lambda: step)

                result = await ctx.join("j", {"a": branch})
                await ctx.sleep("nap", HOUR)
                return result

            return wf

        await run_yield(driver, workflow("s"), clock)
        clock.advance(HOUR)
        assert (await run_yield(driver, workflow("t"), clock)).output == {"a": "s"}


class TestRace:
    async def test_first_success_wins_and_unpacks(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def slow(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("slow", anyio.sleep_forever, timeout=None)

            async def fast(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("fast", lambda: "F")

            result = await ctx.race("r", {"slow": slow, "fast": fast})
            assert isinstance(result, durable.RaceResult)
            winner, value = result
            assert (winner, value) == (result.winner, result.value)
            return [winner, value]

        result = await run_live(driver, wf)
        assert result.output == ["fast", "F"]

    async def test_losers_are_cancelled_and_recorded_as_cancelled(
        self, driver: durable.Driver
    ) -> None:
        cancelled: list[str] = []

        async def forever() -> object:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append("slow")
                raise
            return None

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def slow(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("slow", forever, timeout=None)

            async def fast(ctx: durable.WorkflowContext) -> object:
                await anyio.lowlevel.checkpoint()  # let slow start its step
                return await ctx.step("fast", lambda: "F")

            return list(await ctx.race("r", {"slow": slow, "fast": fast}))

        result = await run_live(driver, wf)
        assert result.output == ["fast", "F"]
        assert cancelled == ["slow"]
        stored = await tree(driver)
        assert stored.entry("r").kind == "race"
        assert stored.status("r") == "completed"
        assert stored.status("r", "fast") == "completed"
        assert stored.status("r", "slow") == "cancelled"
        assert stored.children("r", "slow") == {}  # its step's result: never recorded

    async def test_a_failing_branch_does_not_win(self, driver: durable.Driver) -> None:
        failed = anyio.Event()

        def fail() -> object:
            failed.set()
            raise durable.CriticalError("nope")

        async def after_failure() -> str:
            await failed.wait()
            return "G"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def bad(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("bad", fail)

            async def good(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("good", after_failure)

            return list(await ctx.race("r", {"bad": bad, "good": good}))

        result = await run_live(driver, wf)
        assert result.output == ["good", "G"]
        stored = await tree(driver)
        assert stored.status("r", "bad") == "failed"
        assert stored.status("r", "good") == "completed"

    async def test_race_error_when_every_branch_fails(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def critical(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", _raise(durable.CriticalError("c")))

            async def plain(ctx: durable.WorkflowContext) -> object:
                raise ValueError("v")

            try:
                await ctx.race("r", {"critical": critical, "plain": plain})
            except durable.RaceError as exc:
                return {b: type(e).__name__ for b, e in exc.errors.items()}
            return "no error"

        result = await run_live(driver, wf)
        assert result.output == {"critical": "CriticalError", "plain": "ValueError"}
        assert (await tree(driver)).status("r") == "failed"

    async def test_race_error_fails_the_workflow_when_not_caught(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def bad(ctx: durable.WorkflowContext) -> object:
                raise ValueError("v")

            return await ctx.race("r", {"x": bad, "y": bad})

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "RaceError"

    async def test_recorded_winner_is_returned_even_if_timing_now_differs(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        def workflow(fast: str) -> Workflow:
            def branch(name: str) -> Branch:
                async def run(ctx: durable.WorkflowContext) -> object:
                    counter(f"branch {name}")
                    if name == fast:
                        return await ctx.step("s", lambda: counter(name, name.upper()))
                    return await ctx.step("s", anyio.sleep_forever, timeout=None)

                return run

            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                result = await ctx.race("r", {"a": branch("a"), "b": branch("b")})
                await ctx.sleep("nap", HOUR)
                return list(result)

            return wf

        assert (await run_yield(driver, workflow("a"), clock)).state == "sleeping"
        assert counter.calls == {"branch a": 1, "branch b": 1, "a": 1}
        clock.advance(HOUR)
        result = await run_yield(driver, workflow("b"), clock)
        assert result.output == ["a", "A"]
        assert counter.calls == {"branch a": 1, "branch b": 1, "a": 1}  # none ran

    async def test_crash_mid_race_resumes_and_records_one_winner(
        self, driver: durable.Driver
    ) -> None:
        crash = [True]
        counter = Counter()

        async def never() -> object:
            await anyio.sleep_forever()

        def work() -> object:
            counter("work")
            if crash[0]:
                raise Crash
            return "W"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def worker(ctx: durable.WorkflowContext) -> object:
                await ctx.step("prepare", lambda: counter("prepare", "P"))
                return await ctx.step("work", work)

            async def waiter(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("wait", never, timeout=None)

            return list(await ctx.race("r", {"worker": worker, "waiter": waiter}))

        await expect_crash(run_live(driver, wf))
        crash[0] = False
        result = await run_live(driver, wf)
        assert result.output == ["worker", "W"]
        assert counter.calls == {"prepare": 1, "work": 2}
        stored = await tree(driver)
        assert stored.status("r", "worker") == "completed"
        assert stored.status("r", "waiter") == "cancelled"

    async def test_crash_at_every_write_of_a_race_converges(
        self, anyio_backend: str
    ) -> None:
        async def never() -> object:
            await anyio.sleep_forever()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def worker(ctx: durable.WorkflowContext) -> object:
                one = await ctx.step("w1", lambda: 1)
                return [one, await ctx.step("w2", lambda: 2)]

            async def waiter(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("wait", never, timeout=None)

            before = await ctx.step("before", lambda: 0)
            raced = list(await ctx.race("r", {"worker": worker, "waiter": waiter}))
            return [before, raced, await ctx.step("after", lambda: 3)]

        async with durable.MemoryDriver() as clean:
            counting = FaultyDriver(clean)
            expected = (await run_live(counting, wf)).output
        assert expected == [0, ["worker", [1, 2]], 3]
        for k in range(1, counting.writes + 1):
            async with durable.MemoryDriver() as store:
                await expect_crash(
                    run_live(FaultyDriver(store, fail_at=k), wf), BaseException
                )
                result = await run_live(store, wf)
                assert result.output == expected, k
                assert (await tree(store)).status("r", "waiter") == "cancelled", k


class TestRaceLosersGiveBackMessages:
    async def test_a_message_consumed_by_a_losing_branch_goes_back_to_the_queue(
        self, driver: durable.Driver
    ) -> None:
        consumed = anyio.Event()

        async def waiter(ctx: durable.WorkflowContext) -> object:
            [body] = await ctx.queue.next("get", names=["go"])
            await ctx.step("mark", consumed.set)
            await ctx.step("hold", anyio.sleep_forever)
            return body

        async def quick(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("quick", consumed.wait)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            winner, _value = await ctx.race("r", {"waiter": waiter, "quick": quick})
            again = await ctx.queue.next("again", names=["go"], timeout=0)
            return [winner, again]

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.message("go", 7)
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.output == ["quick", [7]]

    async def test_a_returned_message_is_consumed_once_after_a_crash_and_replay(
        self, driver: durable.Driver
    ) -> None:
        consumed = anyio.Event()
        seen: list[object] = []

        async def waiter(ctx: durable.WorkflowContext) -> object:
            [body] = await ctx.queue.next("get", names=["go"])
            await ctx.step("mark", consumed.set)
            await ctx.step("hold", anyio.sleep_forever)
            return body

        async def quick(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("quick", consumed.wait)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.race("r", {"waiter": waiter, "quick": quick})
            again = await ctx.queue.next("again", names=["go"])
            await ctx.step("see", lambda: seen.append(again))
            await ctx.sleep("park", 3600)
            return again

        handle = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        await handle.message("go", 7)
        with anyio.fail_after(5):
            first = await handle.result()
            assert first.state == durable.WorkflowState.SLEEPING
            second = await handle.result()  # replays: the race and both nexts
        assert second.state == durable.WorkflowState.SLEEPING
        assert seen == [[7]]
        history = await History.load(driver, "w")
        assert history.messages == []  # consumed once, by the second next


class TestRaceAgainstATimeout:
    """The classic race: work against ``ctx.sleep`` as a timeout."""

    async def test_live_timeout_wins_when_the_work_is_slow(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        cancelled: list[str] = []
        never_set = anyio.Event()

        async def slow_work() -> object:
            try:
                await never_set.wait()
            except anyio.get_cancelled_exc_class():
                cancelled.append("work")
                raise
            return "W"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def work(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("work", slow_work, timeout=None)

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return "timed out"

            return list(await ctx.race("r", {"work": work, "timeout": timeout}))

        result = await run_live(driver, wf, clock=clock)
        assert result.output == ["timeout", "timed out"]
        assert cancelled == ["work"]
        stored = await tree(driver)
        assert stored.status("r", "work") == "cancelled"
        assert stored.status("r", "timeout", "timeout") == "completed"

    async def test_live_timeout_with_a_short_sleep(
        self, driver: durable.Driver
    ) -> None:
        never_set = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def work(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("work", never_set.wait, timeout=None)

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", 0.01)  # in memory, real time
                return None

            return list(await ctx.race("r", {"work": work, "timeout": timeout}))

        assert (await run_live(driver, wf)).output == ["timeout", None]

    async def test_live_work_wins_when_fast(self, driver: durable.Driver) -> None:
        clock = ManualClock()  # never advanced: the timeout cannot fire

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def work(ctx: durable.WorkflowContext) -> object:
                await anyio.lowlevel.checkpoint()
                return await ctx.step("work", lambda: "W")

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return None

            return list(await ctx.race("r", {"work": work, "timeout": timeout}))

        result = await run_live(driver, wf, clock=clock)
        assert result.output == ["work", "W"]
        stored = await tree(driver)
        assert stored.status("r", "timeout") == "cancelled"
        assert stored.status("r", "timeout", "timeout") != "completed"
        assert await driver.get_alarm("w") is None

    async def test_yield_work_wins_when_it_completes_in_the_first_pass(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def work(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("work", lambda: "W")

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return None

            return list(await ctx.race("r", {"work": work, "timeout": timeout}))

        result = await run_yield(driver, wf, clock)
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == ["work", "W"]
        assert clock.sleeps == []

    async def test_yield_timeout_wins_after_the_deadline(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def work(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("slow", 2 * HOUR)  # slower than the timeout
                return await ctx.step("work", lambda: counter("work", "W"))

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return "timed out"

            result = await ctx.race("r", {"work": work, "timeout": timeout})
            await ctx.step("after", lambda: counter("after"))
            return list(result)

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        assert first.sleep_until == T0 + HOUR
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert second.state == durable.WorkflowState.COMPLETED
        assert second.output == ["timeout", "timed out"]
        assert counter.calls == {"after": 1}
        stored = await tree(driver)
        assert stored.status("r", "timeout") == "completed"
        assert stored.status("r", "work") == "cancelled"  # it waited: it lost
        clock.advance(2 * HOUR)  # the work's deadline passes too: nothing changes
        third = await run_yield(driver, wf, clock)
        assert third.output == ["timeout", "timed out"]
        assert counter.calls == {"after": 1}

    async def test_live_message_wins_against_a_timeout(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def shipment(ctx: durable.WorkflowContext) -> object:
                return await ctx.queue.next("wait", names=["shipped"])

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return None

            return list(await ctx.race("r", {"shipment": shipment, "timeout": timeout}))

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await wait_for_state(handle, durable.WorkflowState.SLEEPING)
            assert await driver.get_alarm("w") == T0 + HOUR
            await handle.message("shipped", "TRACK-1")
            with anyio.fail_after(LIMIT):
                result = await handle.result()
        assert result.output == ["shipment", ["TRACK-1"]]
        stored = await tree(driver)
        assert stored.status("r", "timeout") == "cancelled"

    async def test_eviction_of_a_race_keeps_the_timeout(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def shipment(ctx: durable.WorkflowContext) -> object:
                return await ctx.queue.next("wait", names=["shipped"])

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return "timed out"

            return list(await ctx.race("r", {"shipment": shipment, "timeout": timeout}))

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await wait_for_state(handle, durable.WorkflowState.SLEEPING)
            handle.evict()
            with pytest.raises(durable.EvictedError), anyio.fail_after(LIMIT):
                await handle.result()
        assert await driver.get_alarm("w") == T0 + HOUR
        clock.advance(HOUR)
        result = await run_live(driver, wf, clock=clock)
        assert result.output == ["timeout", "timed out"]

    async def test_yield_work_waiting_for_a_message_against_a_timeout(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def shipment(ctx: durable.WorkflowContext) -> object:
                return await ctx.queue.next("wait", names=["shipped"])

            async def timeout(ctx: durable.WorkflowContext) -> object:
                await ctx.sleep("timeout", HOUR)
                return None

            return list(await ctx.race("r", {"shipment": shipment, "timeout": timeout}))

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        first = await handle.result()
        assert first.state == durable.WorkflowState.SLEEPING
        assert first.sleep_until == T0 + HOUR
        assert first.waiting_for == ("shipped",)
        await handle.message("shipped", "TRACK-1")
        with anyio.fail_after(LIMIT):
            second = await handle.result()
        assert second.output == ["shipment", ["TRACK-1"]]


def _raise(exc: Exception) -> Callable[[], object]:
    def fn() -> object:
        raise exc

    return fn
