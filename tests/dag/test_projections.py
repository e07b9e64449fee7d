"""SQLiteProjectionStore: direct handles, exactly-once sessions, concurrency, close."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from durable.dag._projections import SQLiteProjectionStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

CREATE = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, label TEXT)"
INSERT = "INSERT INTO items (id, label) VALUES (?, ?)"
SELECT = "SELECT id, label FROM items ORDER BY id"
ODD_NAMES = ["a", "A", "a:b", "a/b", "..", ".", "a%2Fb", "ü", "a b", "x.sqlite3"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteProjectionStore]:
    made = SQLiteProjectionStore(tmp_path / "projections", busy_timeout=10.0)
    try:
        await made.projection("p").execute(CREATE)
        yield made
    finally:
        await made.close()


async def labels(store: SQLiteProjectionStore, name: str = "p") -> list[object]:
    return [row["label"] for row in await store.projection(name).query(SELECT)]


class TestDirectHandles:
    async def test_execute_then_query_round_trips_rows_as_dicts(
        self, store: SQLiteProjectionStore
    ) -> None:
        items = store.projection("p")
        assert await items.execute(INSERT, (1, "one")) == 1
        assert await items.execute(INSERT, [2, "two"]) == 1
        assert (
            await items.execute(
                "INSERT INTO items VALUES (:id, :label)", {"id": 3, "label": "three"}
            )
            == 1
        )
        assert await items.query(SELECT) == [
            {"id": 1, "label": "one"},
            {"id": 2, "label": "two"},
            {"id": 3, "label": "three"},
        ]
        assert await items.query("SELECT label FROM items WHERE id = ?", (2,)) == [
            {"label": "two"}
        ]

    async def test_execute_returns_rows_changed_and_zero_when_unknown(
        self, store: SQLiteProjectionStore
    ) -> None:
        items = store.projection("p")
        await items.executemany(INSERT, [(1, "a"), (2, "a"), (3, "b")])
        assert (
            await items.execute("UPDATE items SET label = 'c' WHERE label = 'a'") == 2
        )
        assert await items.execute(SELECT) == 0

    async def test_bytes_values_stay_bytes(self, store: SQLiteProjectionStore) -> None:
        blobs = store.projection("blobs")
        await blobs.execute("CREATE TABLE b (v BLOB)")
        await blobs.execute("INSERT INTO b VALUES (?)", (b"\x00\xff",))
        assert await blobs.query("SELECT v FROM b") == [{"v": b"\x00\xff"}]

    async def test_each_direct_statement_commits_on_its_own(
        self, store: SQLiteProjectionStore
    ) -> None:
        await store.projection("p").execute(INSERT, (1, "one"))
        assert await labels(store) == ["one"]

    async def test_executemany_is_one_transaction(
        self, store: SQLiteProjectionStore
    ) -> None:
        items = store.projection("p")
        assert await items.executemany(INSERT, [(1, "a"), (2, "b")]) == 2
        with pytest.raises(sqlite3.IntegrityError):
            await items.executemany(INSERT, [(3, "c"), (1, "duplicate")])
        assert await labels(store) == ["a", "b"]

    async def test_sql_errors_propagate_unwrapped(
        self, store: SQLiteProjectionStore
    ) -> None:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await store.projection("p").query("SELECT * FROM missing")

    @pytest.mark.parametrize("params", ["ab", b"ab"])
    async def test_a_string_is_not_taken_for_a_parameter_sequence(
        self, store: SQLiteProjectionStore, params: str | bytes
    ) -> None:
        with pytest.raises(TypeError, match="tuple"):
            await store.projection("p").execute(INSERT, params)


class TestSessions:
    async def test_commit_applies_the_writes_and_the_marker(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        assert await session.execute(INSERT, (1, "one")) == 1
        assert await session.executemany(INSERT, [(2, "two"), (3, "three")]) == 2
        assert await session.commit() is True
        assert await labels(store) == ["one", "two", "three"]
        assert await store.applied("p", "run-1:load") is True

    async def test_rollback_applies_nothing_and_can_be_repeated(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        await session.rollback()
        await session.rollback()
        assert await labels(store) == []
        assert await store.applied("p", "run-1:load") is False

    async def test_rerun_after_a_commit_returns_false_and_leaves_no_trace(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "projections"
        first = SQLiteProjectionStore(root)
        try:
            await first.projection("p").execute(CREATE)
            session = first.session("p", "run-1:load")
            await session.execute(INSERT, (1, "first run"))
            assert await session.commit() is True
        finally:
            await first.close()  # the process "crashes" before recording the step

        again = SQLiteProjectionStore(root)
        try:
            session = again.session("p", "run-1:load")
            await session.execute("DELETE FROM items")
            await session.execute(INSERT, (2, "second run"))
            assert await session.commit() is False
            assert await labels(again) == ["first run"]
        finally:
            await again.close()

    async def test_keys_are_independent(self, store: SQLiteProjectionStore) -> None:
        for number, key in enumerate(["run-1:a", "run-1:b", "run-2:a"]):
            session = store.session("p", key)
            await session.execute(INSERT, (number, key))
            assert await session.commit() is True
        assert await labels(store) == ["run-1:a", "run-1:b", "run-2:a"]

    async def test_a_session_that_wrote_nothing_commits_nothing(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:read-only")
        assert await session.query(SELECT) == []
        assert await session.commit() is True
        assert await store.applied("p", "run-1:read-only") is False

    async def test_session_sees_its_writes_and_a_direct_handle_does_not(
        self, store: SQLiteProjectionStore
    ) -> None:
        await store.projection("p").execute(INSERT, (1, "committed"))
        session = store.session("p", "run-1:load")
        assert [row["label"] for row in await session.query(SELECT)] == ["committed"]
        await session.execute(INSERT, (2, "pending"))
        assert [row["label"] for row in await session.query(SELECT)] == [
            "committed",
            "pending",
        ]
        assert await labels(store) == ["committed"]
        assert await session.commit() is True
        assert await labels(store) == ["committed", "pending"]

    async def test_concurrent_sessions_both_commit_without_deadlock(
        self, store: SQLiteProjectionStore
    ) -> None:
        first_wrote = anyio.Event()
        results: dict[str, bool] = {}

        async def first() -> None:
            session = store.session("p", "first")
            await session.query(SELECT)
            await session.execute(INSERT, (1, "first"))
            first_wrote.set()
            await anyio.wait_all_tasks_blocked()  # the second waits on the write lock
            results["first"] = await session.commit()

        async def second() -> None:
            session = store.session("p", "second")
            await session.query(SELECT)  # read first: a deferred write would deadlock
            await first_wrote.wait()
            await session.execute(INSERT, (2, "second"))
            results["second"] = await session.commit()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(second)
                group.start_soon(first)
        assert results == {"first": True, "second": True}
        assert await labels(store) == ["first", "second"]

    async def test_many_concurrent_sessions_all_apply_once(
        self, store: SQLiteProjectionStore
    ) -> None:
        async def step(number: int) -> None:
            session = store.session("p", f"step-{number}")
            count = len(await session.query(SELECT))
            await session.execute(INSERT, (number, str(count)))
            assert await session.commit() is True

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for number in range(8):
                    group.start_soon(step, number)
        rows = await store.projection("p").query(SELECT)
        assert [row["id"] for row in rows] == list(range(8))

    async def test_sessions_outnumbering_worker_threads_all_commit(
        self, store: SQLiteProjectionStore
    ) -> None:
        # Waiting writers must not park worker threads: if they did, they would take
        # both threads and the session holding the lock could never commit.
        limiter = anyio.to_thread.current_default_thread_limiter()
        tokens, limiter.total_tokens = limiter.total_tokens, 2
        try:

            async def step(number: int) -> None:
                session = store.session("p", f"step-{number}")
                await session.execute(INSERT, (number, "x"))
                await anyio.lowlevel.checkpoint()
                assert await session.commit() is True

            with anyio.fail_after(5):  # well under the store's busy_timeout
                async with anyio.create_task_group() as group:
                    for number in range(6):
                        group.start_soon(step, number)
        finally:
            limiter.total_tokens = tokens
        assert len(await labels(store)) == 6

    async def test_a_writer_waits_at_most_busy_timeout(self, tmp_path: Path) -> None:
        store = SQLiteProjectionStore(tmp_path, busy_timeout=0.0)
        try:
            await store.projection("p").execute(CREATE)
            holder = store.session("p", "holder")
            await holder.execute(INSERT, (1, "holder"))
            waiter = store.session("p", "waiter")
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await waiter.execute(INSERT, (2, "waiter"))
            assert await holder.commit() is True
            await waiter.execute(INSERT, (2, "waiter"))  # the failed wait left no turn
            assert await waiter.commit() is True
        finally:
            await store.close()

    async def test_a_waiting_writer_can_be_cancelled(
        self, store: SQLiteProjectionStore
    ) -> None:
        holder = store.session("p", "holder")
        await holder.execute(INSERT, (1, "holder"))
        waiter = store.session("p", "waiter")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(waiter.execute, INSERT, (2, "waiter"))
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert await holder.commit() is True
        await waiter.execute(INSERT, (2, "waiter"))
        assert await waiter.commit() is True
        assert await labels(store) == ["holder", "waiter"]

    async def test_a_failed_statement_leaves_the_session_usable_for_rollback(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        with pytest.raises(sqlite3.IntegrityError):
            await session.execute(INSERT, (1, "duplicate"))
        await session.rollback()
        assert await labels(store) == []
        assert await store.applied("p", "run-1:load") is False

    async def test_a_session_continues_after_a_statement_error(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        with pytest.raises(sqlite3.OperationalError):
            await session.execute("INSERT INTO missing VALUES (1)")
        await session.execute(INSERT, (2, "two"))
        assert await session.commit() is True
        assert await labels(store) == ["one", "two"]

    async def test_a_finished_session_refuses_further_use(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        await session.commit()
        with pytest.raises(RuntimeError, match="already committed or rolled back"):
            await session.execute(INSERT, (2, "two"))
        with pytest.raises(RuntimeError, match="already committed or rolled back"):
            await session.commit()
        await session.rollback()  # still a no-op
        assert await labels(store) == ["one"]

    async def test_sql_that_ends_the_transaction_blocks_the_marker(
        self, store: SQLiteProjectionStore
    ) -> None:
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        await session.execute("ROLLBACK")
        with pytest.raises(RuntimeError, match="lost its transaction"):
            await session.commit()
        assert await store.applied("p", "run-1:load") is False

    @pytest.mark.parametrize("key", ["", None])
    def test_a_session_key_must_be_a_non_empty_str(
        self, tmp_path: Path, key: str
    ) -> None:
        with pytest.raises(ValueError, match="key"):
            SQLiteProjectionStore(tmp_path).session("p", key)


class TestClose:
    async def test_close_rolls_back_open_sessions(self, tmp_path: Path) -> None:
        root = tmp_path / "projections"
        store = SQLiteProjectionStore(root)
        await store.projection("p").execute(CREATE)
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "never committed"))
        await store.close()

        reopened = SQLiteProjectionStore(root)
        try:
            assert await labels(reopened) == []
            assert await reopened.applied("p", "run-1:load") is False
        finally:
            await reopened.close()

    async def test_close_does_not_wait_for_a_writer_queued_behind_another(
        self, tmp_path: Path
    ) -> None:
        store = SQLiteProjectionStore(tmp_path, busy_timeout=60.0)
        await store.projection("p").execute(CREATE)
        holder = store.session("p", "holder")
        await holder.execute(INSERT, (1, "holder"))
        waiter = store.session("p", "waiter")
        failures: list[BaseException] = []

        async def write() -> None:
            try:
                await waiter.execute(INSERT, (2, "waiter"))
            except RuntimeError as error:
                failures.append(error)

        with anyio.fail_after(10):  # far less than busy_timeout
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                await store.close()
        assert len(failures) == 1
        assert "store is closed" in str(failures[0])

    async def test_everything_refuses_use_after_close(self, tmp_path: Path) -> None:
        store = SQLiteProjectionStore(tmp_path)
        handle = store.projection("p")
        await handle.execute(CREATE)
        session = store.session("p", "run-1:load")
        await session.execute(INSERT, (1, "one"))
        await store.close()
        await store.close()  # twice is fine

        with pytest.raises(RuntimeError, match="store is closed"):
            await handle.query(SELECT)
        with pytest.raises(RuntimeError, match="store is closed"):
            await session.commit()
        with pytest.raises(RuntimeError, match="store is closed"):
            store.projection("p")
        with pytest.raises(RuntimeError, match="store is closed"):
            store.session("p", "run-1:other")
        with pytest.raises(RuntimeError, match="store is closed"):
            await store.applied("p", "run-1:load")
        await session.rollback()  # cleanup stays a no-op


class TestNames:
    async def test_odd_names_map_to_distinct_files_inside_root(
        self, store: SQLiteProjectionStore
    ) -> None:
        paths = {store.path(name) for name in ODD_NAMES}
        assert len(paths) == len(ODD_NAMES)
        for name in ODD_NAMES:
            await store.projection(name).execute(CREATE)
            await store.projection(name).execute(INSERT, (1, name))
        for name in ODD_NAMES:
            assert await labels(store, name) == [name]
        for name in ODD_NAMES:
            assert store.path(name).parent == store.root
            assert store.path(name).is_file()

    def test_a_name_becomes_one_encoded_file(self, tmp_path: Path) -> None:
        store = SQLiteProjectionStore(tmp_path)
        assert store.path("orders") == tmp_path.resolve() / "orders.sqlite3"
        assert store.path("a:b/c") == tmp_path.resolve() / "a%3Ab%2Fc.sqlite3"
        assert store.path("..") == tmp_path.resolve() / "%2E%2E.sqlite3"

    def test_an_empty_name_is_refused(self, tmp_path: Path) -> None:
        store = SQLiteProjectionStore(tmp_path)
        with pytest.raises(ValueError, match="empty"):
            store.projection("")
        with pytest.raises(ValueError, match="empty"):
            store.session("", "key")

    async def test_the_database_is_created_on_first_use_in_wal_mode(
        self, tmp_path: Path
    ) -> None:
        store = SQLiteProjectionStore(tmp_path / "deep" / "root")
        try:
            assert not store.path("p").exists()
            rows = await store.projection("p").query("PRAGMA journal_mode")
            assert rows == [{"journal_mode": "wal"}]
            tables = await store.projection("p").query(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
            assert tables == [{"name": "_durable_applied"}]
        finally:
            await store.close()
