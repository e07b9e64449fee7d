"""Helpers for the engine tests: fake clocks, a counting driver, history snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

import durable
from durable._history import Entry, History
from durable._keys import encode_int

if TYPE_CHECKING:
    from durable._drivers import Batch

T0 = 1_700_000_000.0  # a fixed epoch second where fake clocks start


class JumpClock(durable.Clock):
    """Virtual epoch time: every wait jumps straight to its deadline (and is logged)."""

    def __init__(self, start: float = T0) -> None:
        self.time = start
        self.sleeps: list[float] = []  # deadlines waited for, in order

    def now(self) -> float:
        return self.time

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps.append(deadline)
        await anyio.lowlevel.checkpoint()
        self.time = max(self.time, deadline)

    def advance(self, seconds: float) -> None:
        self.time += seconds


class ManualClock(durable.Clock):
    """Virtual epoch time that only moves when the test calls `advance`."""

    def __init__(self, start: float = T0) -> None:
        self.time = start
        self.sleepers = 0  # tasks blocked in sleep_until right now
        self._changed: anyio.Event | None = None
        self._arrived: anyio.Event | None = None

    def now(self) -> float:
        return self.time

    async def sleep_until(self, deadline: float) -> None:
        self.sleepers += 1
        if self._arrived is not None:
            self._arrived.set()
        try:
            while self.time < deadline:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        finally:
            self.sleepers -= 1

    def advance(self, seconds: float) -> None:
        self.time += seconds
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for_sleeper(self) -> None:
        """Return once some task is blocked in `sleep_until`."""
        with anyio.fail_after(5):
            while not self.sleepers:
                self._arrived = anyio.Event()
                await self._arrived.wait()


class CountingDriver(durable.MemoryDriver):
    """A MemoryDriver that counts range scans and records the size of each batch."""

    def __init__(self, *, poll_interval: float = 1.0) -> None:
        super().__init__(poll_interval=poll_interval)
        self.scans = 0
        self.batch_sizes: list[int] = []

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self.scans += 1
        return await super().list_range(start, end, limit=limit, reverse=reverse)

    async def write(self, batch: Batch) -> None:
        self.batch_sizes.append(len(batch))
        await super().write(batch)


class Crash(BaseException):
    """Raised from a step to stop a run dead, as if the process had died there."""


class Counter:
    """Counts calls of a step function per name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __call__(self, name: str, value: object = None) -> object:
        self.calls[name] = self.calls.get(name, 0) + 1
        return value

    def __getitem__(self, name: str) -> int:
        return self.calls.get(name, 0)


async def root_entries(driver: durable.Driver, workflow_id: str) -> dict[str, Entry]:
    """The stored entries of a workflow's body (its root scope), by name."""
    history = await History.load(driver, workflow_id)
    return {
        history.names[entry.name_index]: entry
        for entry in history.entries.values()
        if entry.location == encode_int(entry.name_index)
    }


async def snapshot(driver: durable.Driver, workflow_id: str) -> tuple[object, ...]:
    """Everything stored for a workflow, plus its alarm, in a comparable form."""
    history = await History.load(driver, workflow_id)
    entries = sorted(
        (entry.location, repr(entry)) for entry in history.entries.values()
    )
    return (
        history.meta,
        history.input,
        history.names,
        entries,
        await driver.get_alarm(workflow_id),
    )
