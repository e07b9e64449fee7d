"""hypothesis strategies for workflow tests (needs ``hypothesis``).

Rule: nothing else in durable imports this module, so hypothesis stays optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from hypothesis import strategies as st

from durable import MemoryDriver, run_workflow

from ._clock import TestClock
from ._faulty import FaultyDriver, SimulatedCrash

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from durable import Driver, WorkflowContext

__all__ = ["crash_points", "modes", "run_with_crash"]


def crash_points(max_writes: int = 50) -> st.SearchStrategy[int | None]:
    """Write numbers to crash at (1-based), or ``None`` for no crash at all.

    A crash point past the workflow's last write simply never strikes.
    """
    return st.one_of(st.none(), st.integers(min_value=1, max_value=max_writes))


def modes() -> st.SearchStrategy[Literal["live", "yield"]]:
    """The two run modes, ``"live"`` and ``"yield"``."""
    return st.sampled_from(["live", "yield"])


async def run_with_crash(
    workflow: Callable[[WorkflowContext, object], Awaitable[object]],
    input: object,
    crash_at: int | None,
    mode: Literal["live", "yield"] = "live",
    *,
    messages: list[tuple[str, object]] | None = None,
) -> object:
    """Run *workflow* on a fresh store, crash at write *crash_at*, resume; return output.

    Time is a `TestClock` with autojump, so sleeps cost nothing. In ``"yield"`` mode
    the workflow runs again at each wake time until it completes.

    Raises:
        WorkflowFailedError: the workflow failed.
        HistoryDivergedError: the resumed run did not match the stored history.
    """
    async with MemoryDriver() as store, TestClock(autojump=True) as clock:
        for name, body in messages or ():
            await run_workflow("w", workflow, input, driver=store).message(name, body)
        faulty = FaultyDriver(store, fail_at=crash_at, mode="crash")
        crashed = False
        try:
            return await _finish(workflow, input, faulty, mode, clock)
        except* SimulatedCrash:
            crashed = True
        if not crashed:  # pragma: no cover - the try block returned
            raise RuntimeError("unreachable")
        return await _finish(workflow, input, store, mode, clock)


async def _finish(
    workflow: Callable[[WorkflowContext, object], Awaitable[object]],
    input: object,
    driver: Driver,
    mode: Literal["live", "yield"],
    clock: TestClock,
) -> object:
    handle = run_workflow("w", workflow, input, driver=driver, mode=mode, clock=clock)
    while True:
        result = await handle.result()
        if result.sleep_until is None:
            return result.output
        clock.jump(max(0.0, result.sleep_until - clock.now()))
