"""Costs that must not grow with history: one load per run, constant writes per step."""

from __future__ import annotations

import durable
from durable import Batch, MemoryDriver


class CountingDriver(MemoryDriver):
    """A MemoryDriver that counts scans and records the size of every batch."""

    def __init__(self, *, poll_interval: float = 1.0) -> None:
        super().__init__(poll_interval=poll_interval)
        self.scans = 0
        self.batch_sizes: list[int] = []

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self.scans += 1
        return await super().list_range(start, end, limit=limit, reverse=reverse)

    async def write(self, batch: Batch) -> None:
        self.batch_sizes.append(len(batch))
        await super().write(batch)


async def many_steps(ctx: durable.WorkflowContext, count: object) -> int:
    total = 0
    for i in range(int(count)):  # type: ignore[call-overload]
        total += await ctx.step(f"step-{i}", lambda i=i: i)
    return total


class TestFirstRunCost:
    async def test_a_run_scans_the_store_once_however_long_the_workflow(self) -> None:
        driver = CountingDriver()
        result = await durable.run_workflow(
            "w", many_steps, 500, driver=driver
        ).result()
        assert result.output == sum(range(500))
        assert driver.scans == 1

    async def test_every_step_writes_one_batch_of_constant_size(self) -> None:
        driver = CountingDriver()
        await durable.run_workflow("w", many_steps, 300, driver=driver).result()
        step_batches = driver.batch_sizes[
            1:-1
        ]  # the first carries input and state, the last the output
        assert len(driver.batch_sizes) == 300 + 1
        # a new name, the entry data and the entry metadata: never more as history grows
        assert set(step_batches) == {3}


class TestLiveModeNeverReplays:
    async def test_waking_from_sleeps_continues_without_reloading_history(self) -> None:
        driver = CountingDriver(poll_interval=0.001)

        async def sleepy(ctx: durable.WorkflowContext, _: object) -> int:
            total = 0
            for i in range(5):
                total += await ctx.step(f"s{i}", lambda i=i: i)
                await ctx.sleep(
                    f"nap{i}", 0.002
                )  # longer than the poll interval: an alarm
            return total

        result = await durable.run_workflow("w", sleepy, None, driver=driver).result()
        assert result.output == 10
        assert driver.scans == 1
