"""Shared fixtures: both anyio backends, both drivers, hypothesis profiles."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from durable import Driver, LevelDBDriver, MemoryDriver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

settings.register_profile("ci", deadline=None, max_examples=200, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # explicit: a missing trio fails loudly instead of skipping


@pytest.fixture(params=["memory", "leveldb"])
async def driver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Driver]:
    made = (
        MemoryDriver()
        if request.param == "memory"
        else LevelDBDriver(tmp_path / "store")
    )
    async with made:
        yield made
