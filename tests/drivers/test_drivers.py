"""Driver conformance: every driver, on both anyio backends, behaves the same."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from durable import (
    Driver,
    LevelDBDriver,
    MemoryDriver,
    StorageError,
    WriteConflictError,
)
from durable._drivers import DEFAULT_POLL_INTERVAL, Alarm, Batch, Subscription
from durable._drivers._base import (
    DELETE,
    DELETE_RANGE,
    NOTIFY,
    PUT,
    SET_ALARM,
    prefix_end,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

SAFETY_TIMEOUT = 10  # seconds; only bounds a broken test, never measured

# Sorted bytewise, with 0x00 and 0xFF bytes inside and around the "a" prefix.
KEYS = sorted(
    [
        b"\x00",
        b"`",
        b"a",
        b"a\x00",
        b"a\x00\xff",
        b"ab",
        b"a\xfe",
        b"a\xff",
        b"a\xff\x00",
        b"a\xff\xff",
        b"a\xff\xffz",
        b"b",
        b"b\x00",
        b"\xfe\xff",
    ]
)


async def put_all(driver: Driver, keys: list[bytes]) -> None:
    batch = Batch()
    for key in reversed(keys):  # insertion order must not matter
        batch.put(key, b"v:" + key)
    await driver.write(batch)


async def stored_keys(driver: Driver) -> list[bytes]:
    return [key for key, _ in await driver.list_prefix(b"")]


async def notify(driver: Driver, workflow_id: str) -> None:
    batch = Batch()
    batch.notify(workflow_id)
    await driver.write(batch)


async def is_woken(
    subscription: Subscription, trigger: Callable[[], Awaitable[None]]
) -> bool:
    """Whether a task waiting on *subscription* wakes once *trigger* has run.

    Waits for every task to block instead of sleeping, so a wake-up that is not
    coming is seen without a timeout.
    """
    woken = False

    async def waiter() -> None:
        nonlocal woken
        await subscription.wait()
        woken = True

    with anyio.fail_after(SAFETY_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await trigger()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    return woken


async def nothing() -> None:
    pass


class TestGetSetDelete:
    async def test_missing_key_reads_as_none(self, driver: Driver) -> None:
        assert await driver.get(b"missing") is None

    async def test_set_value_is_read_back(self, driver: Driver) -> None:
        await driver.set(b"k", b"value")
        assert await driver.get(b"k") == b"value"

    async def test_empty_value_is_not_none(self, driver: Driver) -> None:
        await driver.set(b"k", b"")
        assert await driver.get(b"k") == b""

    async def test_set_overwrites(self, driver: Driver) -> None:
        await driver.set(b"k", b"old")
        await driver.set(b"k", b"new")
        assert await driver.get(b"k") == b"new"
        assert await driver.list_prefix(b"k") == [(b"k", b"new")]

    async def test_delete_removes_the_key(self, driver: Driver) -> None:
        await driver.set(b"k", b"v")
        await driver.delete(b"k")
        assert await driver.get(b"k") is None
        assert await driver.list_prefix(b"") == []

    async def test_deleting_a_missing_key_is_a_no_op(self, driver: Driver) -> None:
        await driver.set(b"other", b"v")
        await driver.delete(b"missing")
        assert await stored_keys(driver) == [b"other"]

    async def test_keys_and_values_with_nul_and_ff_bytes_are_kept_exactly(
        self, driver: Driver
    ) -> None:
        await driver.set(b"\x00\xff\x00", b"\xff\x00\xff")
        assert await driver.get(b"\x00\xff\x00") == b"\xff\x00\xff"
        assert await driver.get(b"\x00\xff") is None

    async def test_large_value_round_trips(self, driver: Driver) -> None:
        value = bytes(range(256)) * 4096  # 1 MiB
        await driver.set(b"big", value)
        assert await driver.get(b"big") == value


class TestListPrefix:
    async def test_items_come_back_sorted_bytewise(self, driver: Driver) -> None:
        await put_all(driver, KEYS)
        assert await driver.list_prefix(b"") == [(key, b"v:" + key) for key in KEYS]

    @pytest.mark.parametrize(
        "prefix",
        [b"a", b"a\x00", b"a\xff", b"a\xff\xff", b"ab", b"b", b"\x00", b"c", b"\xfe"],
        ids=repr,
    )
    async def test_returns_exactly_the_keys_with_the_prefix(
        self, driver: Driver, prefix: bytes
    ) -> None:
        await put_all(driver, KEYS)
        expected = [key for key in KEYS if key.startswith(prefix)]
        assert await stored_keys_with_prefix(driver, prefix) == expected

    async def test_prefix_a_does_not_return_b(self, driver: Driver) -> None:
        await put_all(driver, [b"a1", b"b1", b"`1"])
        assert await stored_keys_with_prefix(driver, b"a") == [b"a1"]

    async def test_prefix_includes_the_key_equal_to_it(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"a\x00"])
        assert await stored_keys_with_prefix(driver, b"a") == [b"a", b"a\x00"]

    async def test_empty_store_lists_nothing(self, driver: Driver) -> None:
        assert await driver.list_prefix(b"") == []


async def stored_keys_with_prefix(driver: Driver, prefix: bytes) -> list[bytes]:
    return [key for key, _ in await driver.list_prefix(prefix)]


async def keys_in_range(
    driver: Driver, start: bytes, end: bytes, **kwargs: object
) -> list[bytes]:
    return [key for key, _ in await driver.list_range(start, end, **kwargs)]  # type: ignore[arg-type]


class TestListRange:
    async def test_range_is_half_open(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b", b"c", b"d"])
        assert await keys_in_range(driver, b"b", b"d") == [b"b", b"c"]

    async def test_bounds_need_not_be_stored_keys(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b", b"c", b"d"])
        assert await keys_in_range(driver, b"a\x00", b"c\x00") == [b"b", b"c"]

    async def test_returns_values_with_keys(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b"])
        assert await driver.list_range(b"a", b"z") == [(b"a", b"v:a"), (b"b", b"v:b")]

    @pytest.mark.parametrize(("start", "end"), [(b"b", b"b"), (b"c", b"b")])
    async def test_empty_or_inverted_range_is_empty(
        self, driver: Driver, start: bytes, end: bytes
    ) -> None:
        await put_all(driver, [b"a", b"b", b"c"])
        assert await driver.list_range(start, end) == []

    async def test_limit_keeps_the_first_items(self, driver: Driver) -> None:
        await put_all(driver, KEYS)
        assert await keys_in_range(driver, b"", b"\xff", limit=3) == KEYS[:3]

    async def test_limit_larger_than_the_range_returns_everything(
        self, driver: Driver
    ) -> None:
        await put_all(driver, [b"a", b"b"])
        assert await keys_in_range(driver, b"", b"\xff", limit=10) == [b"a", b"b"]

    async def test_limit_zero_returns_nothing(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b"])
        assert await driver.list_range(b"", b"\xff", limit=0) == []

    async def test_reverse_returns_descending_order(self, driver: Driver) -> None:
        await put_all(driver, KEYS)
        assert await keys_in_range(driver, b"", b"\xff", reverse=True) == KEYS[::-1]

    async def test_reverse_keeps_the_range_half_open(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b", b"c", b"d"])
        assert await keys_in_range(driver, b"b", b"d", reverse=True) == [b"c", b"b"]

    async def test_reverse_with_limit_returns_the_last_items(
        self, driver: Driver
    ) -> None:
        await put_all(driver, [b"a", b"b", b"c", b"d"])
        result = await keys_in_range(driver, b"a", b"d", reverse=True, limit=2)
        assert result == [b"c", b"b"]


class TestBatchWrites:
    async def test_every_op_of_a_batch_is_applied(self, driver: Driver) -> None:
        await driver.set(b"old", b"v")
        batch = Batch()
        batch.put(b"a", b"1")
        batch.put(b"b", b"2")
        batch.put(b"c", b"3")
        batch.put(b"d", b"4")
        batch.delete(b"old")
        batch.set_alarm("wf", 5.0)
        await driver.write(batch)
        assert await stored_keys(driver) == [b"a", b"b", b"c", b"d"]
        assert await driver.get_alarm("wf") == 5.0

    async def test_put_then_delete_of_the_same_key_leaves_it_gone(
        self, driver: Driver
    ) -> None:
        batch = Batch()
        batch.put(b"k", b"v")
        batch.delete(b"k")
        await driver.write(batch)
        assert await driver.get(b"k") is None

    async def test_delete_then_put_of_the_same_key_leaves_it_set(
        self, driver: Driver
    ) -> None:
        await driver.set(b"k", b"old")
        batch = Batch()
        batch.delete(b"k")
        batch.put(b"k", b"new")
        await driver.write(batch)
        assert await driver.get(b"k") == b"new"

    async def test_last_put_of_a_key_wins(self, driver: Driver) -> None:
        batch = Batch()
        batch.put(b"k", b"1")
        batch.put(b"k", b"2")
        await driver.write(batch)
        assert await driver.list_prefix(b"") == [(b"k", b"2")]

    async def test_delete_range_removes_keys_put_earlier_in_the_batch(
        self, driver: Driver
    ) -> None:
        await put_all(driver, [b"b1", b"c"])
        batch = Batch()
        batch.put(b"a", b"keep")
        batch.put(b"b2", b"new")
        batch.put(b"b", b"new")
        batch.delete_range(b"b", b"c")
        await driver.write(batch)
        assert await stored_keys(driver) == [b"a", b"c"]

    async def test_put_after_delete_range_in_the_batch_survives(
        self, driver: Driver
    ) -> None:
        await put_all(driver, [b"b1", b"b2"])
        batch = Batch()
        batch.delete_range(b"b", b"c")
        batch.put(b"b1", b"again")
        await driver.write(batch)
        assert await driver.list_prefix(b"") == [(b"b1", b"again")]

    async def test_delete_range_keeps_its_end_key(self, driver: Driver) -> None:
        await put_all(driver, [b"a", b"b", b"c"])
        await driver.delete_range(b"a", b"c")
        assert await stored_keys(driver) == [b"c"]

    async def test_delete_prefix_removes_exactly_the_prefixed_keys(
        self, driver: Driver
    ) -> None:
        await put_all(driver, KEYS)
        await driver.delete_prefix(b"a\xff")
        assert await stored_keys(driver) == [
            k for k in KEYS if not k.startswith(b"a\xff")
        ]

    async def test_delete_prefix_in_a_batch_removes_keys_put_earlier_in_it(
        self, driver: Driver
    ) -> None:
        await driver.set(b"a1", b"v")
        batch = Batch()
        batch.put(b"a2", b"v")
        batch.put(b"a\xff\xff", b"v")
        batch.put(b"b", b"v")
        batch.delete_prefix(b"a")
        await driver.write(batch)
        assert await stored_keys(driver) == [b"b"]

    async def test_empty_batch_changes_nothing(self, driver: Driver) -> None:
        await driver.set(b"k", b"v")
        await driver.write(Batch())
        assert await driver.list_prefix(b"") == [(b"k", b"v")]

    async def test_deleting_every_key_keeps_alarms(self, driver: Driver) -> None:
        batch = Batch()
        batch.put(b"k", b"v")
        batch.set_alarm("wf", 1.0)
        await driver.write(batch)
        await driver.delete_prefix(b"")
        assert await driver.list_prefix(b"") == []
        assert await driver.list_alarms() == [Alarm("wf", 1.0)]


class TestChecks:
    async def test_a_batch_whose_check_holds_is_applied(self, driver: Driver) -> None:
        await driver.set(b"lease", b"token-1")
        batch = Batch()
        batch.check(b"lease", b"token-1")
        batch.put(b"k", b"v")
        await driver.write(batch)
        assert await driver.get(b"k") == b"v"

    async def test_a_failed_check_applies_nothing(self, driver: Driver) -> None:
        await driver.set(b"lease", b"token-2")
        batch = Batch()
        batch.put(b"k", b"v")
        batch.set_alarm("wf", 5.0)
        batch.check(b"lease", b"token-1")  # anywhere in the batch
        batch.delete(b"lease")
        with driver.subscribe("wf") as subscription:
            batch.notify("wf")
            with pytest.raises(WriteConflictError) as caught:
                await driver.write(batch)
            assert not await is_woken(subscription, anyio.lowlevel.checkpoint)
        assert caught.value.key == b"lease"
        assert isinstance(caught.value, StorageError)
        assert await driver.get(b"k") is None
        assert await driver.get(b"lease") == b"token-2"
        assert await driver.get_alarm("wf") is None

    async def test_checking_for_absence(self, driver: Driver) -> None:
        batch = Batch()
        batch.check(b"lease", None)
        batch.put(b"lease", b"token-1")
        await driver.write(batch)
        assert await driver.get(b"lease") == b"token-1"
        with pytest.raises(WriteConflictError):
            await driver.write(batch)  # the key exists now

    async def test_checks_see_the_store_before_the_batch(self, driver: Driver) -> None:
        await driver.set(b"lease", b"old")
        batch = Batch()
        batch.put(b"lease", b"new")
        batch.check(b"lease", b"old")
        await driver.write(batch)
        assert await driver.get(b"lease") == b"new"

    async def test_every_check_must_hold(self, driver: Driver) -> None:
        await driver.set(b"a", b"1")
        await driver.set(b"b", b"2")
        batch = Batch()
        batch.check(b"a", b"1")
        batch.check(b"b", b"3")
        batch.put(b"k", b"v")
        with pytest.raises(WriteConflictError) as caught:
            await driver.write(batch)
        assert caught.value.key == b"b"
        assert await driver.get(b"k") is None


class TestClaimAlarms:
    async def test_due_alarms_are_claimed_earliest_first_and_moved(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"a": 3.0, "b": 1.0, "c": 2.0, "later": 50.0})
        claimed = await driver.claim_alarms(until=10.0, limit=2, lease_until=100.0)
        assert claimed == [Alarm("b", 1.0), Alarm("c", 2.0)]
        assert await driver.get_alarm("b") == 100.0
        assert await driver.get_alarm("c") == 100.0
        assert await driver.get_alarm("a") == 3.0

    async def test_a_claimed_alarm_is_not_claimed_again(self, driver: Driver) -> None:
        await set_alarms(driver, {"a": 1.0})
        assert await driver.claim_alarms(until=10.0, limit=5, lease_until=100.0) == [
            Alarm("a", 1.0)
        ]
        assert await driver.claim_alarms(until=10.0, limit=5, lease_until=100.0) == []

    async def test_alarms_not_due_are_left_alone(self, driver: Driver) -> None:
        await set_alarms(driver, {"a": 20.0})
        assert await driver.claim_alarms(until=10.0, limit=5, lease_until=100.0) == []
        assert await driver.get_alarm("a") == 20.0


class TestAlarms:
    async def test_workflow_without_an_alarm_has_none(self, driver: Driver) -> None:
        assert await driver.get_alarm("wf") is None
        assert await driver.list_alarms() == []

    async def test_set_alarm_is_read_back(self, driver: Driver) -> None:
        batch = Batch()
        batch.set_alarm("wf", 12.5)
        await driver.write(batch)
        assert await driver.get_alarm("wf") == 12.5
        assert await driver.list_alarms() == [Alarm("wf", 12.5)]

    async def test_int_alarm_time_is_stored_as_float(self, driver: Driver) -> None:
        batch = Batch()
        batch.set_alarm("wf", 7)
        await driver.write(batch)
        at = await driver.get_alarm("wf")
        assert type(at) is float
        assert at == 7.0

    async def test_cleared_alarm_is_gone(self, driver: Driver) -> None:
        await set_alarms(driver, {"wf": 3.0})
        batch = Batch()
        batch.clear_alarm("wf")
        await driver.write(batch)
        assert await driver.get_alarm("wf") is None
        assert await driver.list_alarms() == []

    async def test_clearing_a_missing_alarm_is_a_no_op(self, driver: Driver) -> None:
        await set_alarms(driver, {"other": 3.0})
        batch = Batch()
        batch.clear_alarm("wf")
        await driver.write(batch)
        assert await driver.list_alarms() == [Alarm("other", 3.0)]

    async def test_moved_alarm_is_listed_only_at_its_new_time(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"wf": 10.0})
        await set_alarms(driver, {"wf": 20.0})
        assert await driver.get_alarm("wf") == 20.0
        assert await driver.list_alarms() == [Alarm("wf", 20.0)]
        assert await driver.list_alarms(until=15.0) == []

    async def test_alarm_moved_earlier_is_listed_only_at_its_new_time(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"wf": 20.0})
        await set_alarms(driver, {"wf": 10.0})
        assert await driver.list_alarms() == [Alarm("wf", 10.0)]

    async def test_alarm_moved_twice_in_one_batch_keeps_the_last_time(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"wf": 5.0})
        batch = Batch()
        batch.set_alarm("wf", 10.0)
        batch.set_alarm("wf", 20.0)
        await driver.write(batch)
        assert await driver.list_alarms() == [Alarm("wf", 20.0)]

    async def test_alarm_set_then_cleared_in_one_batch_is_gone(
        self, driver: Driver
    ) -> None:
        batch = Batch()
        batch.set_alarm("wf", 10.0)
        batch.clear_alarm("wf")
        await driver.write(batch)
        assert await driver.get_alarm("wf") is None
        assert await driver.list_alarms() == []

    async def test_alarm_cleared_then_set_in_one_batch_is_set(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"wf": 1.0})
        batch = Batch()
        batch.clear_alarm("wf")
        batch.set_alarm("wf", 2.0)
        await driver.write(batch)
        assert await driver.list_alarms() == [Alarm("wf", 2.0)]

    async def test_alarms_are_listed_earliest_first(self, driver: Driver) -> None:
        await set_alarms(driver, ALARM_TIMES)
        listed = await driver.list_alarms()
        assert listed == sorted_alarms(ALARM_TIMES)

    async def test_until_excludes_later_alarms_and_includes_equal_ones(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, ALARM_TIMES)
        listed = await driver.list_alarms(until=0.0)
        assert listed == sorted_alarms(
            {k: v for k, v in ALARM_TIMES.items() if v <= 0.0}
        )
        assert Alarm("zero", 0.0) in listed

    async def test_until_below_every_alarm_lists_nothing(self, driver: Driver) -> None:
        await set_alarms(driver, ALARM_TIMES)
        assert await driver.list_alarms(until=-1e301) == []

    async def test_negative_until_lists_only_earlier_negative_alarms(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, ALARM_TIMES)
        listed = await driver.list_alarms(until=-1.0)
        assert listed == [Alarm("very-negative", -1e300), Alarm("negative", -1.5)]

    async def test_limit_keeps_the_earliest_alarms(self, driver: Driver) -> None:
        await set_alarms(driver, ALARM_TIMES)
        listed = await driver.list_alarms(limit=3)
        assert listed == sorted_alarms(ALARM_TIMES)[:3]

    async def test_until_and_limit_combine(self, driver: Driver) -> None:
        await set_alarms(driver, ALARM_TIMES)
        listed = await driver.list_alarms(until=100.0, limit=100)
        assert listed == sorted_alarms(
            {k: v for k, v in ALARM_TIMES.items() if v <= 100}
        )
        assert await driver.list_alarms(until=100.0, limit=1) == [
            Alarm("very-negative", -1e300)
        ]

    async def test_alarms_at_the_same_time_are_all_listed(self, driver: Driver) -> None:
        await set_alarms(driver, {"b": 5.0, "a": 5.0, "c": 6.0})
        listed = await driver.list_alarms(until=5.0)
        assert sorted(alarm.workflow_id for alarm in listed) == ["a", "b"]

    async def test_workflow_ids_that_prefix_each_other_keep_separate_alarms(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"a": 1.0, "ab": 2.0, "a\x00": 3.0, "a/b": 4.0})
        assert await driver.get_alarm("a") == 1.0
        assert await driver.get_alarm("ab") == 2.0
        assert await driver.get_alarm("a\x00") == 3.0
        assert await driver.get_alarm("a/b") == 4.0
        await clear_alarm(driver, "a")
        assert [alarm.workflow_id for alarm in await driver.list_alarms()] == [
            "ab",
            "a\x00",
            "a/b",
        ]

    async def test_unicode_workflow_id_round_trips(self, driver: Driver) -> None:
        await set_alarms(driver, {"caf\u00e9-\U0001f600": 1.0})
        assert await driver.list_alarms() == [Alarm("caf\u00e9-\U0001f600", 1.0)]

    async def test_infinite_alarm_sorts_last(self, driver: Driver) -> None:
        await set_alarms(driver, {"never": math.inf, "soon": 1.0})
        assert await driver.list_alarms() == [
            Alarm("soon", 1.0),
            Alarm("never", math.inf),
        ]
        assert await driver.list_alarms(until=1e308) == [Alarm("soon", 1.0)]


ALARM_TIMES = {
    "huge": 1e300,
    "later": 2.5,
    "negative": -1.5,
    "zero": 0.0,
    "very-negative": -1e300,
    "tiny": 1e-300,
    "half-negative": -0.5,
    "hundred": 100.0,
    "tiny-negative": -1e-300,
}


def sorted_alarms(times: dict[str, float]) -> list[Alarm]:
    return [Alarm(wf, at) for wf, at in sorted(times.items(), key=lambda item: item[1])]


async def set_alarms(driver: Driver, times: dict[str, float]) -> None:
    batch = Batch()
    for workflow_id, at in times.items():
        batch.set_alarm(workflow_id, at)
    await driver.write(batch)


async def clear_alarm(driver: Driver, workflow_id: str) -> None:
    batch = Batch()
    batch.clear_alarm(workflow_id)
    await driver.write(batch)


class TestReservedKeys:
    async def test_alarm_bookkeeping_never_appears_in_list_prefix(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, ALARM_TIMES)
        await put_all(driver, [b"a", b"\xfe\xff\xff"])
        assert await stored_keys(driver) == [b"a", b"\xfe\xff\xff"]

    async def test_alarm_bookkeeping_never_appears_in_list_range(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, ALARM_TIMES)
        await driver.set(b"a", b"v")
        assert await keys_in_range(driver, b"", b"\xff\xff\xff\xff") == [b"a"]
        assert await keys_in_range(driver, b"\xff", b"\xff\xff\xff\xff") == []
        assert await keys_in_range(driver, b"", b"\xff\xff", reverse=True) == [b"a"]

    async def test_list_prefix_of_the_reserved_byte_is_empty(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, ALARM_TIMES)
        assert await driver.list_prefix(b"\xff") == []


class TestSubscriptions:
    async def test_notify_wakes_a_waiting_subscription(self, driver: Driver) -> None:
        with driver.subscribe("wf") as subscription:
            assert await is_woken(subscription, lambda: notify(driver, "wf"))

    async def test_notify_before_wait_is_not_lost(self, driver: Driver) -> None:
        with driver.subscribe("wf") as subscription:
            await notify(driver, "wf")
            with anyio.fail_after(SAFETY_TIMEOUT):
                await subscription.wait()

    async def test_notify_in_a_batch_with_writes_wakes_after_they_are_visible(
        self, driver: Driver
    ) -> None:
        seen: list[bytes | None] = []

        async def waiter(subscription: Subscription) -> None:
            await subscription.wait()
            seen.append(await driver.get(b"result"))

        with driver.subscribe("wf") as subscription, anyio.fail_after(SAFETY_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, subscription)
                await anyio.wait_all_tasks_blocked()
                batch = Batch()
                batch.notify("wf")  # notify first: delivery still waits for the commit
                batch.put(b"result", b"done")
                batch.set_alarm("wf", 1.0)
                await driver.write(batch)
        assert seen == [b"done"]

    async def test_notify_of_another_workflow_does_not_wake(
        self, driver: Driver
    ) -> None:
        with driver.subscribe("wf") as subscription:
            assert not await is_woken(subscription, lambda: notify(driver, "other"))

    async def test_notify_of_a_workflow_id_extending_it_does_not_wake(
        self, driver: Driver
    ) -> None:
        with driver.subscribe("wf") as subscription:
            assert not await is_woken(subscription, lambda: notify(driver, "wf2"))

    async def test_write_without_notify_does_not_wake(self, driver: Driver) -> None:
        async def write() -> None:
            batch = Batch()
            batch.put(b"k", b"v")
            batch.set_alarm("wf", 1.0)
            await driver.write(batch)

        with driver.subscribe("wf") as subscription:
            assert not await is_woken(subscription, write)

    async def test_setting_an_alarm_wakes_an_alarm_subscription(
        self, driver: Driver
    ) -> None:
        async def write() -> None:
            batch = Batch()
            batch.set_alarm("wf", 5.0)
            await driver.write(batch)

        with driver.subscribe_alarms() as subscription:
            assert await is_woken(subscription, write)

    async def test_alarm_set_before_the_wait_is_not_lost(self, driver: Driver) -> None:
        with driver.subscribe_alarms() as subscription:
            batch = Batch()
            batch.set_alarm("wf", 5.0)
            await driver.write(batch)
            with anyio.fail_after(SAFETY_TIMEOUT):
                await subscription.wait()

    async def test_writes_without_an_alarm_do_not_wake_alarm_subscriptions(
        self, driver: Driver
    ) -> None:
        async def write() -> None:
            batch = Batch()
            batch.put(b"k", b"v")
            batch.clear_alarm("wf")
            batch.notify("wf")
            await driver.write(batch)

        with driver.subscribe_alarms() as subscription:
            assert not await is_woken(subscription, write)

    async def test_closed_alarm_subscription_is_not_woken(self, driver: Driver) -> None:
        subscription = driver.subscribe_alarms()
        subscription.close()
        batch = Batch()
        batch.set_alarm("wf", 5.0)
        await driver.write(batch)
        assert not await is_woken(subscription, anyio.lowlevel.checkpoint)

    async def test_every_subscriber_of_the_workflow_is_woken(
        self, driver: Driver
    ) -> None:
        with driver.subscribe("wf") as first, driver.subscribe("wf") as second:
            await notify(driver, "wf")
            with anyio.fail_after(SAFETY_TIMEOUT):
                await first.wait()
                await second.wait()

    async def test_one_batch_can_wake_several_workflows(self, driver: Driver) -> None:
        with driver.subscribe("a") as a, driver.subscribe("b") as b:
            batch = Batch()
            batch.notify("a")
            batch.notify("b")
            await driver.write(batch)
            with anyio.fail_after(SAFETY_TIMEOUT):
                await a.wait()
                await b.wait()

    async def test_wait_rearms_after_a_wake_up(self, driver: Driver) -> None:
        with driver.subscribe("wf") as subscription:
            await notify(driver, "wf")
            with anyio.fail_after(SAFETY_TIMEOUT):
                await subscription.wait()
            assert not await is_woken(subscription, nothing)
            assert await is_woken(subscription, lambda: notify(driver, "wf"))

    async def test_subscription_taken_after_a_notify_is_not_woken_by_it(
        self, driver: Driver
    ) -> None:
        await notify(driver, "wf")
        with driver.subscribe("wf") as subscription:
            assert not await is_woken(subscription, nothing)

    async def test_closed_subscription_is_not_woken(self, driver: Driver) -> None:
        subscription = driver.subscribe("wf")
        subscription.close()
        assert not await is_woken(subscription, lambda: notify(driver, "wf"))

    async def test_leaving_the_with_block_closes_the_subscription(
        self, driver: Driver
    ) -> None:
        with driver.subscribe("wf") as subscription:
            pass
        assert not await is_woken(subscription, lambda: notify(driver, "wf"))

    async def test_closing_one_subscription_keeps_the_others(
        self, driver: Driver
    ) -> None:
        closed = driver.subscribe("wf")
        with driver.subscribe("wf") as kept:
            closed.close()
            assert await is_woken(kept, lambda: notify(driver, "wf"))

    async def test_closing_twice_is_harmless(self, driver: Driver) -> None:
        subscription = driver.subscribe("wf")
        subscription.close()
        subscription.close()
        with driver.subscribe("wf") as other:
            assert await is_woken(other, lambda: notify(driver, "wf"))


class TestClose:
    async def test_close_twice_is_harmless(self, driver: Driver) -> None:
        await driver.close()
        await driver.close()

    async def test_a_closed_driver_refuses_use_with_a_storage_error(
        self, driver: Driver
    ) -> None:
        await driver.close()
        with pytest.raises(StorageError, match="closed"):
            await driver.get(b"k")


class TestLimits:
    async def test_a_negative_listing_limit_is_refused(self, driver: Driver) -> None:
        with pytest.raises(ValueError, match="limit"):
            await driver.list_range(b"a", b"b", limit=-1)
        with pytest.raises(ValueError, match="limit"):
            await driver.list_alarms(limit=-1)

    async def test_alarms_at_zero_and_negative_zero_are_both_due_at_zero(
        self, driver: Driver
    ) -> None:
        await set_alarms(driver, {"a": 0.0, "b": -0.0})
        assert {
            alarm.workflow_id for alarm in await driver.list_alarms(until=-0.0)
        } == {
            "a",
            "b",
        }


@pytest.fixture(params=["memory", "leveldb"])
def make_driver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., Driver]:
    def make(**kwargs: float) -> Driver:
        if request.param == "memory":
            return MemoryDriver(**kwargs)
        return LevelDBDriver(tmp_path / "store", **kwargs)

    return make


class TestPollInterval:
    @pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, math.nan, -math.inf])
    def test_non_positive_poll_interval_is_refused(
        self, make_driver: Callable[..., Driver], bad: float
    ) -> None:
        with pytest.raises(ValueError, match="poll_interval"):
            make_driver(poll_interval=bad)

    async def test_default_poll_interval_is_exposed(
        self, make_driver: Callable[..., Driver]
    ) -> None:
        async with make_driver() as driver:
            assert driver.poll_interval == DEFAULT_POLL_INTERVAL

    async def test_poll_interval_is_kept_as_a_float(
        self, make_driver: Callable[..., Driver]
    ) -> None:
        async with make_driver(poll_interval=2) as driver:
            assert driver.poll_interval == 2.0
            assert type(driver.poll_interval) is float

    def test_default_poll_interval_is_one_second(self) -> None:
        assert DEFAULT_POLL_INTERVAL == 1.0


class _Recording(Driver):
    """A complete minimal driver that records what the base class asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []
        self.ranges: list[tuple[bytes, bytes]] = []

    async def get(self, key: bytes) -> bytes | None:
        return None

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self.ranges.append((start, end))
        return []

    async def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def get_alarm(self, workflow_id: str) -> float | None:
        return None

    async def list_alarms(
        self, *, until: float | None = None, limit: int | None = None
    ) -> list[Alarm]:
        return []

    def subscribe(self, workflow_id: str) -> Subscription:
        raise NotImplementedError

    def subscribe_alarms(self) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class TestDriverBase:
    def test_subclass_missing_abstract_methods_cannot_be_instantiated(self) -> None:
        class Incomplete(Driver):
            async def get(self, key: bytes) -> bytes | None:
                return None

        with pytest.raises(TypeError, match="abstract"):
            Incomplete()  # type: ignore[abstract]

    def test_driver_itself_cannot_be_instantiated(self) -> None:
        with pytest.raises(TypeError, match="abstract"):
            Driver()  # type: ignore[abstract]

    async def test_list_prefix_scans_up_to_the_prefix_end(self) -> None:
        driver = _Recording()
        await driver.list_prefix(b"a\xff")
        assert driver.ranges == [(b"a\xff", b"b")]

    async def test_convenience_writes_are_one_op_batches(self) -> None:
        driver = _Recording()
        await driver.set(b"k", b"v")
        await driver.delete(b"k")
        await driver.delete_range(b"a", b"b")
        await driver.delete_prefix(b"p")
        assert [batch.ops for batch in driver.batches] == [
            [(PUT, b"k", b"v")],
            [(DELETE, b"k", None)],
            [(DELETE_RANGE, b"a", b"b")],
            [(DELETE_RANGE, b"p", b"q")],
        ]

    async def test_async_with_closes_the_driver(self) -> None:
        closed = False

        class Closing(_Recording):
            async def close(self) -> None:
                nonlocal closed
                closed = True

        async with Closing():
            pass
        assert closed


class TestBatch:
    def test_ops_keep_the_order_they_were_added_in(self) -> None:
        batch = Batch()
        batch.put(b"k", b"v")
        batch.notify("wf")
        batch.delete(b"k")
        assert [op[0] for op in batch.ops] == [PUT, NOTIFY, DELETE]

    def test_empty_batch_is_falsy_with_length_zero(self) -> None:
        assert not Batch()
        assert len(Batch()) == 0

    def test_batch_length_counts_ops(self) -> None:
        batch = Batch()
        batch.put(b"k", b"v")
        batch.clear_alarm("wf")
        assert batch
        assert len(batch) == 2

    def test_extend_appends_the_other_batch_in_order(self) -> None:
        first, second = Batch(), Batch()
        first.put(b"a", b"1")
        second.delete(b"b")
        second.notify("wf")
        first.extend(second)
        assert first.ops == [
            (PUT, b"a", b"1"),
            (DELETE, b"b", None),
            (NOTIFY, "wf", None),
        ]

    def test_set_alarm_stores_a_float_time(self) -> None:
        batch = Batch()
        batch.set_alarm("wf", 3)
        assert batch.ops == [(SET_ALARM, "wf", 3.0)]
        assert type(batch.ops[0][2]) is float


class TestPrefixEnd:
    @pytest.mark.parametrize(
        ("prefix", "end"),
        [
            (b"a", b"b"),
            (b"a\x00", b"a\x01"),
            (b"a\xfe", b"a\xff"),
            (b"a\xff", b"b"),
            (b"a\xff\xff", b"b"),
            (b"", b"\xff"),
            (b"\xff", b"\xff"),
            (b"\xfe\xff", b"\xff"),
        ],
        ids=repr,
    )
    def test_prefix_end_is_the_first_string_past_the_prefix(
        self, prefix: bytes, end: bytes
    ) -> None:
        assert prefix_end(prefix) == end

    @pytest.mark.parametrize(
        "prefix", [b"a", b"a\xff", b"\x00", b"ab\xff\xff"], ids=repr
    )
    def test_every_extension_sorts_below_the_prefix_end(self, prefix: bytes) -> None:
        for suffix in [b"", b"\x00", b"\xff", b"\xff\xff\xff\xff"]:
            assert prefix <= prefix + suffix < prefix_end(prefix)
