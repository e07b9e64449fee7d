"""Drivers: the only code that touches storage."""

from ._base import DEFAULT_POLL_INTERVAL, Alarm, Batch, Driver, Subscription
from ._leveldb import LevelDBDriver, default_store_path
from ._memory import MemoryDriver

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "Alarm",
    "Batch",
    "Driver",
    "LevelDBDriver",
    "MemoryDriver",
    "Subscription",
    "default_store_path",
]
