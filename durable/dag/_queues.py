"""Queue admission: at most ``max_workers`` steps of a queue at once, a token bucket.

Admission is a decision across runs, not part of any run's history: a step's
attempt waits here before its executor runs, and nothing about the wait is
recorded, since it cannot change the step's result.

* **Workers.** One FIFO `anyio.CapacityLimiter` per queue, shared by every run of
  the runtime.
* **Rate.** A token bucket per queue, stored in the runtime's driver under a key of
  the ``0xFD`` prefix that ``durable`` leaves to this layer (docs/storage-layout.md)
  as JSON ``{"tokens": t, "at": epoch}``. A token is spent with a checked write of
  the value read, so runtimes in several processes never spend one token twice,
  and the bucket is stored only when a token is spent (a refill is computed from
  the time elapsed).
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Final

import anyio

import durable

from ._model import DEFAULT_QUEUE_POLICY, QueuePolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

BUCKET_PREFIX: Final = b"\xfddag\x00bucket\x00"
_EPSILON: Final = 1e-9


class Admission:
    """The queues of one runtime: their policies, slots and buckets."""

    def __init__(
        self,
        driver: durable.Driver,
        clock: durable.Clock,
        policies: Mapping[str, QueuePolicy],
        default: QueuePolicy = DEFAULT_QUEUE_POLICY,
    ) -> None:
        for name, policy in policies.items():
            if not isinstance(policy, QueuePolicy):
                raise TypeError(f"queue {name!r}: policy must be a QueuePolicy")
        self.driver = driver
        self.clock = clock
        self.policies = dict(policies)
        self.default = default
        self._slots: dict[str, anyio.CapacityLimiter] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.serial: anyio.Lock | None = None  # run_once: one step at a time

    def policy(self, queue: str) -> QueuePolicy:
        """The policy of *queue* (the default one when it has none)."""
        return self.policies.get(queue, self.default)

    @contextlib.asynccontextmanager
    async def admit(self, queue: str) -> AsyncIterator[None]:
        """Hold a slot of *queue* (and spend a token when it has a rate)."""
        policy = self.policy(queue)
        slots = self._slots.get(queue)
        if slots is None:
            slots = self._slots[queue] = anyio.CapacityLimiter(policy.max_workers)
        async with contextlib.AsyncExitStack() as stack:
            if self.serial is not None:
                await stack.enter_async_context(self.serial)
            await stack.enter_async_context(slots)
            if policy.rate is not None:
                await self._take_token(queue, policy)
            yield

    async def _take_token(self, queue: str, policy: QueuePolicy) -> None:
        rate = policy.rate or 1.0  # only called for queues with a rate
        key = BUCKET_PREFIX + queue.encode()
        lock = self._locks.setdefault(queue, anyio.Lock())
        async with lock:  # one taker per process; other processes: checked writes
            while True:
                raw = await self.driver.get(key)
                now = self.clock.now()
                tokens = _tokens(raw, policy, now)
                wake = now + (1 - tokens) / rate
                # epoch floats resolve ~0.2 µs: a refill can land a hair short of a
                # token with no later instant to wait for; that counts as a token
                if tokens >= 1 - _EPSILON or wake <= now:
                    batch = durable.Batch()
                    batch.check(key, raw)
                    left = max(0.0, tokens - 1)
                    batch.put(key, json.dumps({"tokens": left, "at": now}).encode())
                    try:
                        await self.driver.write(batch)
                    except durable.WriteConflictError:
                        continue  # another process spent one meanwhile: read again
                    return
                await self.clock.sleep_until(wake)

    async def tokens(self, queue: str) -> float | None:
        """Tokens in *queue*'s bucket now (None: the queue has no rate)."""
        policy = self.policy(queue)
        if policy.rate is None:
            return None
        raw = await self.driver.get(BUCKET_PREFIX + queue.encode())
        return _tokens(raw, policy, self.clock.now())


def _tokens(raw: bytes | None, policy: QueuePolicy, now: float) -> float:
    """Tokens in a stored bucket at *now*, refilled since its last spend.

    A missing or unreadable bucket is full (it is rewritten whole at the next spend).
    """
    if raw is None:
        return float(policy.capacity)
    try:
        data = json.loads(raw)
        tokens, at = float(data["tokens"]), float(data["at"])
    except (ValueError, KeyError, TypeError):
        return float(policy.capacity)
    refill = max(0.0, now - at) * (policy.rate or 0.0)
    return min(float(policy.capacity), tokens + refill)
