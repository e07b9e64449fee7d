"""run_workflow and WorkflowHandle: running, evicting, cancelling, waking, recovering."""

from __future__ import annotations

import anyio
import pytest

import durable

from ._support import T0, Counter, CountingDriver, JumpClock, ManualClock, root_entries

HOUR = 3600.0


async def _sleepy(ctx: durable.WorkflowContext, _: object) -> object:
    await ctx.sleep("nap", HOUR)
    return "awake"


class TestResult:
    async def test_result_inside_async_with_returns_the_background_run(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, name: object) -> object:
            return await ctx.step("greet", lambda: f"hello {name}")

        handle = durable.run_workflow("w", wf, "ada", driver=driver)
        async with handle:
            result = await handle.result()
        assert result.state == durable.WorkflowState.COMPLETED
        assert result.output == "hello ada"
        assert result.sleep_until is None
        assert result.waiting_for is None

    async def test_result_outside_async_with_runs_in_the_calling_task(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return anyio.get_current_task().id

        handle = durable.run_workflow("w", wf, None, driver=driver)
        result = await handle.result()
        assert result.output == anyio.get_current_task().id

    async def test_run_workflow_performs_no_io(self) -> None:
        driver = CountingDriver()
        durable.run_workflow("w", _sleepy, None, driver=driver)
        assert driver.scans == 0
        assert driver.batch_sizes == []

    async def test_workflow_id_is_on_the_handle_and_the_context(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return ctx.workflow_id

        handle = durable.run_workflow("order-7", wf, None, driver=driver)
        assert handle.workflow_id == "order-7"
        assert (await handle.result()).output == "order-7"

    async def test_failed_workflow_raises_workflow_failed_error_with_the_error(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            raise KeyError("missing")

        handle = durable.run_workflow("w", wf, None, driver=driver)
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert failed.value.error.name == "KeyError"
        assert "missing" in failed.value.error.message
        assert "KeyError" in failed.value.error.traceback
        assert await handle.get_state() == durable.WorkflowState.FAILED

    async def test_failed_workflow_raises_the_stored_error_on_a_later_run(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            counter("body")
            raise KeyError("missing")

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        with pytest.raises(durable.WorkflowFailedError) as again:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert again.value.error.name == "KeyError"
        assert counter["body"] == 1

    async def test_failure_inside_async_with_is_raised_by_result(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            raise KeyError("missing")

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            with pytest.raises(durable.WorkflowFailedError):
                await handle.result()

    async def test_unstorable_workflow_output_fails_the_workflow(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return object()

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert failed.value.error.name == "UnstorableValueError"


class TestStoredRun:
    async def test_state_is_pending_for_an_unknown_workflow(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("nobody", _sleepy, None, driver=driver)
        assert await handle.get_state() == durable.WorkflowState.PENDING
        assert await handle.get_output() is None

    async def test_state_and_output_are_stored_once_completed(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return {"total": await ctx.step("sum", lambda: 3)}

        await durable.run_workflow("w", wf, None, driver=driver).result()
        reader = durable.run_workflow("w", wf, None, driver=driver)
        assert await reader.get_state() == durable.WorkflowState.COMPLETED
        assert await reader.get_output() == {"total": 3}

    async def test_output_is_none_until_completed(self, driver: durable.Driver) -> None:
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, mode="yield")
        await handle.result()
        assert await handle.get_output() is None

    async def test_stored_input_is_reused_on_later_runs(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        seen: list[object] = []

        async def wf(ctx: durable.WorkflowContext, order: object) -> object:
            seen.append(order)
            await ctx.sleep("nap", HOUR)
            return order

        first = durable.run_workflow(
            "w", wf, "first", driver=driver, mode="yield", clock=clock
        )
        await first.result()
        clock.advance(HOUR)
        second = durable.run_workflow("w", wf, "second", driver=driver, clock=clock)
        assert (await second.result()).output == "first"
        assert seen == ["first", "first"]

    async def test_input_is_the_decoded_form_on_the_first_run(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, given: object) -> object:
            return given

        result = await durable.run_workflow("w", wf, (1, 2), driver=driver).result()
        assert result.output == [1, 2]

    async def test_unstorable_input_is_a_type_error(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", _sleepy, object(), driver=driver)
        with pytest.raises(TypeError):
            await handle.result()
        assert await handle.get_state() == durable.WorkflowState.PENDING

    async def test_completed_workflow_returns_its_output_without_running_anything(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            counter("body")
            return await ctx.step("a", lambda: counter("a", "A"))

        await durable.run_workflow("w", wf, None, driver=driver).result()
        again = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert again.state == durable.WorkflowState.COMPLETED
        assert again.output == "A"
        assert counter.calls == {"body": 1, "a": 1}

    async def test_workflows_are_stored_apart_by_id(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, given: object) -> object:
            return await ctx.step("echo", lambda: given)

        ids = ["a", "a\x00", "a\x00b", "a/b", "ab", "b"]
        for workflow_id in ids:
            await durable.run_workflow(
                workflow_id, wf, workflow_id, driver=driver
            ).result()
        for workflow_id in ids:
            handle = durable.run_workflow(workflow_id, wf, None, driver=driver)
            assert await handle.get_output() == workflow_id


class TestArguments:
    async def test_unknown_mode_is_a_value_error(self, driver: durable.Driver) -> None:
        with pytest.raises(ValueError, match="mode"):
            durable.run_workflow("w", _sleepy, None, driver=driver, mode="x")  # type: ignore[arg-type]

    async def test_empty_workflow_id_is_a_value_error(
        self, driver: durable.Driver
    ) -> None:
        with pytest.raises(ValueError, match="workflow_id"):
            durable.run_workflow("", _sleepy, None, driver=driver)

    async def test_second_concurrent_run_of_the_same_id_is_busy(
        self, driver: durable.Driver
    ) -> None:
        entered, release = anyio.Event(), anyio.Event()

        async def hold() -> None:
            entered.set()
            await release.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("hold", hold)
            return "done"

        first = durable.run_workflow("w", wf, None, driver=driver)
        async with first:
            await entered.wait()
            with pytest.raises(durable.WorkflowBusyError):
                await durable.run_workflow("w", wf, None, driver=driver).result()
            release.set()
            assert (await first.result()).output == "done"

    async def test_runs_of_different_ids_go_on_concurrently(
        self, driver: durable.Driver
    ) -> None:
        both = anyio.Event()
        entered: set[str] = set()

        async def meet(workflow_id: str) -> None:
            entered.add(workflow_id)
            if len(entered) == 2:
                both.set()
            await both.wait()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("meet", lambda: meet(ctx.workflow_id))
            return ctx.workflow_id

        a = durable.run_workflow("a", wf, None, driver=driver)
        b = durable.run_workflow("b", wf, None, driver=driver)
        async with a, b:
            assert (await a.result()).output == "a"
            assert (await b.result()).output == "b"


class TestEviction:
    async def test_leaving_the_block_early_lets_the_running_step_finish_and_record(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        entered = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def long_step() -> str:
                counter("long")
                entered.set()
                while not ctx.is_evicted():  # noqa: ASYNC110 - eviction has no event
                    await anyio.sleep(0.001)
                return "finished"

            await ctx.step("long", long_step)
            await ctx.step("next", lambda: counter("next"))
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
        entry = (await root_entries(driver, "w"))["long"]
        assert entry.status == "completed"
        assert counter.calls == {"long": 1}

    async def test_leaving_the_block_early_leaves_the_workflow_pending(
        self, driver: durable.Driver
    ) -> None:
        entered = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def long_step() -> None:
                entered.set()
                while not ctx.is_evicted():  # noqa: ASYNC110 - eviction has no event
                    await anyio.sleep(0.001)

            await ctx.step("long", long_step)
            await ctx.step("next", lambda: None)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
        assert await handle.get_state() == durable.WorkflowState.PENDING
        assert await driver.get_alarm("w") is not None  # due, so a host runs it

    async def test_leaving_the_block_during_a_sleep_leaves_it_sleeping(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert await driver.get_alarm("w") == T0 + HOUR

    async def test_later_run_resumes_without_rerunning_completed_steps(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        entered = anyio.Event()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            async def long_step() -> str:
                counter("long")
                entered.set()
                while not ctx.is_evicted():  # noqa: ASYNC110 - eviction has no event
                    await anyio.sleep(0.001)
                return "L"

            a = await ctx.step("a", lambda: counter("a", "A"))
            long = await ctx.step("long", long_step)
            b = await ctx.step("b", lambda: counter("b", "B"))
            return [a, long, b]

        async with durable.run_workflow("w", wf, None, driver=driver):
            await entered.wait()
        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == ["A", "L", "B"]
        assert counter.calls == {"a": 1, "long": 1, "b": 1}

    async def test_result_after_evict_raises_evicted_error(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
            handle.evict()
            with pytest.raises(durable.EvictedError):
                await handle.result()

    async def test_evicted_sleep_resumes_and_completes_later(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
        clock.advance(HOUR)
        result = await durable.run_workflow(
            "w", _sleepy, None, driver=driver, clock=clock
        ).result()
        assert result.output == "awake"

    async def test_is_evicted_is_false_until_eviction_is_requested(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return ctx.is_evicted()

        assert (
            await durable.run_workflow("w", wf, None, driver=driver).result()
        ).output is False


class TestCancel:
    async def test_cancel_stops_a_running_step_at_once(
        self, driver: durable.Driver
    ) -> None:
        entered = anyio.Event()
        outcome: list[str] = []

        async def forever() -> None:
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("forever", forever)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            await handle.cancel()
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()
        assert outcome == ["cancelled"]

    async def test_cancelled_workflow_is_stored_cancelled_without_the_step(
        self, driver: durable.Driver
    ) -> None:
        entered = anyio.Event()

        async def forever() -> None:
            entered.set()
            await anyio.sleep_forever()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("done", lambda: "D")
            await ctx.step("forever", forever)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            await handle.cancel()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED
        assert await driver.get_alarm("w") is None
        entries = await root_entries(driver, "w")
        assert entries["done"].status == "completed"
        assert "forever" not in entries or entries["forever"].status != "completed"

    async def test_later_run_of_a_cancelled_workflow_raises_cancelled(
        self, driver: durable.Driver
    ) -> None:
        entered = anyio.Event()
        counter = Counter()

        async def forever() -> None:
            counter("forever")
            entered.set()
            await anyio.sleep_forever()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("forever", forever)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            await handle.cancel()
        with pytest.raises(durable.WorkflowCancelledError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert counter["forever"] == 1

    async def test_cancel_wins_over_a_step_that_completes_anyway(
        self, driver: durable.Driver
    ) -> None:
        entered, release = anyio.Event(), anyio.Event()

        async def stubborn() -> str:
            entered.set()
            with anyio.CancelScope(shield=True):
                await release.wait()
            return "finished"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("stubborn", stubborn)

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            await handle.cancel()
            release.set()
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED
        assert await handle.get_output() is None
        assert "stubborn" not in await root_entries(driver, "w")

    async def test_cancel_through_another_handle_stops_the_run_in_process(
        self, driver: durable.Driver
    ) -> None:
        entered = anyio.Event()

        async def forever() -> None:
            entered.set()
            await anyio.sleep_forever()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("forever", forever)
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        async with handle:
            await entered.wait()
            await durable.run_workflow("w", wf, None, driver=driver).cancel()
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED

    async def test_cancel_of_a_sleeping_run_in_process_stops_it(
        self, driver: durable.Driver
    ) -> None:
        clock = ManualClock()
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, clock=clock)
        async with handle:
            await clock.wait_for_sleeper()
            await handle.cancel()
            with pytest.raises(durable.WorkflowCancelledError):
                await handle.result()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED

    async def test_cancel_of_a_stored_sleeping_workflow_clears_its_alarm(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, mode="yield")
        await handle.result()
        await handle.cancel()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED
        assert await driver.get_alarm("w") is None
        with pytest.raises(durable.WorkflowCancelledError):
            await handle.result()

    async def test_cancel_of_a_never_started_workflow_prevents_it_from_running(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            counter("body")
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.cancel()
        assert await handle.get_state() == durable.WorkflowState.CANCELLED
        with pytest.raises(durable.WorkflowCancelledError):
            await handle.result()
        assert counter["body"] == 0

    async def test_cancel_of_a_completed_workflow_keeps_it_completed(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return "done"

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.result()
        await handle.cancel()
        assert await handle.get_state() == durable.WorkflowState.COMPLETED
        assert await handle.get_output() == "done"


class TestWake:
    async def test_wake_of_an_unknown_workflow_raises_unknown_workflow_error(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("nobody", _sleepy, None, driver=driver)
        with pytest.raises(durable.UnknownWorkflowError) as unknown:
            await handle.wake()
        assert unknown.value.workflow_id == "nobody"

    async def test_wake_sets_the_alarm_of_a_sleeping_workflow_to_now(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()
        handle = durable.run_workflow(
            "w", _sleepy, None, driver=driver, mode="yield", clock=clock
        )
        await handle.result()
        clock.advance(60.0)
        await handle.wake()
        assert await driver.get_alarm("w") == T0 + 60.0
        assert await handle.get_state() == durable.WorkflowState.SLEEPING

    async def test_wake_of_a_completed_workflow_sets_no_alarm(
        self, driver: durable.Driver
    ) -> None:
        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return None

        handle = durable.run_workflow("w", wf, None, driver=driver)
        await handle.result()
        await handle.wake()
        assert await driver.get_alarm("w") is None


class TestRecover:
    async def test_recover_reruns_an_exhausted_workflow_from_the_failed_step(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        broken = [True]

        def flaky() -> str:
            counter("flaky")
            if broken[0]:
                raise ConnectionError("down")
            return "F"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            a = await ctx.step("a", lambda: counter("a", "A"))
            return [a, await ctx.step("flaky", flaky, max_retries=1)]

        clock = JumpClock()
        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        broken[0] = False
        await handle.recover()
        assert await handle.get_state() == durable.WorkflowState.PENDING
        result = await handle.result()
        assert result.output == ["A", "F"]
        assert counter.calls == {"a": 1, "flaky": 3}

    async def test_recover_keeps_a_failure_the_workflow_caught_and_got_past(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()
        broken = [True]

        def lookup() -> str:
            counter("lookup")
            raise durable.CriticalError("no such customer")

        def charge() -> str:
            counter("charge")
            if broken[0]:
                raise durable.CriticalError("gateway down")
            return "charged"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            customer = None
            try:
                customer = await ctx.step("lookup", lookup)
            except durable.CriticalError:
                customer = "guest"  # the workflow goes on without a customer
            return await ctx.step("charge", charge) + f" {customer}"

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=JumpClock())
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        broken[0] = False
        await handle.recover()
        result = await handle.result()
        assert result.output == "charged guest"
        assert counter.calls == {"lookup": 1, "charge": 2}

    async def test_recover_gives_the_failed_step_its_retries_again(
        self, driver: durable.Driver
    ) -> None:
        counter = Counter()

        def failing() -> None:
            counter("call")
            raise ConnectionError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing, max_retries=1)

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=JumpClock())
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        await handle.recover()
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        assert counter["call"] == 4

    async def test_recover_schedules_the_workflow_to_run_now(
        self, driver: durable.Driver
    ) -> None:
        clock = JumpClock()

        def failing() -> None:
            raise durable.CriticalError("down")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            return await ctx.step("call", failing)

        handle = durable.run_workflow("w", wf, None, driver=driver, clock=clock)
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        assert await driver.get_alarm("w") is None
        await handle.recover()
        assert await driver.get_alarm("w") == T0

    async def test_recover_of_an_unknown_workflow_raises_unknown_workflow_error(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("nobody", _sleepy, None, driver=driver)
        with pytest.raises(durable.UnknownWorkflowError):
            await handle.recover()

    async def test_recover_of_a_workflow_that_did_not_fail_changes_nothing(
        self, driver: durable.Driver
    ) -> None:
        handle = durable.run_workflow("w", _sleepy, None, driver=driver, mode="yield")
        result = await handle.result()
        await handle.recover()
        assert await handle.get_state() == durable.WorkflowState.SLEEPING
        assert await driver.get_alarm("w") == result.sleep_until
