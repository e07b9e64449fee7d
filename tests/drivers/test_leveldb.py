"""LevelDBDriver only: persistence, the store lock, paths and damaged stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import plyvel
import pytest

from durable import LevelDBDriver
from durable._drivers import Alarm, Batch, default_store_path
from durable._errors import CorruptRecordError, StorageError, StoreLockedError

SUBPROCESS_TIMEOUT = 60  # seconds; a hang fails the test instead of blocking CI

OPEN_IN_SUBPROCESS = """
import sys
from durable import LevelDBDriver
from durable._errors import StoreLockedError

try:
    LevelDBDriver(sys.argv[1])
except StoreLockedError as exc:
    print(type(exc).__name__, exc.path, sep="\\n")
else:
    print("opened")
"""


async def write_sample(driver: LevelDBDriver) -> None:
    batch = Batch()
    batch.put(b"a", b"1")
    batch.put(b"b\xff", b"2")
    batch.set_alarm("wf", 42.0)
    await driver.write(batch)


class TestPersistence:
    async def test_data_survives_close_and_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path) as driver:
            await write_sample(driver)
        async with LevelDBDriver(path) as driver:
            assert await driver.list_prefix(b"") == [(b"a", b"1"), (b"b\xff", b"2")]

    async def test_alarms_survive_close_and_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path) as driver:
            await write_sample(driver)
        async with LevelDBDriver(path) as driver:
            assert await driver.get_alarm("wf") == 42.0
            assert await driver.list_alarms() == [Alarm("wf", 42.0)]

    async def test_alarm_moved_after_reopen_leaves_no_stale_entry(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path) as driver:
            await write_sample(driver)
        async with LevelDBDriver(path) as driver:
            batch = Batch()
            batch.set_alarm("wf", 7.0)
            await driver.write(batch)
            assert await driver.list_alarms() == [Alarm("wf", 7.0)]

    async def test_sync_writes_are_stored(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path, sync=True) as driver:
            assert driver.sync is True
            await write_sample(driver)
            await driver.set(b"c", b"3")
            assert await driver.get(b"c") == b"3"
        async with LevelDBDriver(path) as driver:
            assert await driver.get(b"c") == b"3"
            assert driver.sync is False


class TestLock:
    async def test_second_driver_on_the_same_path_gets_store_locked_error(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path):
            with pytest.raises(StoreLockedError) as info:
                LevelDBDriver(path)
        assert info.value.path == str(path)

    async def test_store_locked_error_is_a_storage_error(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path):
            with pytest.raises(StorageError, match="locked"):
                LevelDBDriver(path)

    async def test_second_process_gets_store_locked_error_promptly(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path):
            with anyio.fail_after(SUBPROCESS_TIMEOUT):
                result = await anyio.run_process(
                    [sys.executable, "-c", OPEN_IN_SUBPROCESS, str(path)],
                    stderr=subprocess.STDOUT,
                )
        assert result.stdout.decode().splitlines() == ["StoreLockedError", str(path)]

    async def test_second_process_opens_the_store_once_it_is_closed(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path):
            pass
        with anyio.fail_after(SUBPROCESS_TIMEOUT):
            result = await anyio.run_process(
                [sys.executable, "-c", OPEN_IN_SUBPROCESS, str(path)],
                stderr=subprocess.STDOUT,
            )
        assert result.stdout.decode().splitlines() == ["opened"]

    async def test_close_releases_the_lock(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        first = LevelDBDriver(path)
        await first.set(b"k", b"v")
        await first.close()
        async with LevelDBDriver(path) as second:
            assert await second.get(b"k") == b"v"

    async def test_leaving_async_with_closes_the_store(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        async with LevelDBDriver(path) as driver:
            await driver.set(b"k", b"v")
        with pytest.raises(StorageError, match="closed"):
            await driver.get(b"k")
        async with LevelDBDriver(path) as reopened:
            assert await reopened.get(b"k") == b"v"

    async def test_async_with_closes_the_store_when_the_block_raises(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        with pytest.raises(KeyError):
            async with LevelDBDriver(path):
                raise KeyError("boom")
        async with LevelDBDriver(path):
            pass


class TestClosedStore:
    @pytest.fixture
    async def closed(self, tmp_path: Path) -> LevelDBDriver:
        driver = LevelDBDriver(tmp_path / "store")
        await driver.close()
        return driver

    async def test_get_on_a_closed_store_raises_storage_error(
        self, closed: LevelDBDriver
    ) -> None:
        with pytest.raises(StorageError, match="closed"):
            await closed.get(b"k")

    async def test_write_on_a_closed_store_raises_storage_error(
        self, closed: LevelDBDriver
    ) -> None:
        with pytest.raises(StorageError, match="closed"):
            await closed.set(b"k", b"v")

    async def test_list_alarms_on_a_closed_store_raises_storage_error(
        self, closed: LevelDBDriver
    ) -> None:
        with pytest.raises(StorageError, match="closed"):
            await closed.list_alarms()


class TestPaths:
    def test_default_path_is_dot_durable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("DURABLE_STORE", raising=False)
        assert default_store_path() == Path(".durable")

    def test_default_path_honours_durable_store(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("DURABLE_STORE", str(tmp_path / "from-env"))
        assert default_store_path() == tmp_path / "from-env"

    def test_empty_durable_store_falls_back_to_dot_durable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DURABLE_STORE", "")
        assert default_store_path() == Path(".durable")

    async def test_driver_without_a_path_opens_durable_store(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("DURABLE_STORE", str(tmp_path / "from-env"))
        async with LevelDBDriver() as driver:
            await driver.set(b"k", b"v")
            assert driver.path == tmp_path / "from-env"
        async with LevelDBDriver(tmp_path / "from-env") as driver:
            assert await driver.get(b"k") == b"v"

    async def test_driver_without_a_path_or_env_opens_dot_durable_here(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.delenv("DURABLE_STORE", raising=False)
        monkeypatch.chdir(tmp_path)
        async with LevelDBDriver() as driver:
            await driver.set(b"k", b"v")
        assert (tmp_path / ".durable" / "CURRENT").is_file()

    async def test_missing_parent_directories_are_created(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "c" / "store"
        async with LevelDBDriver(path) as driver:
            await driver.set(b"k", b"v")
        assert (path / "CURRENT").is_file()

    async def test_str_path_is_accepted(self, tmp_path: Path) -> None:
        async with LevelDBDriver(str(tmp_path / "store")) as driver:
            assert driver.path == tmp_path / "store"

    async def test_existing_directory_without_a_store_becomes_one(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        path.mkdir()
        (path / "notes.txt").write_text("unrelated")
        async with LevelDBDriver(path) as driver:
            await driver.set(b"k", b"v")
            assert await driver.list_prefix(b"") == [(b"k", b"v")]


class TestDamagedStores:
    @pytest.fixture
    async def store(self, tmp_path: Path) -> Path:
        path = tmp_path / "store"
        async with LevelDBDriver(path) as driver:
            await driver.set(b"k", b"v")
        return path

    async def test_garbage_current_file_raises_a_storage_error(
        self, store: Path
    ) -> None:
        (store / "CURRENT").write_bytes(b"garbage")
        with pytest.raises(StorageError) as info:
            LevelDBDriver(store)
        assert not isinstance(info.value, plyvel.Error)

    async def test_garbage_current_file_is_reported_as_corruption(
        self, store: Path
    ) -> None:
        (store / "CURRENT").write_bytes(b"garbage")
        with pytest.raises(CorruptRecordError, match="corrupt"):
            LevelDBDriver(store)

    async def test_current_naming_a_missing_manifest_raises_a_storage_error(
        self, store: Path
    ) -> None:
        (store / "CURRENT").write_bytes(b"MANIFEST-999999\n")
        with pytest.raises(StorageError):
            LevelDBDriver(store)

    def test_path_that_is_a_file_raises_storage_error_not_store_locked(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "store"
        path.write_text("not a directory")
        with pytest.raises(StorageError) as info:
            LevelDBDriver(path)
        assert not isinstance(info.value, StoreLockedError)

    def test_parent_that_is_a_file_raises_storage_error(self, tmp_path: Path) -> None:
        (tmp_path / "parent").write_text("not a directory")
        with pytest.raises(StorageError):
            LevelDBDriver(tmp_path / "parent" / "store")

    async def test_failed_open_does_not_hold_the_lock(self, store: Path) -> None:
        current = (store / "CURRENT").read_bytes()
        (store / "CURRENT").write_bytes(b"garbage")
        with pytest.raises(StorageError):
            LevelDBDriver(store)
        (store / "CURRENT").write_bytes(current)
        async with LevelDBDriver(store) as driver:
            assert await driver.get(b"k") == b"v"
