"""Projections: query-side read models in SQLite, kept out of the workflow store.

A DAG step writes to a projection through a `ProjectionSession`, one per step execution
and projection. Rule: a step's projection writes are applied exactly once per
successful step. The session's writes run in one SQLite transaction, and `commit`
inserts a marker row keyed by the step's key into ``_durable_applied`` in that same
transaction. If the process crashes after that commit and the step runs again, the new
session finds the marker at commit, rolls all its writes back and returns False.

`SQLiteProjectionStore` keeps one database per projection name at
``<root>/<encoded name>.sqlite3`` (percent-encoded as artifact id components are, but
without splitting on ``":"``), in WAL mode with ``synchronous=FULL`` so that a marker is
durable before the runtime records the step as done. Every SQLite call runs in a worker
thread, and a lock keeps each connection to one thread at a time. Direct handles from
`SQLiteProjectionStore.projection` share one autocommit connection per name; each
session opens its own connection so that its transaction is private.

Writers of one projection within this process take turns on an in-process semaphore
before ``BEGIN IMMEDIATE``, so a waiting writer waits in the event loop (cancellable,
bounded by ``busy_timeout``) instead of parking a worker thread in SQLite's busy
handler; SQLite's lock still serializes writers across processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, final

import anyio
import anyio.to_thread
import attrs

from ._artifacts import encode_component

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Sequence

T = TypeVar("T")

_Bound = tuple[object, ...] | dict[str, object]

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's write lock
_SUFFIX = ".sqlite3"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS _durable_applied"
    "(key TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
)
# applied_at is epoch seconds from SQLite's own clock: nothing in durable reads time
# outside _clock.py, and the value is informational only.
_MARK = (
    "INSERT OR IGNORE INTO _durable_applied(key, applied_at) "
    "VALUES (?, (julianday('now') - 2440587.5) * 86400.0)"
)


class Projection(Protocol):
    """A SQLite read model that step code writes to and queries read."""

    async def execute(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> int:
        """Run one statement; return the number of rows it changed (0 if unknown)."""
        ...

    async def executemany(
        self, sql: str, rows: Iterable[Sequence[object] | Mapping[str, object]]
    ) -> int:
        """Run one statement once per parameter row; return the rows changed."""
        ...

    async def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[dict[str, object]]:
        """Run one statement; return its rows as column name to value dicts."""
        ...


class ProjectionStore(Protocol):
    """Opens projections by name: directly, or in a session per step execution."""

    def projection(self, name: str) -> Projection:
        """Return a direct handle on *name*; each statement commits on its own."""
        ...

    def session(self, name: str, key: str) -> ProjectionSession:
        """Return a session on *name* whose writes apply at most once per *key*."""
        ...

    async def close(self) -> None:
        """Roll back open sessions and close every connection."""
        ...


# ---------------------------------------------------------------------------
# Blocking helpers, run in worker threads


def _bind(params: Sequence[object] | Mapping[str, object]) -> _Bound:
    """Copy *params* into the tuple or dict sqlite3 binds, in the caller's thread."""
    if isinstance(params, Mapping):
        return dict(params)
    if isinstance(params, str | bytes):
        raise TypeError(
            f"SQL parameters are a sequence or a mapping, not {type(params).__name__}; "
            "wrap a single value in a tuple: (value,)"
        )
    return tuple(params)


def _changed(cursor: sqlite3.Cursor) -> int:
    return max(cursor.rowcount, 0)  # -1 for statements that change nothing countable


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, object]]:
    if cursor.description is None:  # not a query
        return []
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _execute_many_atomically(
    conn: sqlite3.Connection, sql: str, rows: list[_Bound]
) -> int:
    """Run an executemany as one transaction, not one autocommit per row."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return _changed(cursor)


def _rollback_and_close(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # closing the connection rolls back whatever is left
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Sessions


@final
class ProjectionSession:
    """One step execution's writes to one projection, applied at most once per key.

    Reads before the first write run outside any transaction. The first `execute` or
    `executemany` starts ``BEGIN IMMEDIATE``, which takes the write lock at once, so
    two sessions never deadlock upgrading a read lock; later queries see the
    session's own writes. Nothing is visible to others until `commit`. From the first
    write until commit or rollback the session holds the projection's write lock, so
    always finish a session. Made by `SQLiteProjectionStore.session`.
    """

    __slots__ = (
        "_began",
        "_conn",
        "_finished",
        "_lock",
        "_path",
        "_store",
        "_writer",
        "key",
        "name",
    )

    def __init__(
        self, store: SQLiteProjectionStore, name: str, key: str, path: Path
    ) -> None:
        self._store = store
        self.name = name
        self.key = key
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._began = False  # BEGIN IMMEDIATE ran on _conn
        self._finished = False  # committed or rolled back; the connection is closed
        self._lock = anyio.Lock()  # one call at a time: one thread per connection
        self._writer: anyio.Semaphore | None = None  # our write turn, while held

    async def execute(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> int:
        """Run one write inside the session's transaction; return the rows changed.

        Raises:
            RuntimeError: the session is finished or the store is closed.
        """
        bound = _bind(params)
        return await self._run(
            lambda conn: _changed(self._write(conn).execute(sql, bound)), write=True
        )

    async def executemany(
        self, sql: str, rows: Iterable[Sequence[object] | Mapping[str, object]]
    ) -> int:
        """Run one write per parameter row inside the transaction; return rows changed.

        Raises:
            RuntimeError: the session is finished or the store is closed.
        """
        bound = [_bind(row) for row in rows]
        return await self._run(
            lambda conn: _changed(self._write(conn).executemany(sql, bound)),
            write=True,
        )

    async def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[dict[str, object]]:
        """Run one statement; after the first write it sees the session's writes.

        Raises:
            RuntimeError: the session is finished or the store is closed.
        """
        bound = _bind(params)

        def run(conn: sqlite3.Connection) -> list[dict[str, object]]:
            if self._began:
                self._check_transaction(conn)
            return _rows(conn.execute(sql, bound))

        return await self._run(run)

    async def commit(self) -> bool:
        """Commit the writes with the key's marker; return False if applied before.

        False means a session with this key committed earlier, so this one's writes
        were all rolled back. A session that wrote nothing commits nothing and
        returns True. The session is finished afterwards, even if commit raises.

        Raises:
            RuntimeError: the session is finished or the store is closed.
        """
        async with self._lock:
            self._check_usable()
            try:
                conn = self._conn
                if conn is None or not self._began:
                    return True
                return await anyio.to_thread.run_sync(self._commit, conn)
            finally:
                await self._finish()

    async def rollback(self) -> None:
        """Discard the session's writes and close it; does nothing if finished."""
        with anyio.CancelScope(shield=True):  # cleanup must finish when cancelled
            async with self._lock:
                if not self._finished:
                    await self._finish()

    # -- internals; every one below runs with self._lock held -----------------

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False
    ) -> T:
        async with self._lock:
            self._check_usable()
            # Held strongly until finished, so that close() can roll it back. Added
            # with no await after the check: close() sets the flag before it looks.
            self._store._sessions.add(self)
            if write and self._writer is None:
                self._writer = await self._store._acquire_writer(self.name)
            try:
                if self._conn is None:
                    self._conn = await anyio.to_thread.run_sync(
                        self._store._connect, self._path
                    )
                return await anyio.to_thread.run_sync(fn, self._conn)
            finally:
                if not self._began:  # BEGIN IMMEDIATE failed: give the turn back
                    self._release_writer()

    def _release_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()

    def _check_usable(self) -> None:
        self._store._check_open()
        if self._finished:
            raise RuntimeError(
                f"the projection session on {self.name!r} with key {self.key!r} is "
                "already committed or rolled back; open a new one with "
                "store.session()"
            )

    def _check_transaction(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            raise RuntimeError(
                f"the projection session on {self.name!r} with key {self.key!r} lost "
                "its transaction (SQLite rolled it back after an error, or the SQL "
                "ended it); roll the session back and run the step again"
            )

    def _write(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Start the transaction on the first write (in the worker thread)."""
        if not self._began:
            conn.execute("BEGIN IMMEDIATE")
            self._began = True
        else:
            self._check_transaction(conn)
        return conn

    def _commit(self, conn: sqlite3.Connection) -> bool:
        self._check_transaction(conn)
        if conn.execute(_MARK, (self.key,)).rowcount == 0:
            conn.execute("ROLLBACK")  # applied before: leave no trace
            return False
        conn.execute("COMMIT")
        return True

    async def _finish(self) -> None:
        with anyio.CancelScope(shield=True):
            self._finished = True
            self._store._sessions.discard(self)
            conn, self._conn = self._conn, None
            try:
                if conn is not None:
                    await anyio.to_thread.run_sync(_rollback_and_close, conn)
            finally:
                self._release_writer()


# ---------------------------------------------------------------------------
# The store


@attrs.define(eq=False)
class _Shared:
    """The autocommit connection that a name's direct handles share."""

    conn: sqlite3.Connection | None = None
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)


@final
class _DirectProjection:
    """A direct handle: each statement commits on its own (autocommit)."""

    __slots__ = ("_name", "_store")

    def __init__(self, store: SQLiteProjectionStore, name: str) -> None:
        self._store = store
        self._name = name

    async def execute(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> int:
        bound = _bind(params)
        return await self._store._direct(
            self._name, lambda conn: _changed(conn.execute(sql, bound)), write=True
        )

    async def executemany(
        self, sql: str, rows: Iterable[Sequence[object] | Mapping[str, object]]
    ) -> int:
        bound = [_bind(row) for row in rows]
        return await self._store._direct(
            self._name,
            lambda conn: _execute_many_atomically(conn, sql, bound),
            write=True,
        )

    async def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[dict[str, object]]:
        bound = _bind(params)
        return await self._store._direct(
            self._name, lambda conn: _rows(conn.execute(sql, bound))
        )


@final
class SQLiteProjectionStore:
    """Keeps each projection in its own SQLite file under *root*.

    *busy_timeout* is how long, in seconds, a writer waits for another's write lock
    before SQLite raises ``database is locked``. A thread waiting for the lock cannot
    be interrupted, so a cancelled call returns only when the wait ends.

    Example:
        store = SQLiteProjectionStore("projections")
        session = store.session("orders", key="run-1:load")
        await session.execute("INSERT INTO orders VALUES (?, ?)", (1, "open"))
        applied = await session.commit()
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if (
            not isinstance(busy_timeout, int | float)  # type: ignore[redundant-expr]
            or isinstance(busy_timeout, bool)
            or not busy_timeout >= 0
        ):
            raise ValueError(f"busy_timeout is seconds >= 0, not {busy_timeout!r}")
        self._root = Path(root).resolve()
        self._busy_timeout = float(busy_timeout)
        self._shared: dict[str, _Shared] = {}
        self._writers: dict[str, anyio.Semaphore] = {}
        self._sessions: set[ProjectionSession] = set()  # in use and not finished
        self._closed = False

    @property
    def root(self) -> Path:
        """The absolute directory the databases live in."""
        return self._root

    def path(self, name: str) -> Path:
        """Return the database file of projection *name*.

        Raises:
            ValueError: *name* is empty.
        """
        if not isinstance(name, str):
            raise TypeError(f"a projection name is a str, not {type(name).__name__}")
        if not name:
            raise ValueError(
                "a projection name must not be empty; pass a non-empty str"
            )
        return self._root / (encode_component(name) + _SUFFIX)

    def projection(self, name: str) -> Projection:
        """Return a direct handle on *name*; each statement commits on its own.

        Raises:
            ValueError: *name* is empty.
            RuntimeError: the store is closed.
        """
        self.path(name)
        self._check_open()
        return _DirectProjection(self, name)

    def session(self, name: str, key: str) -> ProjectionSession:
        """Return a new session on *name* for the step execution *key*.

        Raises:
            ValueError: *name* or *key* is empty.
            RuntimeError: the store is closed.
        """
        path = self.path(name)
        if not isinstance(key, str) or not key:  # type: ignore[redundant-expr]
            raise ValueError(
                f"a projection session key is a non-empty str (the step's key), "
                f"not {key!r}"
            )
        self._check_open()
        return ProjectionSession(self, name, key, path)

    async def applied(self, name: str, key: str) -> bool:
        """Return whether a session on *name* with *key* has committed.

        Raises:
            ValueError: *name* is empty.
            RuntimeError: the store is closed.
        """
        self.path(name)
        return await self._direct(
            name,
            lambda conn: (
                conn.execute(
                    "SELECT 1 FROM _durable_applied WHERE key = ?", (key,)
                ).fetchone()
                is not None
            ),
        )

    async def close(self) -> None:
        """Roll back open sessions and close every connection; safe to call twice.

        Later use of the store, its handles or its sessions raises `RuntimeError`.
        """
        self._closed = True
        with anyio.CancelScope(shield=True):
            # At once: a session waiting for the write turn holds its own lock
            # until the session holding the turn is rolled back.
            async with anyio.create_task_group() as group:
                for session in list(self._sessions):
                    group.start_soon(session.rollback)
            for shared in list(self._shared.values()):
                async with shared.lock:
                    conn, shared.conn = shared.conn, None
                    if conn is not None:
                        await anyio.to_thread.run_sync(conn.close)
            self._shared.clear()

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"the projection store is closed ({self._root}); create a new "
                "SQLiteProjectionStore to use the projections again"
            )

    def _connect(self, path: Path) -> sqlite3.Connection:
        """Open *path* (in a worker thread), creating the file and its marker table."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a marker survives power loss
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _acquire_writer(self, name: str) -> anyio.Semaphore:
        """Wait, in the event loop and not in a thread, for this process's write turn.

        Writers of one projection in this process queue here rather than in SQLite's
        busy handler, which would park a worker thread each: enough of them would
        take every thread, and the session holding the lock could never commit.
        """
        self._check_open()
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = anyio.Semaphore(1)  # no owner task
        try:
            writer.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(self._busy_timeout) as waited:
                await writer.acquire()
            if waited.cancelled_caught:
                raise sqlite3.OperationalError(
                    f"database is locked: a write to projection {name!r} waited "
                    f"{self._busy_timeout:g} s for another session of this process "
                    "to commit or roll back; finish every session, or raise "
                    "busy_timeout"
                ) from None
        if self._closed:  # close() released our turn by rolling its holder back
            writer.release()
            self._check_open()
        return writer

    async def _direct(
        self,
        name: str,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = False,
    ) -> T:
        """Run *fn* on *name*'s shared connection, opening it on first use."""
        writer = await self._acquire_writer(name) if write else None
        try:
            self._check_open()
            shared = self._shared.get(name)
            if shared is None:
                shared = self._shared[name] = _Shared()
            async with shared.lock:
                self._check_open()  # close() may have run while we waited
                if shared.conn is None:
                    shared.conn = await anyio.to_thread.run_sync(
                        self._connect, self.path(name)
                    )
                return await anyio.to_thread.run_sync(fn, shared.conn)
        finally:
            if writer is not None:
                writer.release()
