"""PostgreSQL for the suite: session DSNs, throwaway stores, W0's raw ceiling, load.

Every store the suite makes is a schema named ``bench_<pid>_<random hex>``, dropped
when its workload ends. A run killed half-way leaves its schema behind; drop it with
``DROP SCHEMA bench_... CASCADE``.

Durability follows ``--sync`` as on LevelDB: without it the suite's sessions run
with ``synchronous_commit=off`` (a commit returns before its WAL reaches the disk,
like ``LevelDBDriver(sync=False)``), with it ``synchronous_commit=on`` (the server
flushes the WAL before each commit returns, like ``sync=True``).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg
import psycopg.conninfo
from psycopg import sql

import durable

if TYPE_CHECKING:
    from collections.abc import Sequence

DSN_ENV = "DURABLE_POSTGRES"  # as the durable command reads it
DEFAULT_DSN = "host=127.0.0.1 dbname=test"
"""TCP to the local server, as the current OS user (CI: trust auth, user root)."""

SUITE = "durable-bench"  # application_name of the suite's own measuring connections
Puts = list[tuple[bytes, bytes]]


def default_dsn() -> str:
    return os.environ.get(DSN_ENV, DEFAULT_DSN)


def default_pool_size() -> int:
    """PostgresDriver's own default pool_size (making a driver does not connect)."""
    return durable.PostgresDriver(DEFAULT_DSN).pool_size


def session_dsn(dsn: str, *, sync: bool) -> str:
    """*dsn* with ``synchronous_commit`` set for the suite's durability mode."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    setting = f"-c synchronous_commit={'on' if sync else 'off'}"
    options = f"{params.get('options') or ''} {setting}".strip()
    return psycopg.conninfo.make_conninfo(dsn, options=options)


def store_dsn(dsn: str, store: str) -> str:
    """*dsn* for the drivers of *store*: their backends are named after it, so
    `backend_seconds` finds them (and only them) in pg_stat_activity."""
    return psycopg.conninfo.make_conninfo(dsn, application_name=store)


def new_store() -> str:
    """``bench_<pid>_<random>``: whose it is shows in the name, if one is left over."""
    return f"bench_{os.getpid()}_{secrets.token_hex(4)}"


def drop_store(dsn: str, store: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store))
        )


async def drop_store_after(dsn: str, store: str) -> None:
    """Drop *store* when its workload is over; failing, say so instead of raising
    (so an error of the workload itself is the one that shows)."""
    try:
        await anyio.to_thread.run_sync(drop_store, dsn, store)
    except psycopg.Error as exc:
        print(f"could not drop store {store}: {exc}", file=sys.stderr)


class MeasuredPostgresDriver(durable.PostgresDriver):
    """A PostgresDriver whose backends say how much CPU they used, when it closes."""

    def __init__(self, dsn: str, *, store: str, **kwargs: Any) -> None:
        self.dsn = store_dsn(dsn, store)
        super().__init__(self.dsn, store=store, **kwargs)
        self.backend_seconds = 0.0  # CPU seconds of its server backends, once closed
        self._measured = False

    async def close(self) -> None:
        if not self._measured:
            self._measured = True
            try:
                measured = await anyio.to_thread.run_sync(
                    backend_seconds, self.dsn, self.store
                )
            except psycopg.Error:
                measured = None  # the server is gone: close anyway, unmeasured
            self.backend_seconds = measured or 0.0
        await super().close()


class RecordingPostgresDriver(MeasuredPostgresDriver):
    """A PostgresDriver that remembers the puts of every batch it writes (for W0)."""

    def __init__(self, dsn: str, *, store: str, **kwargs: Any) -> None:
        super().__init__(dsn, store=store, **kwargs)
        self.batches: list[Puts] = []

    async def write(self, batch: durable.Batch) -> None:
        self.batches.append([(op[1], op[2]) for op in batch.ops if op[0] == 0])
        await super().write(batch)


def write_raw(dsn: str, store: str, batches: Sequence[Puts]) -> tuple[float, float]:
    """W0 on PostgreSQL: each batch's puts as one pipelined transaction.

    The same statement and pipelining as `PostgresDriver`'s writes, on one
    connection in this thread: what is left is the server's round trip and commit.
    Returns the seconds it took and the CPU seconds its server backend used.
    """
    schema = sql.Identifier(store)
    put = (
        sql.SQL(
            "INSERT INTO {}.kv (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        .format(schema)
        .as_string()
    )
    dsn = store_dsn(dsn, store)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.kv (key bytea PRIMARY KEY, value bytea NOT NULL)"
            ).format(schema)
        )
        started = time.perf_counter()
        for puts in batches:
            with conn.pipeline(), conn.transaction():
                cursor = conn.cursor()
                for key, value in puts:
                    cursor.execute(put, (key, value))
        seconds = time.perf_counter() - started
        return seconds, backend_seconds(dsn, store) or 0.0


# --- load: where the time goes while worker processes run ---------------------------


def machine_jiffies() -> tuple[int, int] | None:
    """The machine's busy and total CPU time so far, in ticks (Linux); else None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> float | None:
    """The share of all cores busy between two `machine_jiffies` (others' work too)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def backend_seconds(dsn: str, application_name: str) -> float | None:
    """CPU seconds used so far by the server backends named *application_name*.

    Reads /proc, so it sees a server on this machine only; None for another one.
    """
    with psycopg.connect(dsn, autocommit=True, application_name=SUITE) as conn:
        pids = [
            int(pid)
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
        ]
    ticks, found = 0, False
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # not on this machine, or gone meanwhile
        found = True
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        ticks += int(utime) + int(stime)
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


ACTIVITY = (
    "SELECT CASE WHEN state = 'active'"
    " THEN coalesce(wait_event_type || ':' || wait_event, 'CPU')"
    " ELSE state END, count(*) FROM pg_stat_activity"
    " WHERE application_name = %s AND state <> 'idle' GROUP BY 1"
)


async def sample_activity(
    dsn: str, store: str, done: anyio.Event, every: float = 0.05
) -> dict[str, float]:
    """Sample the backends of *store*'s drivers until *done*: mean count per state.

    ``CPU`` is running (no wait); ``type:event`` is a wait (``Client:ClientRead``:
    for the next statement of a pipeline, ``LWLock:WALWrite``: for the WAL, ...);
    ``idle in transaction`` is between two round trips of one transaction.
    """
    conn = await anyio.to_thread.run_sync(
        lambda: psycopg.connect(dsn, autocommit=True, application_name=SUITE)
    )
    totals: Counter[str] = Counter()
    samples = 0
    try:
        while not done.is_set():
            rows = await anyio.to_thread.run_sync(
                lambda: conn.execute(ACTIVITY, (store,)).fetchall()
            )
            samples += 1
            for state, count in rows:
                totals[str(state)] += int(count)
            with anyio.move_on_after(every):
                await done.wait()
    finally:
        await anyio.to_thread.run_sync(conn.close)
    return {state: round(total / samples, 2) for state, total in sorted(totals.items())}
