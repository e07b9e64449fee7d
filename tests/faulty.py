"""FaultyDriver: a driver wrapper that fails the k-th write, for fault-injection tests.

Two kinds of fault, both before anything of the k-th batch is written:

* ``mode="raise"``: that write raises a storage error (by default `WriteFailedError`,
  an `OSError`, as a user's driver over a socket or a file would) and later ones work;
* ``mode="crash"``: that write raises `SimulatedCrash` (a `BaseException`, so nothing
  in the engine or in workflow code handles it) and from then on *every* operation
  raises it: the process is as good as dead at that durable point.

The inner driver keeps everything written before the fault, like a store that
survived a crash; a test resumes by running the workflow again on the inner driver.
Closing a `FaultyDriver` leaves the inner driver open: the test owns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from durable import Alarm, Batch, Driver, Subscription

if TYPE_CHECKING:
    from collections.abc import Callable


class SimulatedCrash(BaseException):  # a crash, not an error
    """The process "died" at a durable point; raised by a crashed `FaultyDriver`."""


class WriteFailedError(OSError):
    """The default error of ``mode="raise"``: the k-th write failed, nothing written."""


class FaultyDriver(Driver):
    """Delegates to *inner*, but the *fail_at*-th ``write`` (1-based) fails.

    ``fail_at=None`` never fails, which counts the writes of a clean run in
    `FaultyDriver.writes`. *error* makes the exception of ``mode="raise"``.
    """

    def __init__(
        self,
        inner: Driver,
        *,
        fail_at: int | None = None,
        mode: Literal["raise", "crash"] = "crash",
        error: Callable[[], Exception] | None = None,
    ) -> None:
        super().__init__(poll_interval=inner.poll_interval)
        self.inner = inner
        self.fail_at = fail_at
        self.mode = mode
        self.error = error or (lambda: WriteFailedError("simulated write failure"))
        self.writes = 0  # write calls so far, the failed one included
        self.crashed = False

    def _check(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the process crashed at an earlier write")

    async def write(self, batch: Batch) -> None:
        """Write through to the inner driver unless this is the write to fail."""
        self._check()
        self.writes += 1
        if self.writes == self.fail_at:
            if self.mode == "crash":
                self.crashed = True
                raise SimulatedCrash(f"crashed at write {self.writes}")
            raise self.error()
        await self.inner.write(batch)

    async def get(self, key: bytes) -> bytes | None:
        """See `Driver.get`."""
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
        """See `Driver.list_range`."""
        self._check()
        return await self.inner.list_range(start, end, limit=limit, reverse=reverse)

    async def get_alarm(self, workflow_id: str) -> float | None:
        """See `Driver.get_alarm`."""
        self._check()
        return await self.inner.get_alarm(workflow_id)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """See `Driver.list_alarms`."""
        self._check()
        return await self.inner.list_alarms(until=until, limit=limit)

    def subscribe(self, workflow_id: str) -> Subscription:
        """See `Driver.subscribe`."""
        self._check()
        return self.inner.subscribe(workflow_id)

    async def close(self) -> None:
        """Do nothing: the inner driver is the surviving store, owned by the test."""
