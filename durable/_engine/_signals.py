"""Private control-flow signals that unwind workflow code.

They derive from `BaseException`, like trio's ``Cancelled``, so an ``except Exception``
in workflow code can never swallow a suspend or an eviction.
"""

from __future__ import annotations


class Suspend(BaseException):
    """Yield mode: the run must wait; it stops here and resumes by replay."""

    def __init__(
        self, until: float | None, waiting_for: tuple[str, ...] | None = None
    ) -> None:
        super().__init__(until, waiting_for)
        self.until = until
        self.waiting_for = waiting_for


class Evicted(BaseException):
    """The run was asked to stop at its next durable point."""

    def __init__(
        self, until: float | None = None, waiting_for: tuple[str, ...] | None = None
    ) -> None:
        super().__init__(until, waiting_for)
        self.until = until  # what the run waited for when evicted, if anything
        self.waiting_for = waiting_for


class StopReplay(BaseException):
    """Rollback mode: the history ends here; stop and run the compensations."""
