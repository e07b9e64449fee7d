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
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import attrs
import psycopg
import psycopg.conninfo
from psycopg import sql

import durable

if TYPE_CHECKING:
    from collections.abc import Sequence

DSN_ENV = "DURABLE_POSTGRES_DSN"
DEFAULT_DSN = "host=127.0.0.1 dbname=test"
"""TCP to the local server, as the current OS user (CI: trust auth, user root)."""

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


def new_store() -> str:
    """``bench_<pid>_<random>``: whose it is shows in the name, if one is left over."""
    return f"bench_{os.getpid()}_{secrets.token_hex(4)}"


def drop_store(dsn: str, store: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store))
        )


class RecordingPostgresDriver(durable.PostgresDriver):
    """A PostgresDriver that remembers the puts of every batch it writes (for W0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[Puts] = []

    async def write(self, batch: durable.Batch) -> None:
        self.batches.append([(op[1], op[2]) for op in batch.ops if op[0] == 0])
        await super().write(batch)


def write_raw(dsn: str, store: str, batches: Sequence[Puts]) -> float:
    """W0 on PostgreSQL: each batch's puts as one pipelined transaction; seconds.

    The same statement and pipelining as `PostgresDriver`'s writes, on one
    connection in this thread: what is left is the server's round trip and commit.
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
        return time.perf_counter() - started


# --- load: where the time goes while worker processes run ---------------------------


@attrs.frozen
class CpuSnapshot:
    """Jiffies: the machine's busy and total, and every local postgres process's."""

    busy: int
    total: int
    postgres: int  # with the exited backends the postmaster reaped (its cutime)


def cpu_snapshot() -> CpuSnapshot | None:
    """Read /proc (Linux); None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    postgres = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name, rest = stat[stat.index("(") + 1 :].split(")", 1)
        if name.startswith("postgres"):  # utime, stime, cutime, cstime
            postgres += sum(int(field) for field in rest.split()[11:15])
    return CpuSnapshot(sum(fields) - idle, sum(fields), postgres)


def cpu_between(
    before: CpuSnapshot | None, after: CpuSnapshot | None, seconds: float
) -> dict[str, float]:
    """Machine busy share (of all cores) and local PostgreSQL CPU in cores."""
    if before is None or after is None or after.total <= before.total:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    spent = after.postgres - before.postgres
    return {
        "machine_busy": round(
            (after.busy - before.busy) / (after.total - before.total), 3
        ),
        "postgres_cores": round(spent / tick / seconds, 3),
    }


ACTIVITY = (
    "SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type, 'CPU')"
    " ELSE state END, count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend'"
    " AND pid <> pg_backend_pid() AND state <> 'idle' GROUP BY 1"
)


async def sample_activity(
    dsn: str, done: anyio.Event, every: float = 0.05
) -> dict[str, float]:
    """Sample pg_stat_activity until *done*: mean backends per state or wait.

    ``CPU`` is running (no wait), ``IO``/``Lock``/``LWLock`` are waits, ``Client``
    is reading the next statement, ``idle in transaction`` waits for the client.
    """
    conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    totals: Counter[str] = Counter()
    samples = 0
    try:
        while not done.is_set():
            rows = await anyio.to_thread.run_sync(
                lambda: conn.execute(ACTIVITY).fetchall()
            )
            samples += 1
            for state, count in rows:
                totals[str(state)] += int(count)
            with anyio.move_on_after(every):
                await done.wait()
    finally:
        await anyio.to_thread.run_sync(conn.close)
    return {state: round(total / samples, 2) for state, total in sorted(totals.items())}
