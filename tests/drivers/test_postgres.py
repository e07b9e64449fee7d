"""PostgresDriver only: wake-ups and races across connections and processes, stores, errors.

The conformance suite (test_drivers.py) covers the protocol; these run against the
same local PostgreSQL, each in a fresh store that the `postgres_store` fixture drops.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

import durable
from durable import PostgresDriver, StorageError, WriteConflictError
from durable._drivers import DEFAULT_POLL_INTERVAL, Alarm, Batch
from durable._drivers._postgres import SCHEMA_VERSION

from .test_drivers import SAFETY_TIMEOUT, is_woken, nothing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from psycopg.rows import TupleRow

    from durable import Subscription

    _Raw = psycopg.Connection[TupleRow]

SUBPROCESS_TIMEOUT = 60  # seconds; a hang fails the test instead of blocking CI
FAST_POLL = 0.05  # seconds; for the tests of polling and of reconnecting


@pytest.fixture
async def driver(
    postgres_dsn: str, postgres_store: str
) -> AsyncIterator[PostgresDriver]:
    async with PostgresDriver(postgres_dsn, store=postgres_store) as made:
        yield made


@pytest.fixture
async def other(
    postgres_dsn: str, postgres_store: str
) -> AsyncIterator[PostgresDriver]:
    """A second driver on the same store: its own pool and listener, like a process."""
    async with PostgresDriver(postgres_dsn, store=postgres_store) as made:
        yield made


async def notify(driver: durable.Driver, *workflow_ids: str) -> None:
    batch = Batch()
    for workflow_id in workflow_ids:
        batch.notify(workflow_id)
    await driver.write(batch)


async def set_alarm(driver: durable.Driver, workflow_id: str, at: float) -> None:
    batch = Batch()
    batch.set_alarm(workflow_id, at)
    await driver.write(batch)


async def wait(subscription: Subscription) -> None:
    with anyio.fail_after(SAFETY_TIMEOUT):
        await subscription.wait()


def query(dsn: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def schema_exists(dsn: str, store: str) -> bool:
    return bool(query(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", store))


@pytest.fixture
async def raw(postgres_dsn: str, postgres_store: str) -> AsyncIterator[_Raw]:
    """A plain connection whose transaction stays open: it holds locks, or a put.

    Closed before the store is dropped (it depends on it), so that a test failing
    while it holds a lock cannot leave the drop waiting for it.
    """

    def connect() -> _Raw:
        return psycopg.connect(postgres_dsn)

    conn = await anyio.to_thread.run_sync(connect)
    try:
        yield conn
    finally:
        await anyio.to_thread.run_sync(conn.close)


async def execute(conn: _Raw, statement: str, *params: object) -> None:
    await anyio.to_thread.run_sync(conn.execute, statement, params)


async def wait_for_lock_waiters(dsn: str, store: str, count: int) -> None:
    """Wait until *count* statements on *store*'s tables wait for a lock."""
    statement = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE %s"
    )
    with anyio.fail_after(SAFETY_TIMEOUT):
        while True:
            [(waiting,)] = await anyio.to_thread.run_sync(
                query, dsn, statement, f'%"{store}".%'
            )
            if waiting == count:
                return
            await anyio.sleep(0.005)  # polls the server; asserts nothing about time


async def attempt(
    driver: durable.Driver,
    batch: Batch,
    outcomes: dict[str, WriteConflictError | None],
    name: str,
) -> None:
    try:
        await driver.write(batch)
    except WriteConflictError as exc:
        outcomes[name] = exc
    else:
        outcomes[name] = None


LEASE = b"lease"
GATE = b"gate"


class TestWakeUpsFromAnotherDriver:
    async def test_notify_from_another_driver_wakes_a_subscription(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe("wf") as subscription:
            await notify(other, "wf")
            await wait(subscription)

    async def test_the_write_is_visible_once_the_wake_up_arrives(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe("wf") as subscription:
            batch = Batch()
            batch.notify("wf")  # first: delivery still waits for the commit
            batch.put(b"result", b"done")
            await other.write(batch)
            await wait(subscription)
            assert await driver.get(b"result") == b"done"

    async def test_notify_of_another_workflow_does_not_wake(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        # Notifies arrive in commit order: once the sentinel's has, "other"'s has too.
        with driver.subscribe("wf") as subscription, driver.subscribe("end") as end:
            await notify(other, "wf2")
            await notify(other, "end")
            await wait(end)
            assert not await is_woken(subscription, nothing)

    async def test_one_batch_wakes_several_workflows(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe("a") as a, driver.subscribe("b\x00\u00e9") as b:
            await notify(other, "a", "b\x00\u00e9")
            await wait(a)
            await wait(b)

    async def test_a_batch_notifying_more_than_one_payload_holds_wakes_them_all(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        ids = [f"workflow-{i:04d}-" + "x" * 100 for i in range(300)]  # ~35 kB of ids
        subscriptions = [driver.subscribe(workflow_id) for workflow_id in ids]
        await notify(other, *ids)
        for subscription in subscriptions:
            await wait(subscription)
            subscription.close()

    async def test_a_workflow_id_too_long_for_a_payload_still_wakes(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        long_id = "w" * 10_000  # PostgreSQL refuses payloads of 8000 bytes and more
        with driver.subscribe(long_id) as subscription:
            await notify(other, long_id)
            await wait(subscription)  # by a conservative wake-up of everyone

    async def test_an_alarm_set_by_another_driver_wakes_an_alarm_subscription(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe_alarms() as subscription:
            await set_alarm(other, "wf", 5.0)
            await wait(subscription)
            assert await driver.list_alarms() == [Alarm("wf", 5.0)]

    async def test_a_notify_without_an_alarm_does_not_wake_alarm_subscriptions(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe_alarms() as alarms, driver.subscribe("end") as end:
            await notify(other, "wf")
            await notify(other, "end")
            await wait(end)
            assert not await is_woken(alarms, nothing)

    async def test_own_writes_wake_once_not_again_through_the_listener(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        with driver.subscribe("wf") as subscription, driver.subscribe("end") as end:
            await notify(driver, "wf")
            await wait(subscription)  # delivered locally at commit
            await notify(other, "end")  # committed after ours: its echo came first
            await wait(end)
            assert not await is_woken(subscription, nothing)

    async def test_a_write_from_another_process_wakes_a_subscription(
        self, driver: PostgresDriver, postgres_dsn: str, postgres_store: str
    ) -> None:
        code = (
            "import sys, anyio, durable\n"
            "async def main():\n"
            "    async with durable.PostgresDriver(sys.argv[1], store=sys.argv[2]) as d:\n"
            "        batch = durable.Batch()\n"
            "        batch.put(b'from-child', b'hello')\n"
            "        batch.notify('wf')\n"
            "        await d.write(batch)\n"
            "anyio.run(main)\n"
        )
        with driver.subscribe("wf") as subscription:
            await anyio.run_process(
                [sys.executable, "-c", code, postgres_dsn, postgres_store]
            )
            await wait(subscription)
        assert await driver.get(b"from-child") == b"hello"

    async def test_a_subscription_taken_before_connecting_is_woken_on_connect(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        # a notify may have come before LISTEN started: it wakes so the caller re-checks
        made = PostgresDriver(postgres_dsn, store=postgres_store)
        with made.subscribe("wf") as subscription:
            async with made:
                await wait(subscription)


class TestChecksUnderConcurrency:
    async def test_two_drivers_checking_one_lease_at_once_exactly_one_wins(
        self,
        driver: PostgresDriver,
        other: PostgresDriver,
        raw: _Raw,
        postgres_dsn: str,
        postgres_store: str,
    ) -> None:
        await driver.set(LEASE, b"old")
        # hold the row so that both checks are under way before either can finish
        await execute(
            raw, f'SELECT 1 FROM "{postgres_store}".kv WHERE key = %s FOR UPDATE', LEASE
        )
        outcomes: dict[str, WriteConflictError | None] = {}
        async with anyio.create_task_group() as tg:
            for name, made in (("a", driver), ("b", other)):
                batch = Batch()
                batch.check(LEASE, b"old")
                batch.put(LEASE, name.encode())
                batch.put(b"by-" + name.encode(), b"x")
                tg.start_soon(attempt, made, batch, outcomes, name)
            try:
                await wait_for_lock_waiters(postgres_dsn, postgres_store, 2)
            finally:  # release the waiters even if the test fails
                await anyio.to_thread.run_sync(raw.commit)
        (winner,) = [name for name, error in outcomes.items() if error is None]
        (loser,) = [error for error in outcomes.values() if error is not None]
        assert loser.key == LEASE
        assert await other.get(LEASE) == winner.encode()
        assert await other.list_prefix(b"by-") == [(b"by-" + winner.encode(), b"x")]

    async def test_many_renewals_of_one_lease_never_both_succeed(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        # each round, both drivers try to move the lease from the value they read
        await driver.set(LEASE, b"0")
        for round_ in range(20):
            old = str(round_).encode()
            outcomes: dict[str, WriteConflictError | None] = {}
            async with anyio.create_task_group() as tg:
                for name, made in (("a", driver), ("b", other)):
                    batch = Batch()
                    batch.check(LEASE, old)
                    batch.put(LEASE, str(round_ + 1).encode())
                    batch.put(b"round-%02d" % round_, name.encode())
                    tg.start_soon(attempt, made, batch, outcomes, name)
            assert sorted(error is None for error in outcomes.values()) == [False, True]
        assert await driver.get(LEASE) == b"20"
        assert len(await driver.list_prefix(b"round-")) == 20

    async def test_a_put_racing_a_check_for_absence_waits_for_its_commit(
        self,
        driver: PostgresDriver,
        other: PostgresDriver,
        raw: _Raw,
        postgres_dsn: str,
        postgres_store: str,
    ) -> None:
        await driver.set(GATE, b"open")
        await execute(
            raw, f'SELECT 1 FROM "{postgres_store}".kv WHERE key = %s FOR UPDATE', GATE
        )
        checked = Batch()
        checked.check(LEASE, None)  # locked first, then the gate holds the batch open
        checked.check(GATE, b"open")
        checked.put(LEASE, b"checked")
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.write, checked)
            try:
                await wait_for_lock_waiters(postgres_dsn, postgres_store, 1)
                tg.start_soon(other.set, LEASE, b"plain")
                # the plain put cannot create the key between the check and its commit
                await wait_for_lock_waiters(postgres_dsn, postgres_store, 2)
            finally:
                await anyio.to_thread.run_sync(raw.commit)
        assert await driver.get(LEASE) == b"plain"  # committed second, as it waited

    async def test_a_check_for_absence_fails_once_a_racing_put_commits(
        self,
        driver: PostgresDriver,
        raw: _Raw,
        postgres_dsn: str,
        postgres_store: str,
    ) -> None:
        await execute(
            raw, f'INSERT INTO "{postgres_store}".kv VALUES (%s, %s)', LEASE, b"theirs"
        )
        checked = Batch()
        checked.check(LEASE, None)
        checked.put(LEASE, b"mine")
        outcomes: dict[str, WriteConflictError | None] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, driver, checked, outcomes, "mine")
            try:
                await wait_for_lock_waiters(postgres_dsn, postgres_store, 1)
            finally:
                await anyio.to_thread.run_sync(raw.commit)
        error = outcomes["mine"]
        assert error is not None
        assert error.key == LEASE
        assert await driver.get(LEASE) == b"theirs"

    async def test_a_check_for_absence_holds_once_a_racing_put_rolls_back(
        self,
        driver: PostgresDriver,
        raw: _Raw,
        postgres_dsn: str,
        postgres_store: str,
    ) -> None:
        await execute(
            raw, f'INSERT INTO "{postgres_store}".kv VALUES (%s, %s)', LEASE, b"theirs"
        )
        checked = Batch()
        checked.check(LEASE, None)
        checked.put(LEASE, b"mine")
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.write, checked)
            try:
                await wait_for_lock_waiters(postgres_dsn, postgres_store, 1)
            finally:
                await anyio.to_thread.run_sync(raw.rollback)
        assert await driver.get(LEASE) == b"mine"

    async def test_a_check_for_absence_leaves_no_key_behind(
        self, driver: PostgresDriver
    ) -> None:
        await driver.set(GATE, b"open")
        held = Batch()
        held.check(b"absent", None)
        held.put(b"k", b"v")
        await driver.write(held)
        failed = Batch()
        failed.check(b"also-absent", None)
        failed.check(GATE, b"shut")
        failed.put(b"k2", b"v")
        with pytest.raises(WriteConflictError):
            await driver.write(failed)
        assert await driver.list_prefix(b"") == [(GATE, b"open"), (b"k", b"v")]

    async def test_checks_for_absence_and_a_value_of_one_key_cannot_both_hold(
        self, driver: PostgresDriver
    ) -> None:
        for stored in (None, b"", b"v"):
            if stored is not None:
                await driver.set(b"k", stored)
            batch = Batch()
            batch.check(b"k", None)
            batch.check(b"k", b"")  # the placeholder's own value
            batch.put(b"written", b"x")
            with pytest.raises(WriteConflictError):
                await driver.write(batch)
            assert await driver.get(b"written") is None
            assert await driver.get(b"k") == stored


ALARM_COUNT = 200
LEASE_UNTIL = 10_000.0


class TestClaimsUnderConcurrency:
    async def test_concurrent_claimers_on_two_drivers_never_share_an_alarm(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        expected = {f"wf-{i:03d}": float(i) for i in range(ALARM_COUNT)}
        batch = Batch()
        for workflow_id, at in expected.items():
            batch.set_alarm(workflow_id, at)
        await driver.write(batch)
        claims: list[list[Alarm]] = []

        async def claimer(made: PostgresDriver) -> None:
            # SKIP LOCKED: an empty claim means the rest is locked by other claimers
            while claimed := await made.claim_alarms(
                until=1000.0, limit=3, lease_until=LEASE_UNTIL
            ):
                claims.append(claimed)

        async with anyio.create_task_group() as tg:
            for made in (driver, other) * 3:
                tg.start_soon(claimer, made)
        taken = [alarm.workflow_id for claim in claims for alarm in claim]
        assert len(taken) == len(set(taken)) == ALARM_COUNT  # pairwise disjoint
        assert {alarm.workflow_id: alarm.at for c in claims for alarm in c} == expected
        for claim in claims:
            assert claim == sorted(claim, key=lambda alarm: alarm.at)
        assert await other.list_alarms(until=1000.0) == []
        assert await other.list_alarms(until=LEASE_UNTIL, limit=1) == [
            Alarm("wf-000", LEASE_UNTIL)
        ]

    async def test_a_locked_alarm_is_skipped_without_waiting(
        self, raw: _Raw, postgres_dsn: str, postgres_store: str
    ) -> None:
        # a claim that waited for the lock fails after lock_timeout instead of hanging
        dsn = psycopg.conninfo.make_conninfo(
            postgres_dsn, options=f"-c lock_timeout={SAFETY_TIMEOUT}s"
        )
        async with PostgresDriver(dsn, store=postgres_store) as driver:
            await set_alarm(driver, "busy", 1.0)
            await set_alarm(driver, "free", 2.0)
            await execute(
                raw,
                f'SELECT 1 FROM "{postgres_store}".alarms WHERE workflow_id = %s'
                " FOR UPDATE",
                b"busy",
            )
            claimed = await driver.claim_alarms(
                until=5.0, limit=10, lease_until=LEASE_UNTIL
            )
            assert claimed == [Alarm("free", 2.0)]
            await anyio.to_thread.run_sync(raw.commit)
            assert await driver.claim_alarms(
                until=5.0, limit=10, lease_until=LEASE_UNTIL
            ) == [Alarm("busy", 1.0)]

    async def test_a_claim_wakes_no_alarm_subscription(
        self, driver: PostgresDriver, other: PostgresDriver
    ) -> None:
        # a claim only moves due alarms later: no sleeping worker needs waking
        await set_alarm(driver, "wf", 1.0)
        with other.subscribe("ready") as ready:
            await notify(driver, "ready")
            await wait(ready)  # so the alarm's own wake-up has arrived too
        with (
            driver.subscribe_alarms() as ours,
            other.subscribe_alarms() as theirs,
            other.subscribe("end") as end,
        ):
            claimed = await driver.claim_alarms(until=5.0, limit=10, lease_until=50.0)
            assert claimed == [Alarm("wf", 1.0)]
            await notify(driver, "end")
            await wait(end)
            assert not await is_woken(ours, nothing)
            assert not await is_woken(theirs, nothing)

    async def test_a_claim_on_a_closed_driver_is_refused(
        self, driver: PostgresDriver
    ) -> None:
        await driver.close()
        for limit in (0, 5):
            with pytest.raises(StorageError, match="closed"):
                await driver.claim_alarms(until=1.0, limit=limit, lease_until=2.0)


class TestListenerRecovery:
    async def test_the_listener_reconnects_after_losing_its_connection(
        self, postgres_dsn: str, postgres_store: str, other: PostgresDriver
    ) -> None:
        def listeners() -> set[object]:
            rows = query(
                postgres_dsn,
                "SELECT pid FROM pg_stat_activity WHERE query = %s",
                f'LISTEN "durable_{postgres_store}"',
            )
            return {pid for (pid,) in rows}

        others = await anyio.to_thread.run_sync(listeners)  # the other driver's
        async with PostgresDriver(
            postgres_dsn, store=postgres_store, poll_interval=FAST_POLL
        ) as driver:
            (lost,) = await anyio.to_thread.run_sync(listeners) - others
            await anyio.to_thread.run_sync(
                query, postgres_dsn, "SELECT pg_terminate_backend(%s)", lost
            )
            with driver.subscribe("wf") as subscription:
                # woken by the reconnection (notifies meanwhile are lost) or the notify
                await notify(other, "wf")
                await wait(subscription)
                await notify(other, "wf")  # reaches the new listening connection
                await wait(subscription)
            now = await anyio.to_thread.run_sync(listeners) - others
        assert len(now) == 1
        assert lost not in now


class TestPollingFallback:
    async def test_listen_false_polls_instead_of_listening(
        self, postgres_dsn: str, postgres_store: str, other: PostgresDriver
    ) -> None:
        async with PostgresDriver(
            postgres_dsn, store=postgres_store, listen=False, poll_interval=FAST_POLL
        ) as driver:
            assert not driver.listening
            with driver.subscribe("wf") as subscription:
                await notify(other, "wf")
                await wait(subscription)  # at the next poll

    async def test_polling_still_wakes_local_subscribers_at_commit(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        async with PostgresDriver(
            postgres_dsn, store=postgres_store, listen=False, poll_interval=3600
        ) as driver:
            with driver.subscribe("wf") as subscription:
                assert await is_woken(subscription, lambda: notify(driver, "wf"))

    async def test_listening_is_the_default(self, driver: PostgresDriver) -> None:
        assert driver.listening

    @pytest.mark.parametrize(
        ("listen", "sends"), [(True, True), (False, True), (False, False)]
    )
    async def test_pg_notify_is_sent_unless_turned_off(
        self, postgres_dsn: str, postgres_store: str, listen: bool, sends: bool
    ) -> None:
        """A polling process still wakes listening ones; notify=False sends nothing."""
        async with PostgresDriver(
            postgres_dsn, store=postgres_store, listen=listen, notify=sends
        ) as driver:
            with psycopg.connect(postgres_dsn, autocommit=True) as spy:
                spy.execute(
                    sql.SQL("LISTEN {}").format(
                        sql.Identifier(f"durable_{postgres_store}")
                    )
                )
                await notify(driver, "wf")
                received = await anyio.to_thread.run_sync(
                    lambda: list(spy.notifies(timeout=0.5, stop_after=1))
                )
        assert bool(received) == sends


class TestStores:
    async def test_two_stores_in_one_database_are_independent(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        second_store = postgres_store + "_b"
        try:
            async with (
                PostgresDriver(postgres_dsn, store=postgres_store) as first,
                PostgresDriver(postgres_dsn, store=second_store) as second,
                PostgresDriver(postgres_dsn, store=second_store) as second_other,
            ):
                batch = Batch()
                batch.put(b"k", b"first")
                batch.set_alarm("wf", 1.0)
                await first.write(batch)
                await second.set(b"k", b"second")
                assert await first.list_prefix(b"") == [(b"k", b"first")]
                assert await second.list_prefix(b"") == [(b"k", b"second")]
                assert await second.list_alarms() == []
                with (
                    second.subscribe("wf") as subscription,
                    second.subscribe("end") as end,
                ):
                    await notify(first, "wf")
                    await notify(second_other, "end")
                    await wait(end)
                    assert not await is_woken(subscription, nothing)
        finally:
            await anyio.to_thread.run_sync(
                query,
                postgres_dsn,
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                .format(sql.Identifier(second_store))
                .as_string(),
            )

    async def test_the_schema_is_created_on_first_use(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        made = PostgresDriver(postgres_dsn, store=postgres_store)
        assert not schema_exists(postgres_dsn, postgres_store)  # not at construction
        async with made:
            assert schema_exists(postgres_dsn, postgres_store)
            versions = query(
                postgres_dsn, f'SELECT version FROM "{postgres_store}".schema_version'
            )
            assert versions == [(SCHEMA_VERSION,)]

    async def test_first_use_without_async_with_connects_too(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        made = PostgresDriver(postgres_dsn, store=postgres_store)
        try:
            await made.set(b"k", b"v")
            assert await made.get(b"k") == b"v"
        finally:
            await made.close()

    async def test_data_and_alarms_survive_close_and_reopen(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        async with PostgresDriver(postgres_dsn, store=postgres_store) as first:
            batch = Batch()
            batch.put(b"k", b"v")
            batch.set_alarm("wf", 42.0)
            await first.write(batch)
        async with PostgresDriver(postgres_dsn, store=postgres_store) as again:
            assert await again.get(b"k") == b"v"
            assert await again.list_alarms() == [Alarm("wf", 42.0)]

    async def test_drivers_opening_a_new_store_at_once_all_succeed(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        made = [PostgresDriver(postgres_dsn, store=postgres_store) for _ in range(4)]
        try:
            async with anyio.create_task_group() as tg:
                for driver in made:
                    tg.start_soon(driver.__aenter__)
            for driver in made:
                assert await driver.get(b"k") is None
        finally:
            for driver in made:
                await driver.close()

    async def test_a_newer_schema_version_is_refused(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        async with PostgresDriver(postgres_dsn, store=postgres_store):
            pass
        query(
            postgres_dsn,
            f'UPDATE "{postgres_store}".schema_version SET version = %s',
            SCHEMA_VERSION + 1,
        )
        with pytest.raises(StorageError, match=r"schema version \d+.*upgrade durable"):
            async with PostgresDriver(postgres_dsn, store=postgres_store):
                pass

    async def test_a_schema_that_is_not_a_store_is_refused(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        query(postgres_dsn, f'CREATE SCHEMA "{postgres_store}"')
        query(postgres_dsn, f'CREATE TABLE "{postgres_store}".mine (x int)')
        with pytest.raises(StorageError, match="not a durable store"):
            async with PostgresDriver(postgres_dsn, store=postgres_store):
                pass

    @pytest.mark.parametrize(
        "store", ["", "Upper", "has-dash", "1digit", "pg_catalog", "a" * 49, "sp ace"]
    )
    def test_a_store_name_that_is_not_a_plain_identifier_is_refused(
        self, store: str
    ) -> None:
        with pytest.raises(ValueError, match="store"):
            PostgresDriver("dbname=test", store=store)


# Bytewise order, with 0x00, 0x7F, 0x80 and 0xFF bytes inside, around and after
# prefixes: a signed-byte or collation-based comparison would misplace some of them.
BYTE_KEYS = sorted(
    [
        b"\x00",
        b"\x00\x00",
        b"\x00\xff",
        b"\x01",
        b"\x7f",
        b"\x7f\xff",
        b"\x80",
        b"\x80\x00",
        b"a",
        b"a\x00",
        b"a\x7f",
        b"a\x80",
        b"a\xff",
        b"a\xff\x00",
        b"ab",
        b"A",
        b"\xfe",
        b"\xfe\xff\xff",
    ]
)


class TestByteOrder:
    async def test_keys_sort_bytewise(self, driver: PostgresDriver) -> None:
        batch = Batch()
        for key in reversed(BYTE_KEYS):
            batch.put(key, key)
        await driver.write(batch)
        assert [key for key, _ in await driver.list_prefix(b"")] == BYTE_KEYS
        listed = await driver.list_range(b"", b"\xff", reverse=True)
        assert [key for key, _ in listed] == BYTE_KEYS[::-1]

    async def test_ranges_split_at_the_high_bit(self, driver: PostgresDriver) -> None:
        batch = Batch()
        for key in BYTE_KEYS:
            batch.put(key, b"")
        await driver.write(batch)
        below = [key for key, _ in await driver.list_range(b"", b"\x80")]
        assert below == [key for key in BYTE_KEYS if key < b"\x80"]
        prefixed = [key for key, _ in await driver.list_prefix(b"a")]
        assert prefixed == [key for key in BYTE_KEYS if key.startswith(b"a")]

    async def test_keys_from_the_reserved_byte_on_are_stored_but_never_listed(
        self, driver: PostgresDriver
    ) -> None:
        await driver.set(b"\xff\x01", b"driver's own")
        await driver.set(b"\xfe", b"v")
        assert await driver.get(b"\xff\x01") == b"driver's own"
        assert await driver.list_range(b"", b"\xff\xff") == [(b"\xfe", b"v")]


class TestErrors:
    async def test_an_unreachable_server_raises_storage_error(self) -> None:
        made = PostgresDriver(
            "host=127.0.0.1 port=1 dbname=test user=root password=s3cret",
            connect_timeout=2,
        )
        with pytest.raises(StorageError, match="cannot connect") as caught:
            async with made:
                pass
        message = str(caught.value)
        assert "port=1" in message
        assert "server is running" in message
        assert "s3cret" not in message

    async def test_first_use_of_an_unreachable_server_raises_storage_error(
        self,
    ) -> None:
        made = PostgresDriver("host=127.0.0.1 port=1 dbname=test user=root")
        with pytest.raises(StorageError, match="cannot connect"):
            await made.get(b"k")
        await made.close()

    async def test_a_missing_database_raises_storage_error(
        self, postgres_store: str
    ) -> None:
        made = PostgresDriver(
            "dbname=durable_no_such_database user=root", store=postgres_store
        )
        with pytest.raises(StorageError, match="durable_no_such_database"):
            async with made:
                pass

    def test_a_malformed_dsn_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="DSN"):
            PostgresDriver("host")

    async def test_a_failing_batch_leaves_nothing_behind(
        self, driver: PostgresDriver
    ) -> None:
        await driver.set(b"kept", b"old")
        # incompressible and over PostgreSQL's B-tree entry limit (~2.7 kB): the
        # server refuses the third op, after the first two ran in the transaction
        too_long = random.Random(0).randbytes(10_000)
        batch = Batch()
        batch.put(b"kept", b"new")
        batch.set_alarm("wf", 1.0)
        batch.notify("wf")
        batch.put(too_long, b"v")
        batch.put(b"after", b"v")
        with driver.subscribe("wf") as subscription:
            with pytest.raises(StorageError, match="writing a batch") as caught:
                await driver.write(batch)
            assert "nothing of the batch was applied" in str(caught.value)
            assert not await is_woken(subscription, nothing)
        assert await driver.list_prefix(b"") == [(b"kept", b"old")]
        assert await driver.list_alarms() == []
        await driver.set(b"next", b"ok")  # the pooled connection is usable again
        assert await driver.get(b"next") == b"ok"

    async def test_a_closed_driver_refuses_use(self, driver: PostgresDriver) -> None:
        await driver.close()
        with pytest.raises(StorageError, match="closed"):
            await driver.set(b"k", b"v")
        with pytest.raises(StorageError, match="closed"):
            await driver.list_alarms()
        with pytest.raises(StorageError, match="closed"):
            await driver.list_range(b"b", b"a")

    async def test_closing_a_driver_that_never_connected_is_harmless(self) -> None:
        made = PostgresDriver("host=127.0.0.1 port=1")
        await made.close()
        await made.close()
        with pytest.raises(StorageError, match="closed"):
            await made.get(b"k")


class TestOptions:
    async def test_defaults(self, driver: PostgresDriver, postgres_store: str) -> None:
        assert driver.store == postgres_store
        assert driver.poll_interval == DEFAULT_POLL_INTERVAL
        assert PostgresDriver("dbname=test").store == "durable"

    @pytest.mark.parametrize("bad", [0, -1, float("nan")])
    def test_non_positive_poll_interval_is_refused(self, bad: float) -> None:
        with pytest.raises(ValueError, match="poll_interval"):
            PostgresDriver("dbname=test", poll_interval=bad)

    @pytest.mark.parametrize("bad", [0, -3])
    def test_pool_size_below_one_is_refused(self, bad: int) -> None:
        with pytest.raises(ValueError, match="pool_size"):
            PostgresDriver("dbname=test", pool_size=bad)

    async def test_more_concurrent_calls_than_pooled_connections_all_complete(
        self, postgres_dsn: str, postgres_store: str
    ) -> None:
        async with PostgresDriver(
            postgres_dsn, store=postgres_store, pool_size=2
        ) as driver:
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(driver.set, b"k%02d" % i, b"v")
            assert len(await driver.list_prefix(b"k")) == 20


class TestLazyImport:
    def test_import_durable_does_not_import_psycopg(self) -> None:
        code = "import sys, durable; print('psycopg' in sys.modules)"
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=True,
        )
        assert done.stdout.strip() == "False"

    def test_without_psycopg_the_error_names_the_extra(self) -> None:
        code = (
            "import sys\n"
            "sys.modules['psycopg'] = None  # as if it were not installed\n"
            "import durable\n"
            "try:\n"
            "    durable.PostgresDriver\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=True,
        )
        assert "pip install 'durable[postgres]'" in done.stdout

    def test_the_class_says_it_lives_in_durable(self) -> None:
        assert durable.PostgresDriver.__module__ == "durable"
        assert "PostgresDriver" in dir(durable)
