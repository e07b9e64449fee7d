"""Durable sleeps.

The deadline is fixed when the sleep is first reached and recorded, so a restart waits
out only the rest. A sleep shorter than the driver's poll interval is recorded with the
next durable write instead of one of its own (W6): if the process dies before that
write, nothing after the sleep was recorded either, and the sleep simply runs again.
A completed sleep is never slept again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._history import COMPLETED, Entry

if TYPE_CHECKING:
    from ._scope import Scope


async def sleep_until(scope: Scope, entry: Entry, fresh: bool, when: float) -> None:
    """Wait until *when* (epoch s), or the recorded deadline when replaying."""
    if entry.status == COMPLETED:
        return
    run = scope.run
    if fresh:
        entry.data = when
        if when - run.clock.now() >= run.poll_interval:
            run.record(entry)  # the deadline must be durable before a long wait
    deadline = float(entry.data)  # type: ignore[arg-type]
    if deadline > run.clock.now():
        await run.wait(deadline)
    entry.status = COMPLETED
    entry.finished_at = run.clock.now()
    run.record(entry)
