"""The one place that reads time.

Rule: every deadline the engine stores or waits for is UNIX epoch seconds from a
`Clock`; `durable.testing` swaps in a clock that skips time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import anyio


class Clock(ABC):
    """Source of the current time and of timed waits, in UNIX epoch seconds."""

    @abstractmethod
    def now(self) -> float:
        """Return the current time in epoch seconds."""

    @abstractmethod
    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``; cancellable like any anyio wait."""

    def cancel_scope(self, deadline: float) -> anyio.CancelScope:
        """Return a cancel scope that cancels itself once ``now() >= deadline``.

        The engine bounds step timeouts with it. This default maps the deadline
        onto anyio's own clock; a clock with virtual time overrides it to cancel
        the scope when its time passes *deadline*.
        """
        return anyio.CancelScope(
            deadline=anyio.current_time() + max(0.0, deadline - self.now())
        )


class SystemClock(Clock):
    """Wall-clock time from the operating system."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep with anyio until the wall clock reaches *deadline*."""
        await anyio.sleep(max(0.0, deadline - time.time()))


SYSTEM_CLOCK = SystemClock()
