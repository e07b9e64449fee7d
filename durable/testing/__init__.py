"""Tools to test workflows: virtual time, fault injection, replay and crash checks.

``import durable.testing`` needs nothing beyond durable itself; the hypothesis
helpers live in `durable.testing.strategies`, which needs hypothesis.
"""

from ._clock import TestClock
from ._faulty import FaultyDriver, SimulatedCrash
from ._replay import ReplayReport, check_determinism, check_replay

__all__ = [
    "FaultyDriver",
    "ReplayReport",
    "SimulatedCrash",
    "TestClock",
    "check_determinism",
    "check_replay",
]


def _rehome() -> None:
    """Make tracebacks and reprs say durable.testing.X."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("durable.testing."):
            obj.__module__ = __name__


_rehome()
del _rehome
