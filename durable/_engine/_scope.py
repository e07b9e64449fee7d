"""Scopes: where entries are named, matched against history and checked for divergence.

A scope is the workflow body (later also a branch, a loop iteration or a try block).
Each context call *begins* an entry in its scope at call time, before it is awaited:

* the k-th call of a scope must match the entry recorded with sequence number k in
  that scope, by name and kind, or the history has diverged (renamed, reordered,
  removed or inserted calls are all caught, at every level, the root included);
* a name is used once per scope;
* a call made while an earlier call of the scope is not finished is a missing await
  (`EntryInProgressError`);
* when a scope ends, every entry recorded in it must have been visited.

Rule: nothing here writes to the store; new names go into the run's pending batch.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import EntryInProgressError, HistoryDivergedError
from .._history import Entry
from .._keys import encode_int
from ._signals import Evicted, StopReplay

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._run import Run

T = TypeVar("T")
E = TypeVar("E", HistoryDivergedError, EntryInProgressError)


class Scope:
    """One naming scope of a run; see the module docs for its rules."""

    __slots__ = ("_counter", "_names", "_pending", "location", "run")

    def __init__(self, run: Run, location: bytes) -> None:
        self.run = run
        self.location = location
        self._counter = 0
        self._names: set[str] = set()
        # (description, the call's coroutine, the wrapper handed to the workflow, a
        # coroutine the call was handed to await, such as a try_step's step)
        self._pending: (
            tuple[
                str | tuple[str, str],
                Coroutine[Any, Any, Any],
                Coroutine[Any, Any, Any],
                Coroutine[Any, Any, Any] | None,
            ]
            | None
        ) = None

    def begin(
        self, name: str, kind: str, *, stands_for: str | None = None
    ) -> tuple[Entry, bool]:
        """Register a call; return its entry and whether it is new (not replayed).

        *stands_for* is the kind a recorded entry may also have (``ctx.removed``
        stands for an entry of its original kind).

        Raises:
            EntryInProgressError: an earlier call of this scope was not awaited.
            HistoryDivergedError: the call does not match the history.
        """
        run = self.run
        names = self._names
        if (
            self._pending is not None
            or run.evict_requested
            or type(name) is not str
            or name in names
        ):
            self._check_call(name, kind)  # raises what fits
        history = run.history
        names.add(name)
        index = history.name_index.get(name)  # W2: inline, a known name is the rule
        new_name = index is None
        if index is None:
            index = self._intern(name)
        location = self.location + encode_int(index)
        seq = self._counter
        self._counter = seq + 1
        if history.loaded:  # replaying: the k-th call must match the k-th entry
            recorded = history.entries.get(location)
            # W2: the entry this call names is usually the k-th of this scope (same
            # seq; same name, so same scope) and of the same kind: a match without
            # the (scope, seq) index, which is built only for anything else
            if (
                recorded is not None
                and recorded.seq == seq
                and recorded.name_index == index
                and recorded.kind == kind
            ):
                return recorded, False
            recorded = history.by_seq.get((self.location, seq))
            if recorded is not None:
                if recorded.location != location or (
                    recorded.kind != kind and recorded.kind != stands_for
                ):
                    raise self._diverged(recorded, f"{kind} {name!r}")
                return recorded, False
        if not new_name and location in history.entries:
            raise self._diverged(
                history.entries[location], f"{kind} {name!r} in another place"
            )
        if run.rolling_back:
            raise StopReplay  # rollback mode replays only what the history holds
        entry = Entry(location, kind, seq, index)
        history.entries[location] = entry  # new entries need no replay index
        return entry, True

    def begin_unordered(self, name: str, kind: str) -> tuple[Entry, bool]:
        """Register a call that takes no place in the scope's order (a version marker).

        A version marker may appear in the middle of an old history without shifting
        the entries after it, so it is matched by name alone.
        """
        self._check_call(name, kind)
        self._names.add(name)
        history = self.run.history
        index = history.name_index.get(name)
        if index is None:
            index = self._intern(name)
        location = self.location + encode_int(index)
        recorded = history.entries.get(location)
        if recorded is not None:
            if recorded.kind != kind and not (
                kind == "removed" or recorded.kind == "removed"
            ):
                raise self._diverged(recorded, f"{kind} {name!r}")
            return recorded, False
        if self.run.rolling_back:
            raise StopReplay
        entry = Entry(location, kind, -1, index)
        history.entries[location] = entry
        return entry, True

    def _intern(self, name: str) -> int:
        """Intern *name*, new to the workflow; its key rides with the next write."""
        history = self.run.history
        index, _ = history.intern(name)
        self.run.pending.put(history.keys.name + encode_int(index), name.encode())
        return index

    def has_unvisited(self) -> bool:
        """Whether the history holds entries of this scope that this run has not reached."""
        return self.run.history.scope_sizes.get(self.location, 0) > self._counter

    def _check_call(self, name: str, kind: str) -> None:
        run = self.run
        if self._pending is not None:
            self._refuse_in_progress(f"{kind} {name!r}")
        if run.evict_requested:
            raise Evicted
        if not isinstance(name, str):
            raise TypeError(f"a {kind} name must be a str, not {type(name).__name__}")
        if name in self._names:
            raise self.refuse(
                HistoryDivergedError(
                    run.workflow_id,
                    self.describe(),
                    expected=f"a {kind} named {name!r} already",
                    found=f"a second {kind} named {name!r}",
                    hint="Names must be unique within their scope; rename one of them.",
                )
            )

    def track(
        self,
        description: str | tuple[str, str],
        coro: Coroutine[Any, Any, T],
        inner: Coroutine[Any, Any, Any] | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Mark *coro* as this scope's call in progress until it finishes.

        *inner* is a coroutine *coro* was handed to await, closed with it if the
        call is never awaited.
        """
        wrapper = self._settle(coro)
        self._pending = (description, coro, wrapper, inner)
        return wrapper

    async def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        finally:
            self._pending = None

    def end(self) -> None:
        """Check that the scope finished cleanly: nothing pending, nothing unvisited.

        Raises:
            EntryInProgressError: a call of this scope was never awaited.
            HistoryDivergedError: the history holds entries this run did not reach.
        """
        if self._pending is not None:
            self._refuse_in_progress(f"the end of {self.describe()}")
        history = self.run.history
        size = history.scope_sizes.get(self.location, 0)
        for seq in range(self._counter, size):
            unvisited = history.by_seq.get((self.location, seq))
            if unvisited is not None:
                raise self._diverged(unvisited, f"the end of {self.describe()}")

    def abandon(self) -> None:
        """Close a never-awaited call so Python does not warn about it."""
        if self._pending is not None:
            # all: the workflow holds the wrapper, and the wrapper never started
            # the call (nor the call its inner one), so any left unclosed warns
            # "never awaited"
            for coro in self._pending[1:]:
                if coro is not None and (
                    inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
                ):
                    coro.close()
            self._pending = None

    def describe(self, location: bytes | None = None) -> str:
        """A readable path of this scope (or of *location*)."""
        return self.run.history.describe(
            self.location if location is None else location
        )

    def _refuse_in_progress(self, called: str) -> None:
        description = self._pending[0] if self._pending is not None else "?"
        if isinstance(description, tuple):  # (kind, name): formatted only when needed
            description = f"{description[0]} {description[1]!r}"
        self.abandon()
        raise self.refuse(
            EntryInProgressError(self.run.workflow_id, description, called)
        )

    def _diverged(self, recorded: Entry, found: str) -> HistoryDivergedError:
        name = self.run.history.names[recorded.name_index]
        return self.refuse(
            HistoryDivergedError(
                self.run.workflow_id,
                f"{self.describe()}, call #{recorded.seq + 1}",
                expected=f"{recorded.kind} {name!r}",
                found=found,
            )
        )

    def refuse(self, error: E) -> E:
        """Make *error* the run's outcome, even if the workflow code catches it."""
        if self.run.refused is None:
            self.run.refused = error
        return error
