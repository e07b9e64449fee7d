"""FaultyDriver: wraps any driver and fails (or "crashes") at a chosen write batch.

Rule: the fault strikes before anything of the chosen batch reaches the inner driver,
so the inner driver holds exactly what a store that survived the fault would hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from durable import Alarm, Batch, Driver, Subscription

from ._records import names_in

if TYPE_CHECKING:
    from collections.abc import Callable


class SimulatedCrash(BaseException):  # a crash, not an error: nothing may handle it
    """The process "died" at a durable point; raised by a crashed `FaultyDriver`.

    A `BaseException`, so neither the engine nor ``except Exception`` in workflow
    code handles it, just as nothing runs after a real crash.
    """


class FaultyDriver(Driver):
    """Delegates to *inner*, but fails at one write batch.

    The fault strikes at write *fail_at* (1-based), or at the first write that
    records an entry named *at_entry*; with neither it never strikes, which counts
    the writes of a clean run in `writes`. ``mode="raise"`` makes that one write raise
    ``error()`` (an `OSError` by default) and later writes work; ``mode="crash"``
    raises `SimulatedCrash` there and at every later call. Either way nothing of that
    batch is written, and the test resumes by running the workflow on `inner`.
    Closing a `FaultyDriver` leaves *inner* open.
    """

    def __init__(
        self,
        inner: Driver,
        *,
        fail_at: int | None = None,
        at_entry: str | None = None,
        mode: Literal["raise", "crash"] = "crash",
        error: Callable[[], Exception] | None = None,
    ) -> None:
        super().__init__(poll_interval=inner.poll_interval)
        if fail_at is not None and fail_at < 1:
            raise ValueError(f"fail_at counts writes from 1, not {fail_at!r}")
        if mode not in ("raise", "crash"):
            raise ValueError(f'mode must be "raise" or "crash", not {mode!r}')
        self.inner = inner
        self.fail_at = fail_at
        self.at_entry = at_entry
        self.mode: Literal["raise", "crash"] = mode
        self.error = error or (lambda: OSError("simulated write failure"))
        self.writes = 0  # write batches so far, the failed one included
        self.failed_at: int | None = None  # the write that failed, once one did
        self.crashed = False

    def _check(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the process crashed at an earlier write")

    def _strikes(self, batch: Batch) -> bool:
        if self.failed_at is not None:
            return False  # one fault per driver
        if self.writes == self.fail_at:
            return True
        return self.at_entry is not None and self.at_entry in names_in(batch)

    async def write(self, batch: Batch) -> None:
        """Write through to the inner driver, unless this is the write to fail."""
        self._check()
        self.writes += 1
        if self._strikes(batch):
            self.failed_at = self.writes
            if self.mode == "crash":
                self.crashed = True
                raise SimulatedCrash(f"simulated crash at write {self.writes}")
            raise self.error()
        await self.inner.write(batch)

    async def get(self, key: bytes) -> bytes | None:
        """See `durable.Driver.get`."""
        self._check()
        return await self.inner.get(key)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """See `durable.Driver.list_range`."""
        self._check()
        return await self.inner.list_range(start, end, limit=limit, reverse=reverse)

    async def get_alarm(self, workflow_id: str) -> float | None:
        """See `durable.Driver.get_alarm`."""
        self._check()
        return await self.inner.get_alarm(workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """See `durable.Driver.list_alarms`."""
        self._check()
        return await self.inner.list_alarms(until=until, limit=limit)

    def subscribe(self, workflow_id: str) -> Subscription:
        """See `durable.Driver.subscribe`."""
        self._check()
        return self.inner.subscribe(workflow_id)

    def subscribe_alarms(self) -> Subscription:
        """See `durable.Driver.subscribe_alarms`."""
        self._check()
        return self.inner.subscribe_alarms()

    async def close(self) -> None:
        """Do nothing: the inner driver is the surviving store, owned by the test."""
