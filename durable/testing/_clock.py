"""TestClock: virtual epoch time that moves only when a test (or autojump) moves it.

Rule: time never goes backwards, and every wait whose deadline time reaches is woken
(sleepers) or cancelled (cancel scopes) in the same call that moves it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Final, Self

import anyio
import anyio.lowlevel

from durable import Clock

if TYPE_CHECKING:
    from types import TracebackType

_SETTLE_CHECKPOINTS: Final = 20

DEFAULT_START: Final = 1_700_000_000.0
"""Epoch seconds where a `TestClock` starts unless told otherwise (Nov 2023)."""


class TestClock(Clock):
    """Virtual epoch time for tests: `jump` moves it, or ``autojump`` skips idle time.

    With ``autojump=True``, use the clock as ``async with TestClock(autojump=True)``:
    whenever every task is blocked, time jumps to the earliest pending deadline, so a
    workflow that sleeps for 30 days finishes in milliseconds (like trio's
    ``MockClock(autojump_threshold=0)``, but on asyncio and trio alike).

    Example:
        async with TestClock(autojump=True) as clock:
            await durable.run_workflow("w", wf, None, driver=d, clock=clock).result()
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, start: float = DEFAULT_START, *, autojump: bool = False) -> None:
        self._now = float(start)
        self.autojump = autojump
        self._sleepers: dict[object, tuple[float, anyio.Event]] = {}
        self._scopes: list[tuple[float, weakref.ref[anyio.CancelScope]]] = []
        self._changed: anyio.Event | None = None  # set when a deadline is added
        self._stalled: anyio.Event | None = (
            None  # set when autojump finds nothing to do
        )
        self._task_group: anyio.abc.TaskGroup | None = None

    def now(self) -> float:
        """Return the virtual time in epoch seconds."""
        return self._now

    def jump(self, seconds: float) -> None:
        """Move time forward by *seconds*, waking every wait that falls due."""
        if not seconds >= 0:
            raise ValueError(f"a TestClock only moves forward, not by {seconds!r}")
        self._advance_to(self._now + seconds)

    def next_deadline(self) -> float | None:
        """Return the earliest deadline a task waits for, or ``None``."""
        self._scopes = [(d, ref) for d, ref in self._scopes if ref() is not None]
        deadlines = [d for d, _ in self._sleepers.values()]
        deadlines.extend(d for d, _ in self._scopes)
        return min(deadlines, default=None)

    async def sleep_until(self, deadline: float) -> None:
        """Return once virtual time reaches *deadline* (never on its own unless autojump)."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        token = object()
        event = anyio.Event()
        self._sleepers[token] = (deadline, event)
        self._deadline_added()
        try:
            await event.wait()
        finally:
            del self._sleepers[token]

    def cancel_scope(self, deadline: float) -> anyio.CancelScope:
        """Return a cancel scope cancelled once virtual time reaches *deadline*."""
        scope = anyio.CancelScope()
        if deadline <= self._now:
            scope.cancel()
        else:
            # a weak reference: a scope the engine has left (and dropped) no longer
            # holds a deadline that autojump would skip to
            self._scopes.append((deadline, weakref.ref(scope)))
            self._deadline_added()
        return scope

    def _deadline_added(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _advance_to(self, when: float) -> None:
        self._now = max(self._now, when)
        for deadline, event in list(self._sleepers.values()):
            if deadline <= self._now:
                event.set()
        keep = []
        for deadline, ref in self._scopes:
            scope = ref()
            if scope is None:
                continue
            if deadline <= self._now:
                scope.cancel()
            else:
                keep.append((deadline, ref))
        self._scopes = keep

    async def _autojump(self) -> None:
        while True:
            # asyncio's wait_all_tasks_blocked sleeps 0.1 s of real time whenever it
            # finds a runnable task; letting ready tasks run first avoids most of those
            for _ in range(_SETTLE_CHECKPOINTS):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            # asyncio: a task whose wake-up is still queued (say, a task group whose
            # last child just ended) looks blocked; a second look lets it run first
            await anyio.wait_all_tasks_blocked()
            deadline = self.next_deadline()
            if deadline is None:
                if self._stalled is not None:
                    self._stalled.set()
                self._changed = changed = anyio.Event()
                await changed.wait()
            else:
                self._advance_to(deadline)

    async def __aenter__(self) -> Self:
        if self.autojump:
            if self._task_group is not None:
                raise RuntimeError(
                    "this TestClock's `async with` block is already open"
                )
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            task_group.start_soon(self._autojump)
            self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            # the block's own exception (if any) goes on propagating unwrapped
            await task_group.__aexit__(None, None, None)
