"""ctx.loop: state across iterations, iteration scopes, checkpoints, bounded history.

Crash-and-resume tests stop a run either with `Crash` raised from the step of a chosen
iteration (the process "dies" inside that iteration) or with a `FaultyDriver` that
crashes at a chosen write, then run the workflow again on the surviving store and
compare with an uninterrupted run: same output, same number of stored keys, and no
recorded step executed twice.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import durable
from durable import Loop
from durable._drivers._base import DELETE_RANGE
from durable._engine._loops import iteration_location
from durable._engine._run import active_run
from durable._history import COMPLETED, History
from durable._keys import encode_int
from durable.testing import FaultyDriver, SimulatedCrash

from ._support import Crash, JumpClock, root_entries

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from durable._drivers import Batch

HOUR = 3600.0
WID = "w"
BACKENDS = ("asyncio", "trio")

# (commit_interval, history_every, history_keep)
OPTION_SETS = [(1, 1, 1), (3, 5, 2), (20, 20, 20), (7, 3, 10)]

# Keys a workflow with one loop of one step per iteration keeps besides its kept
# iterations: workflow meta, input, two interned names, the loop entry (data + meta),
# and its listing-index key.
FIXED_KEYS = 7
KEYS_PER_ITERATION = 2  # one step: entry data + entry meta


async def count_keys(driver: durable.Driver) -> int:
    return len(await driver.list_range(b"", b"\xff"))


def contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether *exc* is, or is a (nested) exception group holding, a *kind*."""
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(contains(inner, kind) for inner in exc.exceptions)
    return False


def expected_total(n: int) -> int:
    return sum(i * i for i in range(n))


def squares_workflow(
    n: int,
    executions: Counter[int],
    *,
    crash: frozenset[int] = frozenset(),
    seen: dict[int, list[object]] | None = None,
    options: tuple[int, int, int] = (20, 20, 20),
) -> Callable[[durable.WorkflowContext, object], Awaitable[object]]:
    """A loop of *n* iterations summing squares, one step ("work") per iteration.

    The step of iteration i counts its executions and raises `Crash` on its first
    execution when i is in *crash*; *seen* collects the state each execution saw.
    """
    crashed: set[int] = set()

    async def body(ctx: durable.WorkflowContext, state: Any) -> object:
        i, total = state

        def work() -> int:
            executions[i] += 1
            if seen is not None:
                seen.setdefault(i, []).append(list(state))
            if i in crash and i not in crashed:
                crashed.add(i)
                raise Crash
            return int(total + i * i)

        total = await ctx.step("work", work)
        if i + 1 >= n:
            return Loop.break_([n, total])
        return Loop.continue_([i + 1, total])

    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        commit, every, keep = options
        return await ctx.loop(
            "loop",
            body,
            state=[0, 0],
            commit_interval=commit,
            history_every=every,
            history_keep=keep,
        )

    return wf


async def run_until_done(
    wf: Callable[[durable.WorkflowContext, object], Awaitable[object]],
    driver: durable.Driver,
) -> tuple[durable.WorkflowResult, int]:
    """Run *wf* again after every `Crash`; return its result and the crash count."""
    crashes = 0
    while True:
        try:
            return await durable.run_workflow(WID, wf, None, driver=driver).result(), (
                crashes
            )
        except BaseException as exc:  # a Crash, maybe in a group (join, race)
            if not contains(exc, Crash):
                raise
            crashes += 1
            assert crashes < 1000


class TestResults:
    async def test_continue_carries_the_state_to_the_next_iteration(
        self, driver: durable.Driver
    ) -> None:
        seen: list[object] = []

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            seen.append(list(state))
            if len(state) == 4:
                return Loop.break_(state)
            return Loop.continue_([*state, len(state)])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state=[])

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [0, 1, 2, 3]
        assert seen == [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]

    async def test_returning_none_continues_with_the_same_state(
        self, driver: durable.Driver
    ) -> None:
        seen: list[object] = []

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            seen.append(state)
            if len(seen) == 3:
                return Loop.break_("done")
            return None

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state={"k": 1})

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == "done"
        assert seen == [{"k": 1}] * 3

    async def test_break_returns_its_value_and_defaults_to_none(
        self, driver: durable.Driver
    ) -> None:
        async def body_value(ctx: durable.WorkflowContext, state: Any) -> object:
            return Loop.break_({"answer": state})

        async def body_none(ctx: durable.WorkflowContext, state: Any) -> object:
            return Loop.break_()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.loop("a", body_value, state=42)
            b = await ctx.loop("b", body_none)
            return [a, b]

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [{"answer": 42}, None]

    async def test_continue_without_a_state_continues_with_none(
        self, driver: durable.Driver
    ) -> None:
        seen: list[object] = []

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            seen.append(state)
            return Loop.break_(len(seen)) if len(seen) == 2 else Loop.continue_()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state="start")

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == 2
        assert seen == ["start", None]

    @pytest.mark.parametrize("returned", [42, "break", True, [1], Loop])
    async def test_a_non_loop_return_fails_the_workflow_with_type_error(
        self, driver: durable.Driver, returned: object
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            await ctx.step("work", lambda: 1)
            return returned

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body)

        handle = durable.run_workflow(WID, wf, None, driver=driver)
        with pytest.raises(durable.WorkflowFailedError) as info:
            await handle.result()
        assert info.value.error.name == "TypeError"
        assert "Loop.continue_" in info.value.error.message
        assert await handle.get_state() == durable.WorkflowState.FAILED

    async def test_an_unstorable_state_fails_the_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            return Loop.continue_(object())

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body)

        with pytest.raises(durable.WorkflowFailedError) as info:
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert "state" in info.value.error.message

    async def test_an_error_in_the_body_fails_the_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            raise LookupError("no such cursor")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body)

        with pytest.raises(durable.WorkflowFailedError) as info:
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert info.value.error.name == "LookupError"

    async def test_the_state_is_the_decoded_form_on_the_first_run(
        self, driver: durable.Driver
    ) -> None:
        seen: list[object] = []

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            seen.append(state)
            if len(seen) == 3:
                return Loop.break_((state, "end"))
            return Loop.continue_((len(seen), ("nested",)))

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state=(0, (1, 2)))

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert seen == [[0, [1, 2]], [1, ["nested"]], [2, ["nested"]]]
        assert all(type(state) is list for state in seen)
        assert result.output == [[2, ["nested"]], "end"]

    @pytest.mark.parametrize("commit_interval", [1, 2, 10])
    async def test_the_state_is_the_decoded_form_after_a_replay(
        self, driver: durable.Driver, commit_interval: int
    ) -> None:
        seen: list[tuple[int, object]] = []
        runs = [0]

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            seen.append((runs[0], state))
            i = state[0]

            def work() -> int:
                if i == 3 and runs[0] == 0:
                    raise Crash
                return int(i)

            await ctx.step("work", work)
            if i == 4:
                return Loop.break_(state)
            return Loop.continue_((i + 1, (i,)))

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop", body, state=(0, ()), commit_interval=commit_interval
            )

        with pytest.raises(Crash):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        runs[0] = 1
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [4, [3]]
        replayed = [state for run, state in seen if run == 1]
        # the second run starts at the last checkpoint, from the stored state
        start = 3 - 3 % commit_interval
        assert replayed == [[i, [i - 1] if i else []] for i in range(start, 5)]
        assert all(type(state) is list for _, state in seen)

    async def test_a_state_mutated_in_place_survives_a_crash(
        self, driver: durable.Driver
    ) -> None:
        """Returning None after changing the state in place keeps the change."""
        crashed = [False]

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            def work() -> int:
                if len(state["seen"]) == 7 and not crashed[0]:
                    crashed[0] = True
                    raise Crash
                return len(state["seen"])

            n = await ctx.step("work", work)
            state["seen"].append(n)
            if n == 9:
                return Loop.break_(state["seen"])
            return None

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state={"seen": []}, commit_interval=3)

        with pytest.raises(Crash):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == list(range(10))


class TestIterations:
    async def test_a_step_named_the_same_in_every_iteration_does_not_collide(
        self, driver: durable.Driver
    ) -> None:
        executions: Counter[int] = Counter()
        wf = squares_workflow(5, executions)
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [5, expected_total(5)]
        assert executions == Counter(range(5))
        history = await History.load(driver, WID)
        loop_entry = (await root_entries(driver, WID))["loop"]
        work = history.name_index["work"]
        for i in range(5):
            entry = history.entries[
                iteration_location(loop_entry.location, i) + encode_int(work)
            ]
            assert entry.status == COMPLETED
            assert entry.seq == 0
            assert history.describe(entry.location).endswith(
                f"'loop' / iteration {i} / 'work'"
            )

    async def test_a_name_is_used_once_per_iteration(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            await ctx.step("work", lambda: 1)
            await ctx.step("work", lambda: 2)
            return Loop.break_()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body)

        with pytest.raises(durable.HistoryDivergedError):
            await durable.run_workflow(WID, wf, None, driver=driver).result()

    async def test_a_loop_name_is_used_once_per_scope(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            return Loop.break_(state)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.loop("loop", body, state=1)
            return await ctx.loop("loop", body, state=2)

        with pytest.raises(durable.HistoryDivergedError):
            await durable.run_workflow(WID, wf, None, driver=driver).result()

    async def test_an_iteration_that_changes_its_calls_on_replay_diverges(
        self, driver: durable.Driver
    ) -> None:
        names = ["a"]
        runs = [0]

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            def work() -> int:
                if state == 2 and runs[0] == 0:
                    raise Crash
                return int(state)

            await ctx.step(names[0] if state == 1 else "work", work)
            return Loop.break_() if state == 3 else Loop.continue_(state + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state=0, commit_interval=20)

        with pytest.raises(Crash):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        runs[0] = 1
        names[0] = "renamed"
        with pytest.raises(durable.HistoryDivergedError):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        names[0] = "a"
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.state == durable.WorkflowState.COMPLETED

    @pytest.mark.parametrize("options", OPTION_SETS)
    async def test_a_completed_loop_replays_its_output_without_running_its_body(
        self, driver: durable.Driver, options: tuple[int, int, int]
    ) -> None:
        clock = JumpClock()
        executions: Counter[int] = Counter()
        bodies = [0]
        inner = squares_workflow(30, executions, options=options)

        async def wf(ctx: durable.WorkflowContext, input: object) -> object:
            bodies[0] += 1
            total = await inner(ctx, input)
            await ctx.sleep("nap", HOUR)
            return total

        handle = durable.run_workflow(
            WID, wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await handle.result()).state == durable.WorkflowState.SLEEPING
        assert (await root_entries(driver, WID))["loop"].status == COMPLETED
        clock.advance(HOUR)
        result = await durable.run_workflow(
            WID, wf, None, driver=driver, mode="yield", clock=clock
        ).result()
        assert result.output == [30, expected_total(30)]
        assert bodies[0] == 2
        assert executions == Counter(range(30))  # no iteration ran again

    async def test_a_loop_that_sleeps_in_every_iteration_resumes_across_yields(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        executions: Counter[int] = Counter()

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            def work() -> int:
                executions[state] += 1
                return int(state * 10)

            value = await ctx.step("work", work)
            await ctx.sleep("nap", HOUR)
            return Loop.break_(value) if state == 4 else Loop.continue_(state + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state=0, commit_interval=2)

        runs = 0
        while True:
            runs += 1
            result = await durable.run_workflow(
                WID, wf, None, driver=driver, mode="yield", clock=clock
            ).result()
            if result.state == durable.WorkflowState.COMPLETED:
                break
            assert result.state == durable.WorkflowState.SLEEPING
            assert result.sleep_until is not None
            clock.time = result.sleep_until
        assert result.output == 40
        assert runs == 6
        assert executions == Counter(range(5))


class TestOptions:
    @pytest.mark.parametrize(
        "option", ["commit_interval", "history_every", "history_keep"]
    )
    @pytest.mark.parametrize("value", [0, -1, -20, True, False, 1.5, "2", None])
    async def test_an_invalid_option_raises_value_error_at_the_call(
        self, option: str, value: object
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            return Loop.break_("ran")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            with pytest.raises(ValueError, match=option):
                _ = ctx.loop("loop", body, **{option: value})  # type: ignore[arg-type]
            # nothing was registered: the name is still free
            return await ctx.loop("loop", body)

        async with durable.MemoryDriver() as driver:
            result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == "ran"

    async def test_a_body_that_is_not_callable_raises_type_error(self) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            with pytest.raises(TypeError):
                _ = ctx.loop("loop", "not a function")  # type: ignore[arg-type]
            return "ok"

        async with durable.MemoryDriver() as driver:
            result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == "ok"


class TestBoundedHistory:
    @pytest.mark.embedded_only  # 100,000 commits: minutes on PostgreSQL
    async def test_a_100000_iteration_loop_keeps_a_bounded_number_of_keys(
        self, driver: durable.Driver
    ) -> None:
        n = 100_000
        keep = 20

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            value = await ctx.step("work", lambda: state + 1)
            return Loop.break_(value) if value >= n else Loop.continue_(value)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=0,
                commit_interval=20,
                history_every=20,
                history_keep=keep,
            )

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == n
        keys = await count_keys(driver)
        bound = 2 * keep * KEYS_PER_ITERATION + FIXED_KEYS
        assert keys <= bound, keys
        # exactly the last `keep` iterations are left
        assert keys == keep * KEYS_PER_ITERATION + FIXED_KEYS
        history = await History.load(driver, WID)
        assert len(history.entries) == keep + 1  # the kept steps and the loop entry
        loop_entry = (await root_entries(driver, WID))["loop"]
        assert loop_entry.status == COMPLETED
        assert loop_entry.data[3] == n - keep  # type: ignore[index]  # pruned below

    @pytest.mark.parametrize("options", OPTION_SETS)
    async def test_the_store_and_memory_stay_bounded_during_the_loop(
        self, driver: durable.Driver, options: tuple[int, int, int]
    ) -> None:
        commit, every, keep = options
        n = 2_000
        most_keys = 0
        most_entries = 0

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            nonlocal most_keys, most_entries
            value = await ctx.step("work", lambda: state + 1)
            run = active_run(driver, WID)
            assert run is not None
            history = run.history
            most_entries = max(most_entries, len(history.entries))
            assert len(history.by_seq) <= len(history.entries)
            assert len(history.scope_sizes) <= len(history.entries)
            if value % 50 == 0:
                most_keys = max(most_keys, await count_keys(driver))
            return Loop.break_(value) if value >= n else Loop.continue_(value)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=0,
                commit_interval=commit,
                history_every=every,
                history_keep=keep,
            )

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == n
        # iterations kept at most: `keep`, those since the last checkpoint, and those
        # since the last prune
        kept = keep + commit + every
        assert most_entries <= kept + 1
        assert most_keys <= kept * KEYS_PER_ITERATION + FIXED_KEYS
        assert await count_keys(driver) == keep * KEYS_PER_ITERATION + FIXED_KEYS

    async def test_a_resumed_run_forgets_the_replayed_iterations_it_prunes(
        self, driver: durable.Driver
    ) -> None:
        n = 600
        runs = [0]
        sizes: list[tuple[int, int, int]] = []  # (run, entries, replay index)

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            def work() -> int:
                if state == 500 and runs[0] == 0:
                    raise Crash
                return int(state + 1)

            value = await ctx.step("work", work)
            run = active_run(driver, WID)
            assert run is not None
            sizes.append((runs[0], len(run.history.entries), len(run.history.by_seq)))
            return Loop.break_(value) if value >= n else Loop.continue_(value)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=0,
                commit_interval=3,
                history_every=5,
                history_keep=2,
            )

        with pytest.raises(Crash):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        runs[0] = 1
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == n
        resumed = [size for size in sizes if size[0] == 1]
        assert max(entries for _, entries, _ in resumed) <= 2 + 3 + 5 + 1
        # what the second run loaded for replay was pruned away: only the loop is left
        assert resumed[-1][2] == 1

    @pytest.mark.parametrize("n", [1, 5, 20, 21, 1000])
    async def test_the_final_key_count_does_not_grow_with_the_loop_length(
        self, driver: durable.Driver, n: int
    ) -> None:
        wf = squares_workflow(n, Counter(), options=(3, 5, 10))
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [n, expected_total(n)]
        assert await count_keys(driver) == (
            min(n, 10) * KEYS_PER_ITERATION + FIXED_KEYS
        )

    async def test_ephemeral_steps_of_pruned_iterations_are_not_left_behind(
        self, driver: durable.Driver
    ) -> None:
        """Ephemeral entries ride in the same batch as the range delete."""

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            value = await ctx.step("work", lambda: state + 1, ephemeral=True)
            return Loop.break_(value) if value >= 1000 else Loop.continue_(value)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=0,
                commit_interval=4,
                history_every=6,
                history_keep=3,
            )

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == 1000
        history = await History.load(driver, WID)
        loop_entry = (await root_entries(driver, WID))["loop"]
        iterations = [
            loc
            for loc in history.entries
            if loc.startswith(loop_entry.location) and loc != loop_entry.location
        ]
        assert len(iterations) <= 3
        assert await count_keys(driver) <= 3 * KEYS_PER_ITERATION + FIXED_KEYS

    async def test_a_loop_of_several_steps_per_iteration_stays_bounded(
        self, driver: durable.Driver
    ) -> None:
        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            a = await ctx.step("a", lambda: state + 1)
            b = await ctx.step("b", lambda: a * 2)
            await ctx.sleep("tick", 0)
            return Loop.break_(b) if a >= 500 else Loop.continue_(a)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=0,
                commit_interval=5,
                history_every=5,
                history_keep=5,
            )

        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == 1000
        per_iteration = 3 * 2  # two steps and a sleep, data + meta each
        fixed = FIXED_KEYS + 2  # two more names
        assert await count_keys(driver) <= 2 * 5 * per_iteration + fixed


class TestCrashAndResume:
    @pytest.mark.parametrize("k", [0, 1, 2, 19, 20, 21, 39, 40, 44])
    async def test_a_crash_in_iteration_k_resumes_at_k_with_the_right_state(
        self, driver: durable.Driver, k: int
    ) -> None:
        n = 45
        clean: dict[int, list[object]] = {}
        async with durable.MemoryDriver() as other:
            await durable.run_workflow(
                WID, squares_workflow(n, Counter(), seen=clean), None, driver=other
            ).result()
            clean_keys = await count_keys(other)

        executions: Counter[int] = Counter()
        seen: dict[int, list[object]] = {}
        wf = squares_workflow(n, executions, crash=frozenset({k}), seen=seen)
        with pytest.raises(Crash):
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert executions == Counter(range(k + 1))
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == [n, expected_total(n)]
        # every iteration's step ran once, the one in flight at the crash twice
        assert executions == Counter(range(n)) + Counter([k])
        # ... and the second time with the same state as the first
        assert seen[k] == [clean[k][0], clean[k][0]]
        assert {i: states[0] for i, states in seen.items()} == {
            i: states[0] for i, states in clean.items()
        }
        assert await count_keys(driver) == clean_keys

    @pytest.mark.parametrize("k", [0, 5, 13])
    async def test_an_eviction_in_iteration_k_resumes_without_rerunning_steps(
        self, driver: durable.Driver, k: int
    ) -> None:
        n = 20
        executions: Counter[int] = Counter()
        handles: list[durable.WorkflowHandle] = []

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            def work() -> int:
                executions[state] += 1
                if state == k and executions[state] == 1:
                    handles[-1].evict()
                return int(state)

            await ctx.step("work", work)
            return Loop.break_(state) if state == n - 1 else Loop.continue_(state + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop("loop", body, state=0, commit_interval=4)

        handles.append(durable.run_workflow(WID, wf, None, driver=driver))
        with pytest.raises(durable.EvictedError):
            await handles[-1].result()
        assert await handles[-1].get_state() == durable.WorkflowState.PENDING
        handles.append(durable.run_workflow(WID, wf, None, driver=driver))
        result = await handles[-1].result()
        assert result.output == n - 1
        assert executions == Counter(range(n))

    @pytest.mark.parametrize("options", OPTION_SETS)
    @pytest.mark.parametrize("k", [3, 10, 23])
    async def test_crash_and_resume_converges_for_every_option_set(
        self, driver: durable.Driver, options: tuple[int, int, int], k: int
    ) -> None:
        n = 25
        async with durable.MemoryDriver() as other:
            clean = await durable.run_workflow(
                WID, squares_workflow(n, Counter(), options=options), None, driver=other
            ).result()
            clean_keys = await count_keys(other)
        executions: Counter[int] = Counter()
        wf = squares_workflow(
            n, executions, crash=frozenset({k, k + 1}), options=options
        )
        result, crashes = await run_until_done(wf, driver)
        assert crashes == 2
        assert result.output == clean.output == [n, expected_total(n)]
        assert executions == Counter(range(n)) + Counter([k, k + 1])
        assert await count_keys(driver) == clean_keys

    @pytest.mark.parametrize("options", OPTION_SETS)
    async def test_a_crash_at_any_write_resumes_to_the_same_output(
        self, anyio_backend: str, options: tuple[int, int, int]
    ) -> None:
        n = 24
        async with durable.MemoryDriver() as inner:
            counting = FaultyDriver(inner)
            clean = await durable.run_workflow(
                WID,
                squares_workflow(n, Counter(), options=options),
                None,
                driver=counting,
            ).result()
            clean_keys = await count_keys(inner)
        assert counting.writes >= n
        for fail_at in range(1, counting.writes + 1):
            executions: Counter[int] = Counter()
            wf = squares_workflow(n, executions, options=options)
            async with durable.MemoryDriver() as inner:
                faulty = FaultyDriver(inner, fail_at=fail_at)
                with pytest.raises(SimulatedCrash):
                    await durable.run_workflow(WID, wf, None, driver=faulty).result()
                before = Counter(executions)
                result = await durable.run_workflow(
                    WID, wf, None, driver=inner
                ).result()
                assert result.output == clean.output, fail_at
                assert await count_keys(inner) == clean_keys, fail_at
            # a step of an earlier iteration never runs again; at most the one whose
            # write was lost runs twice
            twice = [i for i, count in executions.items() if count > 1]
            assert len(twice) <= 1, (fail_at, executions)
            assert all(executions[i] == 2 for i in twice)
            assert twice in ([], [max(before)]), (fail_at, executions)
            assert set(executions) == set(range(n))

    @pytest.mark.parametrize("options", OPTION_SETS)
    async def test_a_crash_at_or_right_after_a_prune_still_resumes(
        self, anyio_backend: str, options: tuple[int, int, int]
    ) -> None:
        n = 40

        class PruneSpy(durable.MemoryDriver):
            def __init__(self) -> None:
                super().__init__()
                self.writes = 0
                self.prunes: list[int] = []  # 1-based numbers of writes that prune

            async def write(self, batch: Batch) -> None:
                self.writes += 1
                if any(op[0] == DELETE_RANGE for op in batch.ops):
                    self.prunes.append(self.writes)
                await super().write(batch)

        async with PruneSpy() as spy:
            clean = await durable.run_workflow(
                WID, squares_workflow(n, Counter(), options=options), None, driver=spy
            ).result()
            clean_keys = await count_keys(spy)
        assert spy.prunes
        points = sorted({p + d for p in spy.prunes for d in (0, 1, 2)})
        for fail_at in [p for p in points if p <= spy.writes]:
            executions: Counter[int] = Counter()
            wf = squares_workflow(n, executions, options=options)
            async with durable.MemoryDriver() as inner:
                faulty = FaultyDriver(inner, fail_at=fail_at)
                with pytest.raises(SimulatedCrash):
                    await durable.run_workflow(WID, wf, None, driver=faulty).result()
                await check_resumable(inner)
                result = await durable.run_workflow(
                    WID, wf, None, driver=inner
                ).result()
                assert result.output == clean.output, fail_at
                assert await count_keys(inner) == clean_keys, fail_at
            assert sum(executions.values()) <= n + 1, (fail_at, executions)

    @given(
        n=st.integers(1, 40),
        commit=st.integers(1, 8),
        every=st.integers(1, 8),
        keep=st.integers(1, 8),
        data=st.data(),
    )
    def test_random_loops_and_crash_points_converge(
        self, n: int, commit: int, every: int, keep: int, data: st.DataObject
    ) -> None:
        crash = frozenset(
            data.draw(st.lists(st.integers(0, n - 1), max_size=4), label="crash")
        )
        options = (commit, every, keep)

        async def check() -> None:
            async with durable.MemoryDriver() as other:
                clean = await durable.run_workflow(
                    WID,
                    squares_workflow(n, Counter(), options=options),
                    None,
                    driver=other,
                ).result()
                clean_keys = await count_keys(other)
            executions: Counter[int] = Counter()
            async with durable.MemoryDriver() as driver:
                result, crashes = await run_until_done(
                    squares_workflow(n, executions, crash=crash, options=options),
                    driver,
                )
                keys = await count_keys(driver)
            assert crashes == len(crash)
            assert result.output == clean.output == [n, expected_total(n)]
            assert executions == Counter(range(n)) + Counter(crash)
            assert keys == clean_keys == min(n, keep) * 2 + FIXED_KEYS

        for backend in BACKENDS:
            anyio.run(check, backend=backend)


async def check_resumable(driver: durable.Driver) -> None:
    """The stored loop has every iteration from its checkpoint to the last recorded."""
    loops = await root_entries(driver, WID)
    if "loop" not in loops:
        return  # crashed before the loop's first write
    loop_entry = loops["loop"]
    history = await History.load(driver, WID)
    work = history.name_index["work"]
    data = loop_entry.data
    assert isinstance(data, list)
    checkpoint, pruned_below = int(data[0]), int(data[3])
    assert pruned_below <= checkpoint
    recorded = [
        i
        for i in range(checkpoint, checkpoint + 1000)
        if iteration_location(loop_entry.location, i) + encode_int(work)
        in history.entries
    ]
    if recorded:
        assert recorded == list(range(checkpoint, recorded[-1] + 1))


class TestNesting:
    @staticmethod
    def nested_workflow(
        executions: Counter[tuple[int, int]], crash: set[tuple[int, int]]
    ) -> Callable[[durable.WorkflowContext, object], Awaitable[object]]:
        crashed: set[tuple[int, int]] = set()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def outer(ctx: durable.WorkflowContext, state: Any) -> object:
                o, results = state

                async def inner(ctx: durable.WorkflowContext, state: Any) -> object:
                    i, total = state

                    def work() -> int:
                        executions[o, i] += 1
                        if (o, i) in crash and (o, i) not in crashed:
                            crashed.add((o, i))
                            raise Crash
                        return int(total + 10 * o + i)

                    total = await ctx.step("work", work)
                    return (
                        Loop.break_(total) if i == 4 else Loop.continue_([i + 1, total])
                    )

                total = await ctx.loop(
                    "inner",
                    inner,
                    state=[0, 0],
                    commit_interval=2,
                    history_every=2,
                    history_keep=1,
                )
                results = [*results, total]
                return (
                    Loop.break_(results) if o == 5 else Loop.continue_([o + 1, results])
                )

            return await ctx.loop(
                "outer",
                outer,
                state=[0, []],
                commit_interval=2,
                history_every=3,
                history_keep=1,
            )

        return wf

    EXPECTED: ClassVar[list[int]] = [
        sum(10 * o + i for i in range(5)) for o in range(6)
    ]

    async def test_a_loop_inside_a_loop(self, driver: durable.Driver) -> None:
        executions: Counter[tuple[int, int]] = Counter()
        wf = self.nested_workflow(executions, set())
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == self.EXPECTED
        assert executions == Counter((o, i) for o in range(6) for i in range(5))
        # the outer prune removed whole iterations, inner loops included
        history = await History.load(driver, WID)
        assert len(history.entries) <= 1 + 2 + 1  # outer, inner, kept inner step

    @pytest.mark.parametrize("at", [(0, 0), (2, 3), (3, 0), (4, 4), (5, 2)])
    async def test_a_crash_inside_a_nested_loop_resumes(
        self, driver: durable.Driver, at: tuple[int, int]
    ) -> None:
        executions: Counter[tuple[int, int]] = Counter()
        wf = self.nested_workflow(executions, {at, (at[0], 4 - at[1])})
        result, crashes = await run_until_done(wf, driver)
        assert crashes >= 1
        assert result.output == self.EXPECTED
        expected = Counter((o, i) for o in range(6) for i in range(5))
        assert executions == expected + Counter({at, (at[0], 4 - at[1])})

    @staticmethod
    def join_workflow(
        executions: Counter[tuple[str, int]], crash: set[tuple[str, int]]
    ) -> Callable[[durable.WorkflowContext, object], Awaitable[object]]:
        crashed: set[tuple[str, int]] = set()

        def branch(label: str, n: int) -> Callable[[durable.WorkflowContext], Any]:
            async def body(ctx: durable.WorkflowContext, state: Any) -> object:
                def work() -> str:
                    executions[label, state] += 1
                    if (label, state) in crash and (label, state) not in crashed:
                        crashed.add((label, state))
                        raise Crash
                    return f"{label}{state}"

                value = await ctx.step("work", work)
                await ctx.sleep("yield", 0)
                return (
                    Loop.break_(value) if state == n - 1 else Loop.continue_(state + 1)
                )

            async def run(ctx: durable.WorkflowContext) -> object:
                return await ctx.loop(
                    "loop",
                    body,
                    state=0,
                    commit_interval=3,
                    history_every=2,
                    history_keep=2,
                )

            return run

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.join("both", {"a": branch("a", 12), "b": branch("b", 7)})

        return wf

    async def test_loops_inside_join_branches(self, driver: durable.Driver) -> None:
        executions: Counter[tuple[str, int]] = Counter()
        result = await durable.run_workflow(
            WID, self.join_workflow(executions, set()), None, driver=driver
        ).result()
        assert result.output == {"a": "a11", "b": "b6"}
        assert executions == Counter(
            [("a", i) for i in range(12)] + [("b", i) for i in range(7)]
        )

    @pytest.mark.parametrize("at", [("a", 5), ("b", 3), ("a", 11)])
    async def test_a_crash_in_a_loop_inside_a_join_branch_resumes(
        self, driver: durable.Driver, at: tuple[str, int]
    ) -> None:
        executions: Counter[tuple[str, int]] = Counter()
        wf = self.join_workflow(executions, {at})
        with pytest.raises(BaseException) as info:  # noqa: PT011  # maybe in a group
            await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert contains(info.value, Crash)
        result = await durable.run_workflow(WID, wf, None, driver=driver).result()
        assert result.output == {"a": "a11", "b": "b6"}
        # the other branch was cancelled mid-step at most once: no step ran 3 times,
        # and apart from the crashed one at most one step per branch ran twice
        assert executions[at] == 2
        assert max(executions.values()) == 2
        again = [key for key, count in executions.items() if count == 2 and key != at]
        assert len(again) <= 1
        assert set(executions) == {("a", i) for i in range(12)} | {
            ("b", i) for i in range(7)
        }

    @pytest.mark.parametrize("crash_at", [None, 0, 4, 9])
    async def test_a_race_in_every_iteration_with_pruning(
        self, driver: durable.Driver, crash_at: int | None
    ) -> None:
        executions: Counter[int] = Counter()
        crashed: set[int] = set()

        async def body(ctx: durable.WorkflowContext, state: Any) -> object:
            i, winners = state

            def work() -> int:
                executions[i] += 1
                if i == crash_at and i not in crashed:
                    crashed.add(i)
                    raise Crash
                return int(i * 2)

            async def fast(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("work", work)

            async def slow(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("never", anyio.sleep_forever)

            winner, value = await ctx.race("race", {"slow": slow, "fast": fast})
            winners = [*winners, [winner, value]]
            return Loop.break_(winners) if i == 9 else Loop.continue_([i + 1, winners])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.loop(
                "loop",
                body,
                state=[0, []],
                commit_interval=3,
                history_every=2,
                history_keep=2,
            )

        result, crashes = await run_until_done(wf, driver)
        assert crashes == (crash_at is not None)
        assert result.output == [["fast", i * 2] for i in range(10)]
        assert executions == Counter(range(10)) + Counter(
            [] if crash_at is None else [crash_at]
        )
        history = await History.load(driver, WID)
        loop_entry = (await root_entries(driver, WID))["loop"]
        kept = [
            i
            for i in range(10)
            if any(
                loc.startswith(iteration_location(loop_entry.location, i))
                for loc in history.entries
            )
        ]
        assert kept == [8, 9]
