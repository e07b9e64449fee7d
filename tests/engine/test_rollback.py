"""Rollback checkpoints and step rollback handlers (sagas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import durable
from durable.testing import FaultyDriver, SimulatedCrash

from ._support import Counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Workflow = Callable[[durable.WorkflowContext, object], Awaitable[object]]


def no_cars() -> str:
    raise durable.CriticalError("no cars left")


class Ledger:
    """Records which compensations ran, in order."""

    def __init__(self) -> None:
        self.undone: list[str] = []

    async def undo(self, rctx: durable.RollbackContext, output: object) -> None:
        self.undone.append(f"{rctx.step_name}={output}")


def trip(ledger: Ledger, counter: Counter) -> Workflow:
    async def wf(ctx: durable.WorkflowContext, _: object) -> object:
        await ctx.rollback_checkpoint("start")
        await ctx.step("flight", lambda: counter("flight", "F"), rollback=ledger.undo)
        await ctx.step("hotel", lambda: counter("hotel", "H"), rollback=ledger.undo)
        await ctx.step("car", no_cars, rollback=ledger.undo)
        return "booked"

    return wf


class TestSaga:
    async def test_the_car_fails_and_hotel_then_flight_are_cancelled(
        self, driver: durable.Driver
    ) -> None:
        ledger, counter = Ledger(), Counter()
        handle = durable.run_workflow(
            "trip", trip(ledger, counter), None, driver=driver
        )
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert failed.value.error.name == "CriticalError"
        assert "no cars left" in failed.value.error.message
        assert ledger.undone == ["hotel=H", "flight=F"]
        assert await handle.get_state() == durable.WorkflowState.FAILED

    async def test_a_failed_workflow_stays_failed_and_compensates_nothing_again(
        self, driver: durable.Driver
    ) -> None:
        ledger, counter = Ledger(), Counter()
        handle = durable.run_workflow(
            "trip", trip(ledger, counter), None, driver=driver
        )
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        assert ledger.undone == ["hotel=H", "flight=F"]
        assert counter.calls == {"flight": 1, "hotel": 1}

    async def test_a_handler_before_any_checkpoint_raises_rollback_checkpoint_error(
        self, driver: durable.Driver
    ) -> None:
        ledger = Ledger()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("flight", lambda: "F", rollback=ledger.undo)
            return None

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert failed.value.error.name == "RollbackCheckpointError"
        assert ledger.undone == []

    async def test_a_workflow_that_completes_runs_no_handler(
        self, driver: durable.Driver
    ) -> None:
        ledger = Ledger()

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            return await ctx.step("flight", lambda: "F", rollback=ledger.undo)

        result = await durable.run_workflow("w", wf, None, driver=driver).result()
        assert result.output == "F"
        assert ledger.undone == []


class TestExactlyOnceAcrossCrashes:
    async def test_each_handler_runs_once_whatever_write_the_crash_hits(
        self,
    ) -> None:
        reference = durable.MemoryDriver()
        counting = FaultyDriver(reference)
        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow(
                "trip", trip(Ledger(), Counter()), None, driver=counting
            ).result()
        writes = counting.writes
        for crash_at in range(1, writes + 1):
            ledger, counter = Ledger(), Counter()
            store = durable.MemoryDriver()
            faulty = FaultyDriver(store, fail_at=crash_at, mode="crash")
            wf = trip(ledger, counter)
            with pytest.raises((SimulatedCrash, durable.WorkflowFailedError)):
                await durable.run_workflow("trip", wf, None, driver=faulty).result()
            with pytest.raises(durable.WorkflowFailedError):
                await durable.run_workflow("trip", wf, None, driver=store).result()
            state = await durable.run_workflow(
                "trip", wf, None, driver=store
            ).get_state()
            assert state == durable.WorkflowState.FAILED, crash_at
            # only a handler cut off before its completion was recorded runs again
            ran = {name: ledger.undone.count(name) for name in set(ledger.undone)}
            assert set(ran) == {"flight=F", "hotel=H"}, crash_at
            assert sum(ran.values()) <= 3, (crash_at, ledger.undone)
            assert ledger.undone.index("hotel=H") < len(ledger.undone) - 1, crash_at
            assert ledger.undone[-1] == "flight=F", (crash_at, ledger.undone)


class TestFailingHandlers:
    async def test_a_failing_handler_is_reported_and_retried_by_a_later_run(
        self, driver: durable.Driver
    ) -> None:
        events: list[object] = []
        ran: list[str] = []
        broken = [True]

        async def cancel_hotel(rctx: durable.RollbackContext, output: object) -> None:
            if broken[0]:
                raise ConnectionError("hotel API down")
            ran.append("hotel")

        async def cancel_flight(rctx: durable.RollbackContext, output: object) -> None:
            ran.append("flight")

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            await ctx.step("flight", lambda: "F", rollback=cancel_flight)
            await ctx.step("hotel", lambda: "H", rollback=cancel_hotel)
            await ctx.step("car", no_cars)
            return None

        handle = durable.run_workflow(
            "w", wf, None, driver=driver, on_error=events.append
        )
        with pytest.raises(durable.WorkflowFailedError):
            await handle.result()
        assert await handle.get_state() == durable.WorkflowState.ROLLING_BACK
        rollback_events = [
            e for e in events if isinstance(e, durable.RollbackErrorEvent)
        ]
        assert [e.step_name for e in rollback_events] == ["hotel"]
        assert rollback_events[0].error.name == "ConnectionError"
        assert ran == []
        broken[0] = False
        with pytest.raises(durable.WorkflowFailedError) as failed:
            await handle.result()
        assert failed.value.error.name == "CriticalError"  # the original error
        assert ran == ["hotel", "flight"]
        assert await handle.get_state() == durable.WorkflowState.FAILED


class TestWhereHandlersLive:
    async def test_steps_in_the_branches_of_a_failed_join_are_compensated(
        self, driver: durable.Driver
    ) -> None:
        ledger = Ledger()

        async def good(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("reserve", lambda: "R", rollback=ledger.undo)

        async def bad(ctx: durable.WorkflowContext) -> object:
            await ctx.step("charge", lambda: "C", rollback=ledger.undo)
            return await ctx.step("ship", no_cars)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            return await ctx.join("j", {"good": good, "bad": bad})

        with pytest.raises(durable.WorkflowFailedError) as failed:
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert failed.value.error.name == "JoinError"
        assert sorted(ledger.undone) == ["charge=C", "reserve=R"]

    async def test_steps_of_a_race_winner_and_loser_are_compensated(
        self, driver: durable.Driver
    ) -> None:
        ledger = Ledger()

        async def winner(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("fast", lambda: "W", rollback=ledger.undo)

        async def loser(ctx: durable.WorkflowContext) -> object:
            await ctx.sleep("slow", 3600)
            return "L"

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            await ctx.race("r", {"winner": winner, "loser": loser})
            await ctx.step("boom", no_cars)
            return None

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert ledger.undone == ["fast=W"]

    async def test_steps_in_every_loop_iteration_are_compensated_newest_first(
        self, driver: durable.Driver
    ) -> None:
        ledger = Ledger()

        async def body(ctx: durable.WorkflowContext, i: object) -> object:
            n = int(i)  # type: ignore[call-overload]
            await ctx.step("charge", lambda: n, rollback=ledger.undo)
            return durable.Loop.break_(n) if n == 4 else durable.Loop.continue_(n + 1)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            await ctx.loop("l", body, state=0, history_every=2, history_keep=1)
            await ctx.step("boom", no_cars)
            return None

        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=driver).result()
        assert ledger.undone == [f"charge={i}" for i in (4, 3, 2, 1, 0)]

    async def test_join_handlers_are_found_again_after_a_crash_before_rollback(
        self,
    ) -> None:
        ledger = Ledger()
        store = durable.MemoryDriver()

        async def branch(ctx: durable.WorkflowContext) -> object:
            return await ctx.step("book", lambda: "B", rollback=ledger.undo)

        async def wf(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.rollback_checkpoint("start")
            await ctx.join("j", {"a": branch, "b": branch})
            await ctx.step("boom", no_cars)
            return None

        # count the writes of a clean run to crash right after the error is stored
        counting = FaultyDriver(durable.MemoryDriver())
        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=counting).result()
        ledger.undone.clear()
        # the write that stores rolling_back comes just before the first handler's
        crash_at = counting.writes - 2
        faulty = FaultyDriver(store, fail_at=crash_at, mode="crash")
        with pytest.raises((SimulatedCrash, durable.WorkflowFailedError)):
            await durable.run_workflow("w", wf, None, driver=faulty).result()
        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow("w", wf, None, driver=store).result()
        assert sorted(set(ledger.undone)) == ["book=B"]
        assert len(ledger.undone) >= 2  # both branches' steps were compensated


class TestLoopsAcrossCrashes:
    async def test_every_iteration_is_compensated_once_whatever_write_the_crash_hits(
        self,
    ) -> None:
        def workflow(ledger: Ledger) -> Workflow:
            async def body(ctx: durable.WorkflowContext, i: object) -> object:
                n = int(i)  # type: ignore[call-overload]
                await ctx.step("charge", lambda: n, rollback=ledger.undo)
                return (
                    durable.Loop.break_(n) if n == 5 else durable.Loop.continue_(n + 1)
                )

            async def wf(ctx: durable.WorkflowContext, _: object) -> object:
                await ctx.rollback_checkpoint("start")
                await ctx.loop("l", body, state=0, history_every=2, history_keep=1)
                await ctx.step("boom", no_cars)
                return None

            return wf

        counting = FaultyDriver(durable.MemoryDriver())
        with pytest.raises(durable.WorkflowFailedError):
            await durable.run_workflow(
                "w", workflow(Ledger()), None, driver=counting
            ).result()
        expected = {f"charge={i}" for i in range(6)}
        for crash_at in range(1, counting.writes + 1):
            ledger, store = Ledger(), durable.MemoryDriver()
            faulty = FaultyDriver(store, fail_at=crash_at, mode="crash")
            with pytest.raises((SimulatedCrash, durable.WorkflowFailedError)):
                await durable.run_workflow(
                    "w", workflow(ledger), None, driver=faulty
                ).result()
            with pytest.raises(durable.WorkflowFailedError):
                await durable.run_workflow(
                    "w", workflow(ledger), None, driver=store
                ).result()
            assert set(ledger.undone) == expected, (crash_at, ledger.undone)
            # only the handler cut off by the crash may have run twice
            assert len(ledger.undone) <= len(expected) + 1, (crash_at, ledger.undone)
            handle = durable.run_workflow("w", workflow(ledger), None, driver=store)
            assert await handle.get_state() == durable.WorkflowState.FAILED
