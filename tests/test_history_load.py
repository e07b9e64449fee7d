"""History.load: the one range scan, cut by tag, and what it refuses."""

from __future__ import annotations

import pytest

import durable
from durable._codec import dump_record, dump_value
from durable._errors import CorruptRecordError
from durable._history import COMPLETED, PENDING, Entry, History
from durable._keys import encode_int
from durable._layout import WorkflowKeys

KEYS = WorkflowKeys("wf")


async def store(*puts: tuple[bytes, bytes]) -> durable.MemoryDriver:
    driver = durable.MemoryDriver()
    batch = durable.Batch()
    for key, value in puts:
        batch.put(key, value)
    await driver.write(batch)
    return driver


def step(index: int, seq: int, value: object) -> list[tuple[bytes, bytes]]:
    """The data and metadata records of a completed root step."""
    location = encode_int(index)
    meta = dump_record([COMPLETED, 1, 1.0, 2.0, None, None])
    return [
        (
            KEYS.entry + location,
            dump_record(["step", seq, index, dump_value(value, "")]),
        ),
        (KEYS.entry_meta + location, meta),
    ]


async def test_a_run_history_loads_in_order() -> None:
    driver = await store(
        (KEYS.name + encode_int(0), b"a"),
        (KEYS.name + encode_int(1), b"b"),
        *step(0, 0, 10),
        *step(1, 1, 11),
        (KEYS.message + encode_int(0), b"m"),
    )
    history = await History.load(driver, "wf")
    assert history.names == ["a", "b"]
    assert history.name_index == {"a": 0, "b": 1}
    assert [e.seq for e in history.entries.values()] == [0, 1]
    assert all(e.status == COMPLETED for e in history.entries.values())
    assert history.by_seq[b"", 1] is history.entries[encode_int(1)]
    assert history.scope_sizes == {b"": 2}
    assert history.messages == [(KEYS.message + encode_int(0), b"m")]


async def test_names_with_a_gap_load_by_index() -> None:
    driver = await store(
        (KEYS.name + encode_int(0), b"a"), (KEYS.name + encode_int(2), b"c")
    )
    history = await History.load(driver, "wf")
    assert history.names == ["a", "", "c"]
    assert history.name_index == {"a": 0, "c": 2}


async def test_a_bad_name_key_is_a_corrupt_record() -> None:
    driver = await store((KEYS.name + b"\x01x\x00", b"a"))
    with pytest.raises(CorruptRecordError, match="bad name index"):
        await History.load(driver, "wf")


async def test_an_unknown_key_tag_is_a_corrupt_record() -> None:
    driver = await store((KEYS.meta + b"\x00", b""))
    with pytest.raises(CorruptRecordError, match="unknown key tag"):
        await History.load(driver, "wf")


@pytest.mark.parametrize(
    "record",
    [b"\xc1", dump_record([1]), dump_record(["step", "x", 0, None])],
    ids=["undecodable", "short", "bad-seq"],
)
async def test_a_bad_entry_record_is_a_corrupt_record(record: bytes) -> None:
    key = KEYS.entry + encode_int(0)
    driver = await store((KEYS.name + encode_int(0), b"a"), (key, record))
    with pytest.raises(CorruptRecordError) as info:
        await History.load(driver, "wf")
    assert info.value.key == key


async def test_metadata_outliving_its_entry_is_ignored() -> None:
    driver = await store(
        (KEYS.name + encode_int(0), b"a"),
        (KEYS.entry + encode_int(0), dump_record(["sleep", 0, 0, 5.0])),
        (KEYS.entry_meta + encode_int(0), dump_record([PENDING, 0] + [None] * 4)),
        (KEYS.entry_meta + encode_int(1), b"\xc1"),
    )
    history = await History.load(driver, "wf")
    assert list(history.entries) == [encode_int(0)]
    assert history.entries[encode_int(0)].status == PENDING


async def test_the_replay_index_lists_loaded_entries_only() -> None:
    driver = await store((KEYS.name + encode_int(0), b"a"), *step(0, 0, 10))
    history = await History.load(driver, "wf")
    added = Entry(encode_int(1), "step", 1, 1)
    history.entries[added.location] = added  # what Scope.begin does for a new call
    assert list(history.by_seq.values()) == [history.entries[encode_int(0)]]
    assert history.scope_sizes == {b"": 1}


async def test_forget_drops_entries_from_the_replay_index() -> None:
    driver = await store(
        (KEYS.name + encode_int(0), b"a"),
        (KEYS.name + encode_int(1), b"b"),
        *step(0, 0, 10),
        *step(1, 1, 11),
    )
    history = await History.load(driver, "wf")
    history.forget(encode_int(1), encode_int(2))
    assert list(history.entries) == [encode_int(0)]
    assert list(history.by_seq) == [(b"", 0)]
