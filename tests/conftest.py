"""Shared fixtures: both anyio backends, every driver, hypothesis profiles."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import anyio.to_thread
import psycopg
import pytest
from hypothesis import settings
from psycopg import sql

from durable import Driver, LevelDBDriver, MemoryDriver, PostgresDriver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

settings.register_profile("ci", deadline=None, max_examples=200, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The local PostgreSQL that .ci/run starts: trust auth, user root, database test.
POSTGRES_DSN = os.environ.get("DURABLE_TEST_POSTGRES_DSN", "dbname=test user=root")

# Every suite that takes the `driver` fixture runs on every driver, PostgreSQL too. A
# test marked `embedded_only` skips PostgreSQL: it makes so many commits that it
# would take minutes there (a 100,000-iteration loop commits 100,000 transactions)
# while testing nothing the driver changes. DURABLE_TEST_ENGINE_DRIVERS narrows the
# engine suites (e.g. "memory" for a quick local run).
DRIVERS = ["memory", "leveldb", "postgres"]
ENGINE_DRIVERS = os.environ.get(
    "DURABLE_TEST_ENGINE_DRIVERS", "memory,leveldb,postgres"
).split(",")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # explicit: a missing trio fails loudly instead of skipping


@pytest.fixture
def postgres_dsn() -> str:
    return POSTGRES_DSN


def drop_postgres_store(store: str) -> None:
    """Drop a test store's schema (and so everything in it)."""
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store))
        )


@pytest.fixture
def postgres_store() -> Iterator[str]:
    """A fresh store name, unique to this test (parallel runs cannot collide)."""
    store = f"test_{uuid.uuid4().hex}"
    yield store
    drop_postgres_store(store)


def _parametrizes_driver_itself(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "driver" in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        "driver" in metafunc.fixturenames
        and not _parametrizes_driver_itself(metafunc)
        and not hasattr(metafunc.module, "driver")  # the module has its own fixture
    ):
        conformance = metafunc.definition.path.name == "test_drivers.py"
        names = DRIVERS if conformance else ENGINE_DRIVERS
        if metafunc.definition.get_closest_marker("embedded_only"):
            names = [name for name in names if name != "postgres"]
        metafunc.parametrize("driver", names, indirect=True)


@pytest.fixture
async def driver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Driver]:
    made: Driver
    if request.param == "memory":
        made = MemoryDriver()
    elif request.param == "leveldb":
        made = LevelDBDriver(tmp_path / "store")
    else:
        store = f"test_{uuid.uuid4().hex}"
        made = PostgresDriver(POSTGRES_DSN, store=store)
    try:
        async with made:
            yield made
    finally:
        if request.param == "postgres":
            await anyio.to_thread.run_sync(drop_postgres_store, store)
