"""ctx.step: recording, replay, retries with persisted backoff, timeouts, failures."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

import durable
from durable._history import History

from ._support import T0, Counter, Crash, JumpClock, ManualClock, root_entries

HOUR = 3600.0


class TestCallables:
    async def test_sync_callable_result_is_returned(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("add", lambda: 1 + 2)

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == 3

    async def test_async_callable_result_is_returned(
        self, driver: durable.Driver
    ) -> None:
        async def fetch() -> str:
            await anyio.lowlevel.checkpoint()
            return "fetched"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("fetch", fetch)

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "fetched"

    async def test_lambda_returning_a_coroutine_is_awaited(
        self, driver: durable.Driver
    ) -> None:
        async def double(x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return 2 * x

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("double", lambda: double(21))

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == 42

    async def test_step_runs_in_the_workflow_with_the_stored_input(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, order_id: object) -> object:
            return await ctx.step("charge", lambda: f"charged {order_id}")

        result = await durable.run_workflow("w", wf, "o-1", driver=driver).result()
        assert result.output == "charged o-1"


class TestReplay:
    async def test_completed_step_is_not_run_again_after_a_yield(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.step("a", lambda: counter("a", "A"))
            await ctx.sleep("nap", HOUR)
            b = await ctx.step("b", lambda: counter("b", "B"))
            return [a, b]

        first = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        assert (await first.result()).state == durable.WorkflowState.SLEEPING
        clock.advance(HOUR)
        second = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        result = await second.result()
        assert result.output == ["A", "B"]
        assert counter.calls == {"a": 1, "b": 1}

    async def test_completed_step_is_not_run_again_after_a_crash(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        crash = [True]

        def b() -> object:
            counter("b")
            if crash[0]:
                raise Crash
            return "B"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.step("a", lambda: counter("a", "A"))
            return [a, await ctx.step("b", b)]

        with pytest.raises(Crash):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert await durable.run_workflow("w", wf, None, driver=driver).get_state() == (
            durable.WorkflowState.RUNNING
        )
        crash[0] = False
        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == ["A", "B"]
        assert counter.calls == {"a": 1, "b": 2}

    async def test_replayed_step_returns_the_recorded_value_not_a_new_one(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        values = iter(["first", "second"])

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            value = await ctx.step("pick", lambda: next(values))
            await ctx.sleep("nap", HOUR)
            return value

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        assert (await handle.result()).output == "first"

    async def test_first_run_value_is_the_decoded_form(
        self, driver: durable.Driver
    ) -> None:
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            value = await ctx.step("pair", lambda: (1, (2, 3)))
            seen.append(value)
            return value

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert seen == [[1, [2, 3]]]
        assert result.output == [1, [2, 3]]

    async def test_replayed_value_is_the_same_decoded_form_as_the_first_run(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            seen.append(await ctx.step("pair", lambda: (1, (2, 3))))
            await ctx.sleep("nap", HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        await handle.result()
        assert seen == [[1, [2, 3]], [1, [2, 3]]]


class TestRetries:
    async def test_failing_step_is_retried_until_it_succeeds(
        self, driver: durable.Driver
    ) -> None:
        attempts: list[float] = []
        clock = JumpClock()

        def flaky() -> str:
            attempts.append(clock.now())
            if len(attempts) < 3:
                raise ValueError("not yet")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("flaky", flaky)

        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.output == "ok"
        assert len(attempts) == 3

    async def test_retries_wait_exponential_backoff(
        self, driver: durable.Driver
    ) -> None:
        attempts: list[float] = []
        clock = JumpClock()

        def failing() -> None:
            attempts.append(clock.now() - T0)
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step(
                "call",
                failing,
                max_retries=4,
                retry_backoff_base=0.1,
                retry_backoff_max=0.3,
            )

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        # waits 0.1, 0.2, then capped at 0.3
        assert attempts == pytest.approx([0.0, 0.1, 0.3, 0.6, 0.9])

    async def test_max_retries_three_makes_four_attempts_then_exhausted(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        caught: list[durable.StepExhaustedError] = []

        def failing() -> None:
            counter("call")
            raise ValueError("service down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("call", failing, max_retries=3)
            except durable.StepExhaustedError as exc:
                caught.append(exc)
                raise
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=JumpClock())
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert counter["call"] == 4
        [exhausted] = caught
        assert exhausted.step_name == "call"
        assert exhausted.attempts == 4
        assert exhausted.error.name == "ValueError"
        assert exhausted.error.message == "service down"
        assert failed.value.error.name == "StepExhaustedError"
        assert await handle.get_state() == durable.WorkflowState.FAILED

    async def test_zero_max_retries_makes_one_attempt(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        def failing() -> None:
            counter("call")
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing, max_retries=0)

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["call"] == 1

    @pytest.mark.parametrize(
        "error_type", [durable.CriticalError, durable.RollbackError]
    )
    async def test_critical_and_rollback_errors_skip_retries(
        self, driver: durable.Driver, error_type: type[Exception]
    ) -> None:
        counter = Counter()
        caught: list[BaseException] = []

        def failing() -> None:
            counter("call")
            raise error_type("card declined")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("call", failing, max_retries=3)
            except Exception as exc:
                caught.append(exc)
                raise
            return None

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["call"] == 1
        assert [type(exc) for exc in caught] == [error_type]
        assert failed.value.error.name == error_type.__name__
        assert failed.value.error.message == "card declined"

    async def test_failed_attempt_that_will_retry_is_recorded_with_its_retry_time(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def failing() -> None:
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing, retry_backoff_base=5.0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        entry = (await root_entries(driver, "w"))["call"]
        assert entry.attempts == 1
        assert entry.retry_at == T0 + 5.0


class TestRetriesInYieldMode:
    async def test_long_retry_wait_returns_sleeping_until_the_retry_time(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def failing() -> None:
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing, retry_backoff_base=5.0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert result.sleep_until == T0 + 5.0
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert await driver.get_alarm("w") == T0 + 5.0

    async def test_second_result_continues_the_attempts(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        attempts: list[float] = []

        def flaky() -> str:
            attempts.append(clock.now() - T0)
            if len(attempts) == 1:
                raise ValueError("down")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", flaky, retry_backoff_base=5.0)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(5.0)
        result = await handle.result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == "ok"
        assert attempts == [0.0, 5.0]

    async def test_attempts_count_across_yields_towards_max_retries(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()

        def failing() -> None:
            counter("call")
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step(
                "call",
                failing,
                max_retries=2,
                retry_backoff_base=5.0,
                retry_backoff_max=5.0,
            )

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        for _ in range(2):
            assert (await handle.result()).state == durable.WorkflowState.SLEEPING
            clock.advance(5.0)
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert counter["call"] == 3
        assert failed.value.error.name == "StepExhaustedError"

    async def test_restart_waits_only_the_remaining_backoff(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        attempts: list[float] = []

        def flaky() -> str:
            attempts.append(clock.now() - T0)
            if len(attempts) == 1:
                raise ValueError("down")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", flaky, retry_backoff_base=10.0)

        first = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await first.result()
        clock.advance(4.0)  # the process restarts 4 s into a 10 s backoff
        restarted = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        result = await restarted.result()
        assert result.output == "ok"
        assert attempts == [0.0, 10.0]  # not 4 + 10
        assert clock.sleeps == [T0 + 10.0]

    async def test_restart_after_the_retry_time_retries_at_once(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        attempts: list[float] = []

        def flaky() -> str:
            attempts.append(clock.now() - T0)
            if len(attempts) == 1:
                raise ValueError("down")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", flaky, retry_backoff_base=10.0)

        await durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        ).result()
        clock.advance(60.0)
        result = await durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock
        ).result()
        assert result.output == "ok"
        assert attempts == [0.0, 60.0]
        assert clock.sleeps == []


class TestRetriesInLiveMode:
    async def test_long_retry_wait_sets_state_sleeping_until_the_retry_time(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        attempts = Counter()

        def flaky() -> str:
            attempts("call")
            if attempts["call"] == 1:
                raise ValueError("down")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", flaky, retry_backoff_base=5.0)

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
            assert await handle.get_state() == durable.WorkflowState.SLEEPING
            assert await driver.get_alarm("w") == T0 + 5.0
            clock.advance(5.0)
            assert (await handle.result()).output == "ok"
        assert attempts["call"] == 2

    async def test_eviction_during_a_retry_wait_keeps_the_retry_time(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        attempts: list[float] = []

        def flaky() -> str:
            attempts.append(clock.now() - T0)
            if len(attempts) == 1:
                raise ValueError("down")
            return "ok"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", flaky, retry_backoff_base=5.0)

        async with durable.run_workflow("w", wf, None, driver=driver, clock=clock):
            await clock.wait_for_sleeper()
        assert await driver.get_alarm("w") == T0 + 5.0
        clock.advance(5.0)
        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        assert (await handle.result()).output == "ok"
        assert attempts == [0.0, 5.0]


class TestTimeouts:
    async def test_step_past_its_timeout_fails_with_step_timeout_error(
        self, driver: durable.Driver
    ) -> None:
        caught: list[BaseException] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("slow", lambda: anyio.sleep(10), timeout=0.01)
            except durable.CriticalError as exc:
                caught.append(exc)
            return "handled"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "handled"
        [timed_out] = caught
        assert isinstance(timed_out, durable.StepTimeoutError)
        assert "slow" in str(timed_out)

    async def test_timed_out_step_is_not_retried(self, driver: durable.Driver) -> None:
        counter = Counter()

        async def slow() -> None:
            counter("slow")
            await anyio.sleep(10)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("slow", slow, timeout=0.01, max_retries=3)

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["slow"] == 1
        assert failed.value.error.name == "StepTimeoutError"

    async def test_retry_on_timeout_retries_a_timed_out_step(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def slow_then_fast() -> str:
            counter("call")
            if counter["call"] == 1:
                await anyio.sleep(10)
            return "fast"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step(
                "call", slow_then_fast, timeout=0.01, retry_on_timeout=True
            )

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=JumpClock())
        assert (await handle.result()).output == "fast"
        assert counter["call"] == 2

    async def test_retry_on_timeout_exhausts_like_any_failure(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def slow() -> None:
            counter("call")
            await anyio.sleep(10)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step(
                "call", slow, timeout=0.01, retry_on_timeout=True, max_retries=1
            )

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=JumpClock())
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert counter["call"] == 2
        assert failed.value.error.name == "StepExhaustedError"

    @pytest.mark.parametrize("no_timeout", [None, 0])
    async def test_none_or_zero_timeout_disables_the_timeout(
        self, driver: durable.Driver, no_timeout: float | None
    ) -> None:
        async def takes_a_while() -> str:
            await anyio.sleep(0.02)
            return "done"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", takes_a_while, timeout=no_timeout)

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "done"


class TestEphemeral:
    async def test_ephemeral_step_is_not_written_on_its_own(
        self, driver: durable.Driver
    ) -> None:
        stored_before_next: list[bool] = []

        async def probe() -> None:
            stored_before_next.append("e" in await root_entries(driver, "w"))

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("e", lambda: "E", ephemeral=True)
            await ctx.step("probe", probe)
            return None

        await durable.run_workflow("w", wf, None, driver=driver).result()
        assert stored_before_next == [False]

    async def test_ephemeral_step_is_written_with_the_next_durable_write(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("e", lambda: "E", ephemeral=True)
            await ctx.sleep("nap", HOUR)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        assert (await handle.result()).state == durable.WorkflowState.SLEEPING
        history = await History.load(driver, "w")
        entry = (await root_entries(driver, "w"))["e"]
        assert entry.status == "completed"
        assert history.names[entry.name_index] == "e"

    async def test_ephemeral_step_written_with_a_yield_is_not_run_again(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        clock = JumpClock()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            value = await ctx.step("e", lambda: counter("e", "E"), ephemeral=True)
            await ctx.sleep("nap", HOUR)
            return value

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        assert (await handle.result()).output == "E"
        assert counter["e"] == 1

    async def test_ephemeral_step_lost_in_a_crash_before_the_next_write_runs_again(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        crash = [True]

        def crashing() -> str:
            if crash[0]:
                raise Crash
            return "N"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            e = await ctx.step("e", lambda: counter("e", "E"), ephemeral=True)
            return [e, await ctx.step("n", crashing)]

        with pytest.raises(Crash):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        crash[0] = False
        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == ["E", "N"]
        assert counter["e"] == 2


class TestUnstorableOutput:
    async def test_unstorable_output_fails_the_workflow_naming_the_step(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("make-object", object)

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert failed.value.error.name == "UnstorableValueError"
        assert "make-object" in failed.value.error.message
        assert "make-object" in str(failed.value)

    async def test_unstorable_output_is_a_type_error_naming_the_step(
        self, driver: durable.Driver
    ) -> None:
        caught: list[TypeError] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("make-object", object)
            except TypeError as exc:
                caught.append(exc)
            return None

        await durable.run_workflow("w", wf, None, driver=driver).result()
        [error] = caught
        assert isinstance(error, durable.UnstorableValueError)
        assert "make-object" in str(error)
        assert "object" in error.value_type

    async def test_unstorable_output_is_not_retried(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("set", lambda: counter("set", {1, 2}), max_retries=3)

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["set"] == 1

    async def test_unstorable_failure_is_recorded_against_the_step(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("make-object", object)

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        entry = (await root_entries(driver, "w"))["make-object"]
        assert entry.status == "failed"
        assert entry.failure is not None
        assert entry.failure.kind == "unstorable"

    async def test_replayed_unstorable_failure_is_the_same_type_error(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        counter = Counter()
        caught: list[TypeError] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("make-object", lambda: counter("make-object", object()))
            except TypeError as exc:
                caught.append(exc)
            await ctx.sleep("nap", HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        await handle.result()
        assert counter["make-object"] == 1
        assert [type(exc) for exc in caught] == [durable.UnstorableValueError] * 2
        assert all("make-object" in str(exc) for exc in caught)


class CardDeclinedError(durable.CriticalError):
    """A user's own critical error, caught by its own type."""


class TestCaughtFailures:
    async def test_workflow_that_catches_a_step_failure_continues(
        self, driver: durable.Driver
    ) -> None:
        def declined() -> None:
            raise durable.CriticalError("declined")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("charge", declined)
            except durable.CriticalError:
                return await ctx.step("refund", lambda: "refunded")
            return "charged"

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "refunded"

    @pytest.mark.parametrize(
        ("error_type", "max_retries"),
        [
            (durable.CriticalError, 3),
            (durable.RollbackError, 3),
            (durable.StepExhaustedError, 0),
        ],
    )
    async def test_replayed_failure_raises_the_same_type_without_running_the_step(
        self, driver: durable.Driver, error_type: type[Exception], max_retries: int
    ) -> None:
        counter = Counter()
        clock = JumpClock()
        caught: list[type[BaseException]] = []

        def failing() -> None:
            counter("call")
            if error_type is durable.StepExhaustedError:
                raise ValueError("down")
            raise error_type("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("call", failing, max_retries=max_retries)
            except Exception as exc:
                caught.append(type(exc))
            await ctx.sleep("nap", HOUR)
            return "after"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        assert (await handle.result()).output == "after"
        assert counter["call"] == 1
        assert caught == [error_type, error_type]

    async def test_replayed_failure_keeps_a_user_subclass_of_critical_error(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        caught: list[BaseException] = []

        def declined() -> None:
            raise CardDeclinedError("card declined")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("charge", declined)
            except CardDeclinedError as exc:
                caught.append(exc)
            await ctx.sleep("nap", HOUR)
            return "after"

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        assert (await handle.result()).output == "after"
        assert [type(exc) for exc in caught] == [CardDeclinedError, CardDeclinedError]
        assert str(caught[1]) == "card declined"

    async def test_replayed_exhausted_error_keeps_step_name_and_attempts(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        caught: list[durable.StepExhaustedError] = []

        def failing() -> None:
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("call", failing, max_retries=1)
            except durable.StepExhaustedError as exc:
                caught.append(exc)
            await ctx.sleep("nap", HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        await handle.result()
        first, replayed = caught
        assert (replayed.step_name, replayed.attempts) == (
            first.step_name,
            first.attempts,
        )
        assert replayed.error.name == first.error.name == "ValueError"

    async def test_replayed_timeout_is_a_step_timeout_error(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        caught: list[type[BaseException]] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("slow", lambda: anyio.sleep(10), timeout=0.01)
            except durable.CriticalError as exc:
                caught.append(type(exc))
            await ctx.sleep("nap", HOUR)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(HOUR)
        await handle.result()
        assert caught == [durable.StepTimeoutError, durable.StepTimeoutError]


class TestOnError:
    async def test_each_retried_attempt_reports_a_step_error_event(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        events: list[object] = []

        def failing() -> None:
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step(
                "call", failing, max_retries=2, retry_backoff_base=1.0
            )

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, clock=clock, on_error=events.append
        )
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        step_events = [e for e in events if isinstance(e, durable.StepErrorEvent)]
        assert [(e.attempt, e.will_retry) for e in step_events] == [
            (1, True),
            (2, True),
            (3, False),
        ]
        assert [e.retry_at for e in step_events] == [T0 + 1.0, T0 + 1.0 + 2.0, None]
        assert all(e.step_name == "call" and e.workflow_id == "w" for e in step_events)
        assert step_events[0].error.name == "ValueError"
        assert step_events[-1].kind == "exhausted"

    async def test_failed_workflow_reports_a_workflow_error_event_last(
        self, driver: durable.Driver
    ) -> None:
        events: list[object] = []

        def failing() -> None:
            raise durable.CriticalError("boom")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing)

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, on_error=events.append
        )
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        first, last = events
        assert isinstance(first, durable.StepErrorEvent)
        assert (first.will_retry, first.attempt, first.kind) == (False, 1, "critical")
        assert isinstance(last, durable.WorkflowErrorEvent)
        assert last.workflow_id == "w"
        assert last.error.name == "CriticalError"
        assert last.error.message == "boom"

    async def test_async_on_error_hook_is_awaited(self, driver: durable.Driver) -> None:
        events: list[object] = []

        async def hook(event: object) -> None:
            await anyio.lowlevel.checkpoint()
            events.append(event)

        def failing() -> None:
            raise durable.CriticalError("boom")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing)

        handle = durable.run_workflow("w", wf, None, driver=driver, on_error=hook)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        assert [type(e) for e in events] == [
            durable.StepErrorEvent,
            durable.WorkflowErrorEvent,
        ]


class TestControlFlowIsNotSwallowed:
    async def test_except_exception_around_a_long_sleep_does_not_stop_the_yield(
        self, driver: durable.Driver
    ) -> None:
        swallowed: list[BaseException] = []

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.sleep("nap", HOUR)
            except Exception as exc:
                swallowed.append(exc)
            return "woke"

        handle = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert swallowed == []

    async def test_except_exception_around_a_retry_wait_does_not_stop_the_yield(
        self, driver: durable.Driver
    ) -> None:
        swallowed: list[BaseException] = []

        def failing() -> None:
            raise ValueError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            try:
                await ctx.step("call", failing, retry_backoff_base=5.0)
            except Exception as exc:
                swallowed.append(exc)
            return "gave up"

        handle = durable.run_workflow("w", wf, None, driver=driver, mode="yield")
        result = await handle.result()
        assert result.state == durable.WorkflowState.SLEEPING
        assert swallowed == []

    async def test_except_exception_around_a_wait_does_not_swallow_eviction(
        self, driver: durable.Driver
    ) -> None:
        swallowed: list[BaseException] = []
        started = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            started.set()
            try:
                await ctx.sleep("nap", HOUR)
            except Exception as exc:
                swallowed.append(exc)
            return "woke"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await started.wait()  # the workflow is inside ctx.sleep now
            handle.evict()
            with pytest.raises(durable.EvictedError):
                await handle.result()
        assert swallowed == []
        assert await handle.get_state() == durable.WorkflowState.SLEEPING

    async def test_except_exception_around_a_call_after_eviction_does_not_swallow_it(
        self, driver: durable.Driver
    ) -> None:
        swallowed: list[BaseException] = []
        entered, evicted = anyio.Event(), anyio.Event()

        async def wait_for_eviction() -> str:
            entered.set()
            await evicted.wait()
            return "A"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("a", wait_for_eviction)
            try:
                await ctx.step("b", lambda: "B")
            except Exception as exc:
                swallowed.append(exc)
            return "done"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            handle.evict()
            evicted.set()
            with pytest.raises(durable.EvictedError):
                await handle.result()
        assert swallowed == []
        assert await handle.get_state() == durable.WorkflowState.PENDING
