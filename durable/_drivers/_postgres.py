"""PostgresDriver: the driver protocol on PostgreSQL (the only psycopg import).

psycopg's async API runs on asyncio only (psycopg issue #29), so this driver uses its
sync API with a `psycopg_pool.ConnectionPool` in worker threads
(``anyio.to_thread.run_sync``), which works the same under asyncio and trio. A call
that is cancelled still waits for its statement to finish, so a batch is never left
with an unknown outcome.

A store is one PostgreSQL schema named after it, holding ``schema_version`` (one row),
``kv`` (``bytea`` keys, which PostgreSQL compares bytewise) and ``alarms`` (indexed by
``(at, workflow_id)`` so due alarms cost O(due)). Each batch is one transaction.

A batch with ``check`` ops first locks every checked key, so nothing can change it
between the check and the commit: a present key by its row lock (``FOR UPDATE``), an
absent one by a placeholder row the transaction inserts and deletes again, whose
uncommitted index entry makes every other insert of that key wait for the commit.
``claim_alarms`` is one ``UPDATE`` over ``FOR UPDATE SKIP LOCKED`` rows, so concurrent
claimers, in any process, never take the same alarm.

Wake-ups cross processes through ``LISTEN``/``NOTIFY``: a batch with notify ops or an
alarm calls ``pg_notify`` inside its transaction (so delivery follows the commit), and
one listening connection per driver, in a daemon thread, hands what other drivers
wrote to the event loop. Local writes wake local subscribers directly after commit;
the listener skips its own driver's notifications. When ``LISTEN`` is unavailable the
thread wakes every subscription each ``poll_interval`` instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import psycopg
import psycopg.conninfo
import psycopg_pool
from psycopg import sql

from .._errors import StorageError, WriteConflictError
from ._base import (
    CHECK,
    CLEAR_ALARM,
    DEFAULT_POLL_INTERVAL,
    DELETE,
    DELETE_RANGE,
    NOTIFY,
    PUT,
    RESERVED_PREFIX,
    SET_ALARM,
    Alarm,
    Batch,
    Driver,
    LocalNotifier,
    Subscription,
    check_limit,
    failed_check,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

DEFAULT_STORE: Final = "durable"
DEFAULT_POOL_SIZE: Final = 4
DEFAULT_CONNECT_TIMEOUT: Final = 10.0  # seconds
SCHEMA_VERSION: Final = 1
"""The store layout this code writes; older stores are migrated, newer ones refused."""

# _UPGRADES[i] takes a store from version i + 1 to i + 2 (none yet).
_UPGRADES: Final[tuple[tuple[str, ...], ...]] = ()

_STORE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_PAYLOAD_LIMIT = 7000  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more
_STOP_WAIT = 1.0  # seconds between the listener's checks of its stop flag
_WRITING = "writing a batch"

_Conn = psycopg.Connection[tuple[Any, ...]]


def _check_store(store: str) -> str:
    if not _STORE_NAME.fullmatch(store) or store.startswith("pg_"):
        raise ValueError(
            "store must be 1 to 48 lower-case letters, digits or underscores, "
            "starting with a letter or underscore and not with 'pg_' (it names a "
            f"PostgreSQL schema), not {store!r}"
        )
    return store


def _describe(dsn: str) -> str:
    """The DSN's host, port, database and user, never its password."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    shown = [
        f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if k in params
    ]
    return " ".join(shown) or "the default server"


# --- SQL ----------------------------------------------------------------------------


class _Queries:
    """Every statement the driver runs, rendered once for its store's schema."""

    def __init__(self, store: str) -> None:
        schema = sql.Identifier(store)

        def q(text: str) -> str:
            return sql.SQL(text).format(s=schema).as_string()

        self.create = [
            q("CREATE SCHEMA IF NOT EXISTS {s}"),
            q(
                "CREATE TABLE {s}.schema_version (one boolean PRIMARY KEY DEFAULT true"
                " CHECK (one), version integer NOT NULL)"
            ),
            q("CREATE TABLE {s}.kv (key bytea PRIMARY KEY, value bytea NOT NULL)"),
            q(
                "CREATE TABLE {s}.alarms (workflow_id bytea PRIMARY KEY,"
                " at double precision NOT NULL)"
            ),
            q("CREATE INDEX alarms_by_time ON {s}.alarms (at, workflow_id)"),
        ]
        self.insert_version = q("INSERT INTO {s}.schema_version (version) VALUES (%s)")
        self.read_version = q("SELECT version FROM {s}.schema_version")
        self.set_version = q("UPDATE {s}.schema_version SET version = %s")
        self.upgrades = [[q(text) for text in step] for step in _UPGRADES]
        self.get = q("SELECT value FROM {s}.kv WHERE key = %s")
        self.range = q(
            "SELECT key, value FROM {s}.kv WHERE key >= %s AND key < %s"
            " ORDER BY key LIMIT %s"
        )
        self.range_reverse = q(
            "SELECT key, value FROM {s}.kv WHERE key >= %s AND key < %s"
            " ORDER BY key DESC LIMIT %s"
        )
        self.put = q(
            "INSERT INTO {s}.kv (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        self.delete = q("DELETE FROM {s}.kv WHERE key = %s")
        self.delete_range = q("DELETE FROM {s}.kv WHERE key >= %s AND key < %s")
        self.set_alarm = q(
            "INSERT INTO {s}.alarms (workflow_id, at) VALUES (%s, %s)"
            " ON CONFLICT (workflow_id) DO UPDATE SET at = excluded.at"
        )
        self.clear_alarm = q("DELETE FROM {s}.alarms WHERE workflow_id = %s")
        # checks (see PostgresDriver._check): reserve absent keys, lock present ones;
        # both in key order, so two checkers of the same keys cannot deadlock
        self.reserve = q(
            "INSERT INTO {s}.kv (key, value)"
            " SELECT key, ''::bytea FROM unnest(%s::bytea[]) AS key ORDER BY key"
            " ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        self.lock = q(
            "SELECT key, value FROM {s}.kv WHERE key = ANY(%s) ORDER BY key FOR UPDATE"
        )
        self.unreserve = q("DELETE FROM {s}.kv WHERE key = ANY(%s)")
        self.claim = q(
            "WITH due AS (SELECT workflow_id, at FROM {s}.alarms WHERE at <= %s"
            " ORDER BY at, workflow_id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE {s}.alarms AS a SET at = %s FROM due"
            " WHERE a.workflow_id = due.workflow_id RETURNING a.workflow_id, due.at"
        )
        self.get_alarm = q("SELECT at FROM {s}.alarms WHERE workflow_id = %s")
        self.alarms = q(
            "SELECT workflow_id, at FROM {s}.alarms ORDER BY at, workflow_id LIMIT %s"
        )
        self.alarms_until = q(
            "SELECT workflow_id, at FROM {s}.alarms WHERE at <= %s"
            " ORDER BY at, workflow_id LIMIT %s"
        )
        self.notify = "SELECT pg_notify(%s, %s)"
        self.channel = f"durable_{store}"
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))


def _ensure_schema(
    conn: _Conn, queries: _Queries, store: str, where: str
) -> int | None:
    """Create the store's schema, or migrate it, unless it is newer than this code.

    Returns the version the store had before, or ``None`` if it had no schema.
    """
    lock = int.from_bytes(
        hashlib.blake2b(f"durable:{store}".encode(), digest_size=8).digest(),
        "big",
        signed=True,
    )
    with conn.transaction():
        # creators and migrators of one store take turns; other stores do not wait
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        found = conn.execute(
            "SELECT to_regclass(%s), to_regnamespace(%s)",
            (f'"{store}".schema_version', f'"{store}"'),
        ).fetchone()
        if found is None or found[0] is None:
            if found is not None and found[1] is not None:
                tables = conn.execute(
                    "SELECT count(*) FROM pg_class"
                    " WHERE relnamespace = %s::regnamespace",
                    (f'"{store}"',),
                ).fetchone()
                if tables is not None and tables[0]:
                    raise StorageError(
                        f"PostgreSQL schema {store!r} ({where}) exists and is not a "
                        "durable store (it has no schema_version table); pick another "
                        "store name"
                    )
            for statement in queries.create:
                conn.execute(statement)
            conn.execute(queries.insert_version, (SCHEMA_VERSION,))
            return None
        row = conn.execute(queries.read_version).fetchone()
        if row is None:
            raise StorageError(
                f"the durable store {store!r} ({where}) has an empty schema_version "
                "table; restore it from a backup or drop the schema"
            )
        version = int(row[0])
        if version < 1:
            raise StorageError(
                f"the durable store {store!r} ({where}) has schema version {version}, "
                "which no durable ever wrote; restore it from a backup or drop the "
                "schema"
            )
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the durable store {store!r} ({where}) has schema version {version}, "
                f"newer than version {SCHEMA_VERSION} that this durable understands; "
                "upgrade durable to use it"
            )
        for step in queries.upgrades[version - 1 :]:
            for statement in step:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(queries.set_version, (SCHEMA_VERSION,))
        return version


def _read_schema_version(conn: _Conn, queries: _Queries, store: str) -> int | None:
    """The store's schema version, or ``None`` if it has none; reads only."""
    found = conn.execute(
        "SELECT to_regclass(%s)", (f'"{store}".schema_version',)
    ).fetchone()
    if found is None or found[0] is None:
        return None
    row = conn.execute(queries.read_version).fetchone()
    return None if row is None else int(row[0])


def _reason(exc: psycopg.Error) -> str:
    """The error's main message on one line, without DETAIL and HINT lines."""
    text = exc.diag.message_primary or str(exc)
    return " ".join(text.split())


def _is_connection_error(exc: psycopg.Error) -> bool:
    """Whether *exc* means the connection failed (not that a statement was refused)."""
    state = exc.sqlstate
    # no SQLSTATE: raised by the client; 08: connection exception; 57P: shutdown
    return state is None or state.startswith(("08", "57P"))


# --- notifications ------------------------------------------------------------------


def _payloads(sender: str, workflow_ids: list[str], *, alarm: bool) -> list[str]:
    """JSON notification payloads, split to stay below PostgreSQL's size limit."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    everyone = False  # an id too long for any payload: wake every subscription
    for workflow_id in dict.fromkeys(workflow_ids):  # dedupe, keep order
        encoded = len(json.dumps(workflow_id)) + 2
        if encoded > _PAYLOAD_LIMIT:
            everyone = True
            continue
        if size + encoded > _PAYLOAD_LIMIT:
            payloads.append(json.dumps({"sender": sender, "ids": chunk}))
            chunk, size = [], 0
        chunk.append(workflow_id)
        size += encoded
    if everyone:
        payloads.append(json.dumps({"sender": sender, "all": True}))
    if chunk or alarm:
        payloads.append(json.dumps({"sender": sender, "ids": chunk, "alarm": alarm}))
    return payloads


def _parse(payload: str) -> tuple[str | None, Batch | None]:
    """The sender and wake-ups of a payload; ``None`` wake-ups mean "wake everyone"."""
    try:
        message = json.loads(payload)
        sender = message.get("sender")
        sender = None if sender is None else str(sender)
        if message.get("all"):
            return sender, None
        ids = message.get("ids", [])
        batch = Batch(
            ops=[(NOTIFY, str(workflow_id), None) for workflow_id in ids],
            has_notify=bool(ids),
            sets_alarm=bool(message.get("alarm")),
        )
    except (ValueError, TypeError, AttributeError):
        return None, None  # not ours to parse: wake everyone, they re-check
    return sender, batch


class _Notifier(LocalNotifier):
    """`LocalNotifier` that can also wake every subscription at once."""

    def notify_all(self) -> None:
        """Wake every subscription (they re-check the store): a conservative wake-up."""
        # _subscribers is LocalNotifier's, in this package
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.set()


class _Listener:
    """A daemon thread that turns other drivers' NOTIFYs into local wake-ups.

    With ``conn`` it waits on that LISTENing connection (and reconnects after losing
    it); without, it polls: every *poll_interval* it wakes every subscription.
    """

    def __init__(
        self,
        driver: PostgresDriver,
        conn: _Conn | None,
        token: anyio.lowlevel.EventLoopToken,
    ) -> None:
        self._driver = driver
        self._conn = conn
        self._listen = conn is not None
        self._token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"durable-listener-{driver.store}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop; `join` waits for it."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join(timeout=_STOP_WAIT * 5)

    def _deliver(self, batch: Batch | None) -> bool:
        try:
            anyio.from_thread.run_sync(self._driver._deliver, batch, token=self._token)
        except Exception:  # the event loop is gone: nobody is left to wake
            return False
        return True

    def _run(self) -> None:
        driver = self._driver
        try:
            while not self._stop.is_set():
                if self._conn is not None:
                    try:
                        received = list(
                            self._conn.notifies(timeout=_STOP_WAIT, stop_after=1)
                        )
                    except psycopg.Error:
                        self._conn.close()
                        self._conn = None
                        continue
                    if not self._handle(received):
                        return
                elif self._listen:  # lost the connection: retry each poll_interval
                    if self._stop.wait(driver.poll_interval):
                        return
                    self._conn = driver._connect_listener()
                    # notifies sent while it was down are lost: wake everyone
                    if self._conn is not None and not self._deliver(None):
                        return
                else:  # polling fallback: wake everyone, they re-check the store
                    if self._stop.wait(driver.poll_interval):
                        return
                    if not self._deliver(None):
                        return
        finally:
            if self._conn is not None:
                self._conn.close()

    def _handle(self, received: list[psycopg.Notify]) -> bool:
        own = self._driver._sender
        for notify in received:
            sender, batch = _parse(notify.payload)
            if sender == own:
                continue  # delivered locally at commit; a stop request ends the wait
            if not self._deliver(batch):
                return False
        return True


# --- the driver ---------------------------------------------------------------------


class PostgresDriver(Driver):
    """Stores everything in PostgreSQL, in the schema named *store* of *dsn*'s database.

    Several processes can share one store: a notify or an alarm written by any of
    them wakes the others' subscriptions (``LISTEN``/``NOTIFY``, or polling every
    *poll_interval* with ``listen=False`` or where ``LISTEN`` is unavailable).
    ``notify=False`` stops sending ``pg_notify``: only where every process of the
    store polls, or on a server without it (CockroachDB). The driver connects, and creates or migrates the store's schema, on ``async with``
    entry or first use. Needs the extra ``durable[postgres]``.

    Raises:
        StorageError: the server cannot be reached, refuses a statement, or holds a
            store with a newer schema version than this code understands.
    """

    def __init__(
        self,
        dsn: str,
        *,
        store: str = DEFAULT_STORE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        listen: bool = True,
        notify: bool = True,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.store = _check_store(store)
        if pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, not {pool_size!r}")
        if not connect_timeout > 0:
            raise ValueError(
                f"connect_timeout must be a positive number of seconds, not "
                f"{connect_timeout!r}"
            )
        try:
            self._where = f"{_describe(dsn)}, store {store!r}"
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid PostgreSQL DSN: {exc}") from None
        self.pool_size = pool_size
        self.connect_timeout = float(connect_timeout)
        self._connect_timeout = max(2, round(connect_timeout))  # libpq: whole s, >= 2
        self.listening = False
        """True once a ``LISTEN`` connection carries other processes' wake-ups."""
        self._dsn = dsn
        self._listen = listen
        self._notify = notify
        self._queries = _Queries(store)
        self._sender = uuid.uuid4().hex  # tells this driver's notifications apart
        self._notifier = _Notifier()
        self._pool: psycopg_pool.ConnectionPool[_Conn] | None = None
        self._listener: _Listener | None = None
        self._opening: anyio.Event | None = None
        self._closed = False

    # --- connecting -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._ready()  # connect now: errors surface here, not at first use
        return self

    async def _ready(self) -> psycopg_pool.ConnectionPool[_Conn]:
        """The open pool, connecting first if needed."""
        pool = self._pool
        if pool is not None:
            return pool
        while self._opening is not None:
            await self._opening.wait()
            pool = self._pool
            if pool is not None:
                return pool
        if self._closed:
            raise StorageError(
                f"this PostgresDriver ({self._where}) is closed; make a new one"
            )
        self._opening = opening = anyio.Event()
        try:
            token = anyio.lowlevel.current_token()
            with anyio.CancelScope(shield=True):  # a cancel must not drop what opened
                opened, listen_conn = await anyio.to_thread.run_sync(self._open)
            self._pool = opened
            self.listening = listen_conn is not None
            self._listener = _Listener(self, listen_conn, token)
            self._listener.start()
        finally:
            self._opening = None
            opening.set()
        # subscriptions taken before LISTEN started may have missed a notify
        self._notifier.notify_all()
        return opened

    def _connect(self) -> _Conn:
        try:
            return psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout,
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL ({self._where}): {_reason(exc)}; check "
                "that the server is running and that the DSN names the right host, "
                "port, database and user"
            ) from exc

    def _connect_listener(self) -> _Conn | None:
        """A connection LISTENing on the store's channel, or None if that fails."""
        try:
            conn = self._connect()
        except StorageError:
            return None
        try:
            conn.execute(self._queries.listen)
        except psycopg.Error:
            conn.close()
            return None
        return conn

    def _open(self) -> tuple[psycopg_pool.ConnectionPool[_Conn], _Conn | None]:
        """Connect, set up the schema, LISTEN and fill the pool (in a worker thread)."""
        conn = self._connect()
        pool: psycopg_pool.ConnectionPool[_Conn] | None = None
        try:
            _ensure_schema(conn, self._queries, self.store, self._where)
            listening = False
            if self._listen:
                try:
                    conn.execute(self._queries.listen)
                    listening = True
                except psycopg.OperationalError:
                    raise
                except psycopg.Error:
                    pass  # e.g. a hot standby: poll instead
            pool = psycopg_pool.ConnectionPool(
                self._dsn,
                kwargs={"autocommit": True, "connect_timeout": self._connect_timeout},
                min_size=1,
                max_size=self.pool_size,
                open=False,
                timeout=self.connect_timeout,
                name=f"durable-{self.store}",
            )
            pool.open(wait=True, timeout=self.connect_timeout)
        except BaseException as exc:
            conn.close()
            if pool is not None:
                pool.close()
            if isinstance(exc, psycopg.Error):
                raise self._error("setting up the store", exc) from exc
            raise
        if not listening:
            conn.close()
        return pool, (conn if listening else None)

    def _once(self, doing: str, fn: Callable[[_Conn], T]) -> T:
        """Run *fn* on a connection of its own (no pool, no LISTEN), then close it."""
        conn = self._connect()
        try:
            return fn(conn)
        except psycopg.Error as exc:
            raise self._error(doing, exc) from exc
        finally:
            conn.close()

    def _error(self, doing: str, exc: psycopg.Error) -> StorageError:
        if isinstance(exc, psycopg_pool.PoolClosed):
            return StorageError(
                f"this PostgresDriver ({self._where}) is closed; make a new one"
            )
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return StorageError(
                f"{doing} in PostgreSQL ({self._where}) failed: no connection within "
                f"{self.connect_timeout:g} s; check that the server is up, or raise "
                "pool_size if many tasks use the driver at once"
            )
        if _is_connection_error(exc):
            return StorageError(
                f"{doing} in PostgreSQL ({self._where}) failed, the connection was "
                f"refused or lost: {_reason(exc)}; check that the server is up and "
                "reachable, then try again"
            )
        outcome = "; nothing of the batch was applied" if doing == _WRITING else ""
        return StorageError(
            f"{doing} in PostgreSQL ({self._where}) failed: {_reason(exc)}{outcome}"
        )

    async def _run(
        self,
        doing: str,
        fn: Callable[[_Conn], T],
        pool: psycopg_pool.ConnectionPool[_Conn] | None = None,
    ) -> T:
        """Run *fn* with a pooled connection in a worker thread."""
        if pool is None:
            pool = await self._ready()

        def call() -> T:
            try:
                with pool.connection() as conn:
                    return fn(conn)
            except psycopg.Error as exc:
                raise self._error(doing, exc) from exc

        return await anyio.to_thread.run_sync(call)

    # --- the protocol ---------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """Return the value at *key*, or ``None``."""
        query = self._queries.get

        def get(conn: _Conn) -> bytes | None:
            row = conn.execute(query, (key,), binary=True).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run("reading a key", get)

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return pairs with ``start <= key < end`` in key order (see `Driver`)."""
        check_limit(limit)
        end = min(end, RESERVED_PREFIX)  # drivers' own keys are never listed
        if start >= end or limit == 0:
            await self._ready()  # a closed driver still refuses
            return []
        query = self._queries.range_reverse if reverse else self._queries.range

        def list_range(conn: _Conn) -> list[tuple[bytes, bytes]]:
            rows = conn.execute(query, (start, end, limit), binary=True).fetchall()
            return [(bytes(key), bytes(value)) for key, value in rows]

        return await self._run("listing keys", list_range)

    async def write(self, batch: Batch) -> None:
        """Apply *batch* in one transaction, then wake local subscribers."""
        if not batch.ops:
            await self._ready()  # a closed driver still refuses
            return
        pool = await self._ready()
        # shielded: once committed, local subscribers must hear of it even if the
        # caller was cancelled meanwhile (the listener skips our own notifications)
        with anyio.CancelScope(shield=True):
            await self._run(_WRITING, lambda conn: self._write(conn, batch), pool)
        self._notifier.notify_batch(batch)

    def _write(self, conn: _Conn, batch: Batch) -> None:
        q = self._queries
        woken: list[str] = []
        # W1 hot path: pipelined, a plain batch costs one round trip; one with checks
        # costs two, since the checked values must be back before the ops are sent
        with conn.pipeline(), conn.transaction():
            cursor = conn.cursor()
            if batch.has_check:
                reserved = self._check(conn, batch)
                if reserved:  # back to absent before the ops; the lock stays
                    cursor.execute(q.unreserve, (reserved,))
            for code, a, b in batch.ops:
                if code == PUT:
                    cursor.execute(q.put, (a, b))
                elif code == DELETE:
                    cursor.execute(q.delete, (a,))
                elif code == DELETE_RANGE:
                    if a < min(b, RESERVED_PREFIX):
                        cursor.execute(q.delete_range, (a, min(b, RESERVED_PREFIX)))
                elif code == SET_ALARM:
                    cursor.execute(q.set_alarm, (a.encode(), b))
                elif code == CLEAR_ALARM:
                    cursor.execute(q.clear_alarm, (a.encode(),))
                elif code == NOTIFY:
                    woken.append(a)
            if self._notify and (woken or batch.sets_alarm):
                # inside the transaction: PostgreSQL delivers it only on commit.
                # (notify=False: every process of the store polls, or the server
                # has no pg_notify, as CockroachDB)
                for payload in _payloads(self._sender, woken, alarm=batch.sets_alarm):
                    cursor.execute(q.notify, (q.channel, payload))

    def _check(self, conn: _Conn, batch: Batch) -> list[bytes]:
        """Lock the checked keys until commit, then compare; return keys reserved.

        Raises `WriteConflictError` for the first check (in op order) that fails,
        which rolls the transaction back: nothing of the batch is applied.

        A present key is locked by ``FOR UPDATE``: a writer that changes or deletes
        it waits for our commit, and under READ COMMITTED the lock returns the
        latest committed value, not a stale snapshot's. An absent key has no row to
        lock, so we insert a placeholder for it (``ON CONFLICT DO NOTHING``: if it
        is inserted, the key was absent) and `_write` deletes it again before the
        ops. The placeholder's uncommitted index entry makes every other insert of
        the key, checked or plain, wait for our commit, so no one can create the key
        in between. An advisory lock would not do: a plain put does not take it.
        A key expected absent that is present fails without a lock: nothing of a
        failed batch is written, so it needs none.
        """
        absent: set[bytes] = set()  # keys expected absent
        present: set[bytes] = set()  # keys expected to hold a value
        for code, key, value in batch.ops:
            if code == CHECK:
                (absent if value is None else present).add(key)
        # both statements go out in one round trip; rows are locked in key order
        reserving = conn.cursor()
        if absent:
            reserving.execute(self._queries.reserve, (sorted(absent),), binary=True)
        locking = conn.cursor()
        if present:
            locking.execute(self._queries.lock, (sorted(present),), binary=True)
        reserved = [bytes(key) for (key,) in reserving.fetchall()] if absent else []
        locked = (
            {bytes(key): bytes(value) for key, value in locking.fetchall()}
            if present
            else {}
        )
        now_absent = set(reserved)

        def read(key: bytes) -> bytes | None:
            if key in now_absent:  # our placeholder: locking reads it as b""
                return None
            if key in locked:
                return locked[key]
            if key in absent:  # not reserved: another transaction had committed it
                return b""  # (present; any bytes fail a check for absence)
            return None

        conflict = failed_check(batch, read)
        if conflict is not None:
            raise WriteConflictError(conflict)
        return reserved

    async def get_alarm(self, workflow_id: str) -> float | None:
        """Return the workflow's alarm time, or ``None``."""
        query = self._queries.get_alarm

        def get_alarm(conn: _Conn) -> float | None:
            row = conn.execute(query, (workflow_id.encode(),), binary=True).fetchone()
            return None if row is None else float(row[0])

        return await self._run("reading an alarm", get_alarm)

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        """Return alarms due by *until*, earliest first (one index range scan)."""
        check_limit(limit)
        q = self._queries
        query, params = (
            (q.alarms, (limit,)) if until is None else (q.alarms_until, (until, limit))
        )

        def list_alarms(conn: _Conn) -> list[Alarm]:
            rows = conn.execute(query, params, binary=True).fetchall()
            return [Alarm(bytes(wf).decode(), float(at)) for wf, at in rows]

        return await self._run("listing alarms", list_alarms)

    async def claim_alarms(
        self, *, until: float, limit: int, lease_until: float
    ) -> list[Alarm]:
        """Take up to *limit* alarms due by *until*, moving each to *lease_until*.

        One statement: ``FOR UPDATE SKIP LOCKED`` passes over alarms that another
        claimer (or a batch) has locked, so concurrent claimers in any process never
        take the same alarm. Returns them with their previous times, earliest first.
        Wakes no alarm subscription: a claim only moves due alarms later, so a
        worker sleeping until an earlier time at worst wakes once for nothing.
        """
        check_limit(limit)
        if limit == 0:
            await self._ready()  # a closed driver still refuses
            return []
        query = self._queries.claim
        params = (float(until), limit, float(lease_until))

        def claim_alarms(conn: _Conn) -> list[Alarm]:
            rows = conn.execute(query, params, binary=True).fetchall()
            claimed = [Alarm(bytes(wf).decode(), float(at)) for wf, at in rows]
            # RETURNING has no order; the index orders by bytes, as UTF-8 str does
            claimed.sort(key=lambda alarm: (alarm.at, alarm.workflow_id))
            return claimed

        return await self._run("claiming alarms", claim_alarms)

    def subscribe(self, workflow_id: str) -> Subscription:
        """Take out a subscription to the workflow's wake-ups, from any process."""
        return self._notifier.subscribe(workflow_id)

    def subscribe_alarms(self) -> Subscription:
        """Take out a subscription woken whenever any process's batch sets an alarm."""
        return self._notifier.subscribe(None)

    def _deliver(self, batch: Batch | None) -> None:
        """Wake local subscribers for another driver's commit (in the event loop)."""
        if self._closed:
            return
        if batch is None:
            self._notifier.notify_all()
        else:
            self._notifier.notify_batch(batch)

    async def close(self) -> None:
        """Stop listening and close every connection; safe to call twice."""
        while self._opening is not None:
            await self._opening.wait()
        if self._closed:
            return
        self._closed = True
        pool, listener = self._pool, self._listener
        self._pool = self._listener = None
        if pool is None:
            return
        # any payload of our own wakes the listener, which then sees its stop flag
        stop_params = (self._queries.channel, json.dumps({"sender": self._sender}))

        def shut_down() -> None:
            if listener is not None:
                listener.stop()
                if self.listening:
                    try:  # wake the listener now rather than at its next timeout
                        with pool.connection(timeout=self.connect_timeout) as conn:
                            conn.execute(self._queries.notify, stop_params)
                    except psycopg.Error:
                        pass
                listener.join()
            pool.close()

        await anyio.to_thread.run_sync(shut_down)


# --- the schema alone (for ``durable migrate``) -------------------------------------


def migrate_store(
    dsn: str,
    *,
    store: str = DEFAULT_STORE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> int | None:
    """Create *store*'s schema, or migrate it to `SCHEMA_VERSION`, and nothing else.

    The same as a `PostgresDriver` does when it opens (under the same advisory lock),
    over one connection, blocking. Returns the version the store had before, or
    ``None`` if it was created. Raises what the driver raises: ``ValueError`` for a
    bad *dsn* or *store*, `StorageError` for the rest (a newer store too).
    """
    driver = PostgresDriver(dsn, store=store, connect_timeout=connect_timeout)
    return driver._once(
        "setting up the store",
        lambda conn: _ensure_schema(conn, driver._queries, driver.store, driver._where),
    )


def read_store_version(
    dsn: str,
    *,
    store: str = DEFAULT_STORE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> int | None:
    """The schema version of *store*, or ``None`` if it has none; reads only.

    Over one connection, blocking; raises as `migrate_store` does.
    """
    driver = PostgresDriver(dsn, store=store, connect_timeout=connect_timeout)
    return driver._once(
        "reading the schema version",
        lambda conn: _read_schema_version(conn, driver._queries, driver.store),
    )
