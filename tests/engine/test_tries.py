"""ctx.try_step and ctx.try_block: caught kinds become results, others propagate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

import durable
from durable._history import History
from durable._keys import encode_int

from ._support import Counter, JumpClock, root_entries

if TYPE_CHECKING:
    from collections.abc import Callable

HOUR = 3600.0
LIMIT = 5.0


def raising(exc: BaseException, counter: Counter | None = None) -> Callable[[], object]:
    def fn() -> object:
        if counter is not None:
            counter("calls")
        raise exc

    return fn


async def run_live(
    driver: durable.Driver, wf: object, clock: durable.Clock | None = None
) -> durable.WorkflowResult:
    with anyio.fail_after(LIMIT):
        return await durable.run_workflow(
            "w",
            wf,  # type: ignore[arg-type]
            None,
            driver=driver,
            clock=clock,
        ).result()


async def run_yield(
    driver: durable.Driver, wf: object, clock: durable.Clock
) -> durable.WorkflowResult:
    with anyio.fail_after(LIMIT):
        return await durable.run_workflow(
            "w",
            wf,  # type: ignore[arg-type]
            None,
            driver=driver,
            mode="yield",
            clock=clock,
        ).result()


def describe(result: durable.TryStepResult | durable.TryBlockResult) -> list[object]:
    """A storable summary of a try result, to compare first runs with replays."""
    failure = result.failure
    if failure is None:
        return [result.ok, result.value]
    if isinstance(failure, durable.TryStepFailure):
        return [
            result.ok,
            result.value,
            failure.kind,
            failure.step_name,
            failure.attempts,
            type(failure.error).__name__,
        ]
    return [
        result.ok,
        result.value,
        failure.kind,
        failure.name,
        type(failure.error).__name__,
    ]


class TestTryStep:
    async def test_success_returns_ok_and_the_value(
        self, driver: durable.Driver
    ) -> None:
        seen: list[durable.TryStepResult] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.try_step("s", lambda: (1, 2))
            seen.append(result)
            return result.value

        assert (await run_live(driver, wf)).output == [1, 2]
        [result] = seen
        assert result.ok is True
        assert result.value == [1, 2]  # the decoded form, as from ctx.step
        assert result.failure is None

    async def test_catches_a_critical_error(self, driver: durable.Driver) -> None:
        seen: list[durable.TryStepResult] = []
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.try_step(
                "charge", raising(durable.CriticalError("declined"), counter)
            )
            seen.append(result)
            return "went on"

        assert (await run_live(driver, wf)).output == "went on"
        [result] = seen
        assert result.ok is False
        assert result.value is None
        failure = result.failure
        assert failure is not None
        assert failure.kind == "critical"
        assert failure.step_name == "charge"
        assert failure.attempts == 1
        assert isinstance(failure.error, durable.CriticalError)
        assert "declined" in str(failure.error)
        assert counter.calls == {"calls": 1}  # no retries
        assert (await root_entries(driver, "w"))["charge"].status == "failed"

    async def test_catches_a_timeout(self, driver: durable.Driver) -> None:
        seen: list[durable.TryStepResult] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.try_step("slow", anyio.sleep_forever, timeout=0.01)
            seen.append(result)
            return None

        await run_live(driver, wf)
        [result] = seen
        assert result.failure is not None
        assert result.failure.kind == "timeout"
        assert result.failure.step_name == "slow"
        assert result.failure.attempts == 1
        assert isinstance(result.failure.error, durable.StepTimeoutError)

    async def test_catches_exhausted_retries(self, driver: durable.Driver) -> None:
        seen: list[durable.TryStepResult] = []
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.try_step(
                "flaky",
                raising(ValueError("down"), counter),
                max_retries=2,
                retry_backoff_base=0.01,
            )
            seen.append(result)
            return None

        await run_live(driver, wf, clock)
        [result] = seen
        failure = result.failure
        assert failure is not None
        assert failure.kind == "exhausted"
        assert failure.step_name == "flaky"
        assert failure.attempts == 3
        assert isinstance(failure.error, durable.StepExhaustedError)
        assert counter.calls == {"calls": 3}

    async def test_catches_a_rollback_error(self, driver: durable.Driver) -> None:
        seen: list[durable.TryStepResult] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            seen.append(await ctx.try_step("s", raising(durable.RollbackError("undo"))))
            return None

        await run_live(driver, wf)
        [result] = seen
        assert result.failure is not None
        assert result.failure.kind == "rollback"
        assert isinstance(result.failure.error, durable.RollbackError)

    async def test_an_uncaught_kind_propagates(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.try_step(
                    "s",
                    raising(durable.CriticalError("boom")),
                    catch=("timeout",),
                )
            except durable.CriticalError as exc:
                return ["propagated", type(exc).__name__]
            return "caught"

        result = await run_live(driver, wf)
        assert result.output == ["propagated", "CriticalError"]

    async def test_an_uncaught_kind_fails_the_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.try_step(
                "s", raising(ValueError("down")), max_retries=0, catch=("critical",)
            )
            return "caught"

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "StepExhaustedError"

    async def test_timeout_subclass_is_not_caught_as_critical(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.try_step(
                    "s", anyio.sleep_forever, timeout=0.01, catch=("critical",)
                )
            except durable.StepTimeoutError:
                return "propagated"
            return "caught"

        assert (await run_live(driver, wf)).output == "propagated"

    async def test_unstorable_value_propagates(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.try_step("s", lambda: {1, 2})
            return "caught"

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "UnstorableValueError"

    @pytest.mark.parametrize(
        "catch",
        [("bogus",), ("critical", "step"), "critical", ("join",)],
        ids=repr,
    )
    async def test_invalid_catch_kinds_raise_value_error(
        self, driver: durable.Driver, catch: object
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            with pytest.raises(ValueError, match="catch"):
                ctx.try_step("s", lambda: counter("s"), catch=catch)  # type: ignore[arg-type]
            return await ctx.step("after", lambda: "fine")

        assert (await run_live(driver, wf)).output == "fine"
        assert counter.calls == {}
        assert list(await root_entries(driver, "w")) == ["after"]

    async def test_failure_replays_identically_without_running_the_step(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            critical = await ctx.try_step(
                "critical", raising(durable.CriticalError("c"), counter)
            )
            exhausted = await ctx.try_step(
                "exhausted",
                raising(ValueError("v"), counter),
                max_retries=1,
                retry_backoff_base=0.01,
            )
            ok = await ctx.try_step("ok", lambda: counter("ok", "fine"))
            await ctx.sleep("nap", HOUR)
            return [describe(critical), describe(exhausted), describe(ok)]

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        calls = dict(counter.calls)
        assert calls == {"calls": 3, "ok": 1}
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert counter.calls == calls  # nothing ran again
        assert second.output == [
            [False, None, "critical", "critical", 1, "CriticalError"],
            [False, None, "exhausted", "exhausted", 2, "StepExhaustedError"],
            [True, "fine"],
        ]

    async def test_first_run_and_replay_give_the_same_results(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        seen: list[list[object]] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            results = [
                describe(await ctx.try_step("a", raising(durable.RollbackError("r")))),
                describe(await ctx.try_step("b", lambda: "B")),
            ]
            seen.append(results)
            await ctx.sleep("nap", HOUR)
            return results

        await run_yield(driver, wf, clock)
        clock.advance(HOUR)
        await run_yield(driver, wf, clock)
        assert len(seen) == 2
        assert seen[0] == seen[1]

    async def test_retry_wait_yields_and_the_result_comes_after_the_restart(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            result = await ctx.try_step(
                "flaky",
                raising(ValueError("down"), counter),
                max_retries=1,
                retry_backoff_base=HOUR,
                retry_backoff_max=HOUR,
            )
            return describe(result)

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        assert first.sleep_until == clock.now() + HOUR
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert second.output == [
            False,
            None,
            "exhausted",
            "flaky",
            2,
            "StepExhaustedError",
        ]
        assert counter.calls == {"calls": 2}

    async def test_try_step_inside_a_join_branch(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def branch(ctx: durable.WorkflowContext) -> object:
                return describe(
                    await ctx.try_step("s", raising(durable.CriticalError("c")))
                )

            return await ctx.join("j", {"a": branch})

        result = await run_live(driver, wf)
        assert result.output == {
            "a": [False, None, "critical", "s", 1, "CriticalError"]
        }


class TestTryBlock:
    async def test_success_returns_ok_and_the_value(
        self, driver: durable.Driver
    ) -> None:
        seen: list[durable.TryBlockResult] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                a = await ctx.step("a", lambda: "A")
                return [a, await ctx.step("b", lambda: "B")]

            result = await ctx.try_block("blk", block)
            seen.append(result)
            return result.value

        assert (await run_live(driver, wf)).output == ["A", "B"]
        [result] = seen
        assert result.ok is True
        assert result.failure is None
        entries = await root_entries(driver, "w")
        assert list(entries) == ["blk"]
        assert entries["blk"].status == "completed"

    async def test_block_is_its_own_scope(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", lambda: "inner")

            inner = await ctx.try_block("blk", block)
            outer = await ctx.step("s", lambda: "outer")
            return [inner.value, outer]

        assert (await run_live(driver, wf)).output == ["inner", "outer"]
        history = await History.load(driver, "w")
        index = history.name_index
        inner_step = history.entries[encode_int(index["blk"]) + encode_int(index["s"])]
        assert inner_step.status == "completed"

    async def test_catches_a_step_failure_and_stops_the_block(
        self, driver: durable.Driver
    ) -> None:
        seen: list[durable.TryBlockResult] = []
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                await ctx.step("a", lambda: counter("a"))
                await ctx.step("b", raising(durable.CriticalError("no")))
                await ctx.step("c", lambda: counter("c"))
                return "done"

            result = await ctx.try_block("blk", block)
            seen.append(result)
            return await ctx.step("after", lambda: "after")

        assert (await run_live(driver, wf)).output == "after"
        [result] = seen
        assert result.ok is False
        assert result.value is None
        failure = result.failure
        assert failure is not None
        assert failure.kind == "step"
        assert failure.name == "blk"
        assert isinstance(failure.error, durable.CriticalError)
        assert counter.calls == {"a": 1}
        assert (await root_entries(driver, "w"))["blk"].status == "failed"

    @pytest.mark.parametrize(
        ("make_error", "options"),
        [
            (lambda: durable.CriticalError("c"), {}),
            (lambda: ValueError("exhausted"), {"max_retries": 0}),
            (lambda: durable.StepTimeoutError("s", 1.0), {}),
        ],
        ids=["critical", "exhausted", "timeout"],
    )
    async def test_every_step_failure_is_kind_step(
        self,
        driver: durable.Driver,
        make_error: Callable[[], Exception],
        options: dict[str, int],
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(make_error()), **options)  # type: ignore[arg-type]

            return describe(await ctx.try_block("blk", block))

        result = await run_live(driver, wf)
        assert result.output[:4] == [False, None, "step", "blk"]  # type: ignore[index]

    async def test_unstorable_step_value_is_kind_step(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", lambda: {1, 2})

            return describe(await ctx.try_block("blk", block))

        result = await run_live(driver, wf)
        assert result.output == [False, None, "step", "blk", "UnstorableValueError"]

    async def test_catches_a_join_failure(self, driver: durable.Driver) -> None:
        seen: list[durable.TryBlockResult] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def bad(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.CriticalError("no")))

            async def good(ctx: durable.WorkflowContext) -> object:
                return "ok"

            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.join("j", {"bad": bad, "good": good})

            result = await ctx.try_block("blk", block)
            seen.append(result)
            return describe(result)

        result = await run_live(driver, wf)
        assert result.output == [False, None, "join", "blk", "JoinError"]
        error = seen[0].failure.error  # type: ignore[union-attr]
        assert isinstance(error, durable.JoinError)
        assert list(error.errors) == ["bad"]

    async def test_catches_a_race_failure(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def bad(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.CriticalError("no")))

            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.race("r", {"x": bad, "y": bad})

            return describe(await ctx.try_block("blk", block))

        result = await run_live(driver, wf)
        assert result.output == [False, None, "race", "blk", "RaceError"]

    async def test_catches_a_rollback_error(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.RollbackError("undo")))

            return describe(await ctx.try_block("blk", block))

        result = await run_live(driver, wf)
        assert result.output == [False, None, "rollback", "blk", "RollbackError"]

    async def test_a_step_failure_caught_inside_the_block_is_not_a_failure(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                inner = await ctx.try_step("s", raising(durable.CriticalError("c")))
                return inner.ok

            return describe(await ctx.try_block("blk", block))

        assert (await run_live(driver, wf)).output == [True, False]

    async def test_an_uncaught_kind_propagates(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.CriticalError("c")))

            try:
                await ctx.try_block("blk", block, catch=("join", "race"))
            except durable.CriticalError:
                return "propagated"
            return "caught"

        assert (await run_live(driver, wf)).output == "propagated"

    async def test_rollback_is_not_caught_as_step(self, driver: durable.Driver) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.RollbackError("r")))

            await ctx.try_block("blk", block, catch=("step",))
            return "caught"

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "RollbackError"

    async def test_other_exceptions_propagate_and_fail_the_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                await ctx.step("a", lambda: "A")
                raise ValueError("bug in block code")

            await ctx.try_block("blk", block)
            return "caught"

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await run_live(driver, wf)
        assert failed.value.error.name == "ValueError"
        assert "bug in block code" in failed.value.error.message

    @pytest.mark.parametrize(
        "catch",
        [("bogus",), ("step", "critical"), "step", ("timeout",)],
        ids=repr,
    )
    async def test_invalid_catch_kinds_raise_value_error(
        self, driver: durable.Driver, catch: object
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return None

            with pytest.raises(ValueError, match="catch"):
                ctx.try_block("blk", block, catch=catch)  # type: ignore[arg-type]
            return await ctx.step("after", lambda: "fine")

        assert (await run_live(driver, wf)).output == "fine"
        assert list(await root_entries(driver, "w")) == ["after"]

    async def test_failure_replays_identically_without_running_steps(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def failing(ctx: durable.WorkflowContext) -> object:
                await ctx.step("a", lambda: counter("a"))
                return await ctx.step(
                    "b", raising(durable.CriticalError("no"), counter)
                )

            async def bad(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("s", raising(durable.CriticalError("x"), counter))

            async def joining(ctx: durable.WorkflowContext) -> object:
                return await ctx.join("j", {"bad": bad})

            async def fine(ctx: durable.WorkflowContext) -> object:
                return await ctx.step("ok", lambda: counter("ok", "OK"))

            results = [
                describe(await ctx.try_block("failing", failing)),
                describe(await ctx.try_block("joining", joining)),
                describe(await ctx.try_block("fine", fine)),
            ]
            seen.append(results)
            await ctx.sleep("nap", HOUR)
            return results

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        calls = dict(counter.calls)
        assert calls == {"a": 1, "calls": 2, "ok": 1}
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert counter.calls == calls
        expected = [
            [False, None, "step", "failing", "CriticalError"],
            [False, None, "join", "joining", "JoinError"],
            [True, "OK"],
        ]
        assert second.output == expected
        assert seen == [expected, expected]

    async def test_yield_inside_a_block_resumes_it(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                a = await ctx.step("a", lambda: counter("a", "A"))
                await ctx.sleep("nap", HOUR)
                b = await ctx.step("b", lambda: counter("b", "B"))
                return [a, b]

            return describe(await ctx.try_block("blk", block))

        first = await run_yield(driver, wf, clock)
        assert first.state == durable.WorkflowState.SLEEPING
        assert first.sleep_until == clock.now() + HOUR
        assert counter.calls == {"a": 1}
        clock.advance(HOUR)
        second = await run_yield(driver, wf, clock)
        assert second.output == [True, ["A", "B"]]
        assert counter.calls == {"a": 1, "b": 1}

    async def test_renamed_step_in_a_block_raises_history_diverged(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def workflow(step: str) -> object:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                async def block(ctx: durable.WorkflowContext) -> object:
                    return await ctx.step(step, lambda: "v")

                await ctx.try_block("blk", block)
                await ctx.sleep("nap", HOUR)
                return None

            return wf

        await run_yield(driver, workflow("s"), clock)
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, workflow("t"), clock)

    async def test_renaming_an_unfinished_block_raises_history_diverged(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        def workflow(name: str) -> object:
            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                async def block(ctx: durable.WorkflowContext) -> object:
                    await ctx.step("s", lambda: counter("s"))
                    await ctx.sleep("nap", HOUR)  # the block yields unfinished
                    return "v"

                return describe(await ctx.try_block(name, block))

            return wf

        await run_yield(driver, workflow("blk"), clock)
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, workflow("renamed"), clock)
        assert counter.calls == {"s": 1}  # the recorded step did not run again
        clock.advance(HOUR)
        assert (await run_yield(driver, workflow("blk"), clock)).output == [True, "v"]

    async def test_block_in_place_of_a_step_raises_history_diverged(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        async def original(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("s", lambda: "v")
            await ctx.sleep("nap", HOUR)
            return None

        async def changed(ctx: durable.WorkflowContext, _: object) -> object:
            async def block(ctx: durable.WorkflowContext) -> object:
                return None

            await ctx.try_block("s", block)
            await ctx.sleep("nap", HOUR)
            return None

        await run_yield(driver, original, clock)
        with pytest.raises(durable.HistoryDivergedError):
            await run_yield(driver, changed, clock)
