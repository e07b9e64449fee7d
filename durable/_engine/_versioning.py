"""Changing workflow code safely: ``ctx.get_version`` and ``ctx.removed``.

``get_version`` records which behaviour a workflow chose, so code can branch on old
vs new behaviour for workflows already in flight. Its marker takes no place in the
scope's order (sequence ``-1``), so adding one in the middle of an old history shifts
nothing after it. ``removed`` stands in for an entry that code no longer creates:
on replay it satisfies the old entry (and so retires its whole subtree, which is
never visited); a new run records a ``removed`` marker in the same place.

Neither writes on its own: the marker rides with the next durable write, and a run
that dies before that write decides again, the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Generic, TypeVar

from .._history import COMPLETED, Entry

if TYPE_CHECKING:
    from collections.abc import Generator

    from ._scope import Scope

T = TypeVar("T")

VERSION: Final = "version"
REMOVED: Final = "removed"
REMOVABLE_KINDS: Final = frozenset(
    {
        "step",
        "loop",
        "sleep",
        "message",
        "send",
        "join",
        "race",
        "try",
        "rollback_checkpoint",
        VERSION,
    }
)


class Done(Generic[T]):
    """An awaitable that is already finished (a call that needs no waiting)."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[None, None, T]:
        yield from ()
        return self._value


def get_version(scope: Scope, name: str, latest: int) -> int:
    """The recorded version for *name*, else 1 for an old history, else *latest*."""
    entry, fresh = scope.begin_unordered(name, VERSION)
    if not fresh:
        if entry.kind == REMOVED:
            return 1  # the marker was retired; the oldest behaviour stands
        recorded: list[int] = entry.data  # type: ignore[assignment]
        return int(recorded[0])
    # The scope still holds entries this run has not reached: it started before
    # this call existed, so it keeps the behaviour it started with.
    resolved = 1 if scope.has_unvisited() else latest
    _complete(scope, entry, [resolved, latest])
    return resolved


def removed(scope: Scope, name: str, original_type: str) -> None:
    """Satisfy the old entry *name* of *original_type*, or record a removed marker."""
    if original_type == VERSION:
        entry, fresh = scope.begin_unordered(name, REMOVED)
    else:
        entry, fresh = scope.begin(name, REMOVED, stands_for=original_type)
    if fresh:
        _complete(scope, entry, original_type)


def _complete(scope: Scope, entry: Entry, data: object) -> None:
    run = scope.run
    entry.data = data
    entry.status = COMPLETED
    entry.finished_at = run.clock.now()
    run.record(entry)
