"""Scale: a graph of 10,000 steps runs, and its cost per step does not grow with size.

The graph: a root step emits *c* children and a fan-in step that depends on all of
them; each child emits *g* grandchildren, so a run has 1 + c (1 + g) + 1 steps. The
"deep" shape has g = 9 (c = 1,000: 10,002 steps, a fan-out of 1,000 emitted
children and a fan-in over them); the "wide" shape has 10 c children and none
emits, so one step emits and the fan-in waits for the same number of steps.

Growth is checked without timing anything (the machines are noisy): a run of
10 c + 2 steps is compared with a run of 4 times as many, per step, on counts that
a rescan of the graph (or of the run's branches) would inflate: write batches,
bytes written and reads of the store, Python function calls (a deterministic count
under `cProfile`, builtins included) and the peak of traced memory. Linear totals
are fine; a per-step figure must stay within a small factor.
"""

from __future__ import annotations

import collections
import contextlib
import cProfile
import pstats
import tracemalloc
from typing import TYPE_CHECKING, Literal

import anyio
import attrs
import pytest

import durable
from durable import dag
from durable.testing import FaultyDriver

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

SMALL, LARGE = 100, 400  # c of the two graphs compared: 1,002 and 4,002 steps
MAX_GROWTH = 1.3  # per-step counts of the large graph over the small one, at most
MAX_MEMORY_GROWTH = 1.5  # per-step peak of traced memory, large over small, at most

Mode = Literal["run_once", "workers"]
ShapeName = Literal["deep", "wide"]


@attrs.frozen
class Shape:
    """Root → *children* (each emitting *grandchildren*) and a fan-in over them."""

    children: int
    grandchildren: int

    @classmethod
    def of(cls, name: ShapeName, c: int) -> Shape:
        return cls(c, 9) if name == "deep" else cls(10 * c, 0)

    @property
    def steps(self) -> int:
        return 1 + self.children * (1 + self.grandchildren) + 1

    def step_ids(self) -> set[str]:
        ids = {"root", "fanin"}
        for i in range(self.children):
            ids.add(f"c{i}")
            ids.update(f"c{i}.{j}" for j in range(self.grandchildren))
        return ids


class CountingDriver(FaultyDriver):
    """A FaultyDriver that never fails, counting reads and bytes written too."""

    def __init__(self, inner: durable.Driver) -> None:
        super().__init__(inner)
        self.bytes_written = 0
        self.reads = 0  # get and list_range calls
        self.rows_read = 0  # values they returned

    async def write(self, batch: durable.Batch) -> None:
        self.bytes_written += sum(
            len(part) for op in batch.ops for part in op[1:] if isinstance(part, bytes)
        )
        await super().write(batch)

    async def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        value = await super().get(key)
        self.rows_read += value is not None
        return value

    async def list_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self.reads += 1
        rows = await super().list_range(start, end, limit=limit, reverse=reverse)
        self.rows_read += len(rows)
        return rows


def fan_runtime(driver: durable.Driver, shape: Shape) -> tuple[dag.Runtime, list[str]]:
    """A runtime with package ``fan`` (the graph above); the list gets each execution."""
    children = shape.children
    executed: list[str] = []
    runtime = dag.Runtime(driver, queues={"work": dag.QueuePolicy(max_workers=64)})

    @runtime.executor("scale/root")
    def root(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        handles = [
            step.emit(f"c{i}", i, kind="scale/child", queue="work")
            for i in range(children)
        ]
        step.emit("fanin", None, kind="scale/fanin", queue="work", depends_on=handles)
        return 0

    @runtime.executor("scale/child")
    def child(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        for j in range(shape.grandchildren):
            step.emit(f"{step.step_id}.{j}", None, kind="scale/leaf", queue="work")
        return 1

    @runtime.executor("scale/leaf")
    def leaf(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        return 2

    @runtime.executor("scale/fanin")
    def fanin(step: dag.StepContext) -> int:
        executed.append(step.step_id)
        # every child succeeded before the fan-in runs
        assert step.dependency_data("c0") == 1
        assert step.dependency_data(f"c{children - 1}") == 1
        return 3

    def entrypoint(run: dag.RunBuilder, _: object) -> None:
        run.step("root", None, kind="scale/root", queue="work")

    runtime.register_package(dag.package("fan").entrypoint(entrypoint).build())
    return runtime, executed


async def until_finished(driver: durable.Driver, run_id: str) -> None:
    """Wait until the run's workflow completed, or waits for an operator (failed).

    Not `Runtime.wait_run`: each of its polls folds the run's whole history, which
    for 10,000 steps takes a large share of the CPU the run itself needs.
    """
    while True:
        page = await durable.list_workflows(driver=driver, name=dag.RUN_WORKFLOW)
        [summary] = [s for s in page.workflows if s.workflow_id == run_id]
        if summary.state.is_final or summary.state == durable.WorkflowState.SLEEPING:
            return
        await anyio.sleep(0.01)


async def run_fan(
    driver: durable.Driver,
    shape: Shape,
    mode: Mode,
    measure: AbstractContextManager[object] | None = None,
) -> list[str]:
    """Run the graph to its end; *measure* is entered while run_once runs it."""
    runtime, executed = fan_runtime(driver, shape)
    if mode == "run_once":
        await runtime.start_run("fan", None, run_id="fan")
        with measure or contextlib.nullcontext():
            cycle = await runtime.run_once()
        assert cycle.runs == 1
        assert cycle.executed == cycle.succeeded == shape.steps
        assert cycle.failed == cycle.retried == 0
    else:
        async with runtime:
            await runtime.start_run("fan", None, run_id="fan")
            with anyio.fail_after(50):
                await until_finished(driver, "fan")
    return executed


async def check_succeeded(driver: durable.Driver, shape: Shape) -> None:
    runtime, _ = fan_runtime(driver, shape)
    run = await runtime.get_run("fan")
    assert run.status == dag.RunStatus.SUCCEEDED
    assert set(run.steps) == shape.step_ids()
    assert {s.status for s in run.steps.values()} == {dag.StepStatus.SUCCEEDED}
    assert {s.attempts for s in run.steps.values()} == {1}
    if shape.grandchildren:
        assert run.steps["c7.0"].parent_id == "c7"
    assert run.steps["fanin"].parent_id == "root"
    assert len(run.steps["fanin"].depends_on) == shape.children
    fanin = await runtime.get_result("fan", "fanin")
    assert fanin is not None
    assert fanin.data == 3


# --- 10,000 steps ---------------------------------------------------------------------


# Measured on a 2-core machine, each backend: about 4.5 s with workers and 7 s with
# run_once, the two reads of the finished run included (about 0.6 s each); 60 s only
# catches a hang or a collapse.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["workers", "run_once"])
async def test_a_graph_of_10000_steps_runs_every_step_once(mode: Mode) -> None:
    shape = Shape.of("deep", 1000)
    async with durable.MemoryDriver() as driver:
        executed = await run_fan(driver, shape, mode)
        counts = collections.Counter(executed)
        assert len(executed) == shape.steps == 10_002
        assert set(counts) == shape.step_ids()
        assert set(counts.values()) == {1}
        assert executed[0] == "root"
        # the fan-in ran after every child (grandchildren may still have been running)
        assert executed.index("fanin") > max(
            executed.index(f"c{i}") for i in range(shape.children)
        )
        await check_succeeded(driver, shape)


# --- growth: counts per step of a 4,002-step graph over a 1,002-step one ----------------


async def storage_counts(shape: Shape) -> dict[str, float]:
    async with durable.MemoryDriver() as inner:
        driver = CountingDriver(inner)
        await run_fan(driver, shape, "run_once")
        steps = shape.steps
        counts = {
            "writes": driver.writes / steps,
            "bytes_written": driver.bytes_written / steps,
            "reads": driver.reads / steps,
            "rows_read": driver.rows_read / steps,
        }
        await check_succeeded(inner, shape)
    return counts


async def test_store_work_per_step_does_not_grow_with_the_graph() -> None:
    small = await storage_counts(Shape.of("deep", SMALL))
    large = await storage_counts(Shape.of("deep", LARGE))
    # one write batch per finished step (and a few per run)
    assert small["writes"] < 1.1
    for what in small:
        assert large[what] <= small[what] * MAX_GROWTH, (what, small, large)


class Calls:
    """Counts every Python and builtin function call made while entered."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    def __enter__(self) -> None:
        self.profile.enable()

    def __exit__(self, *exc_info: object) -> None:
        self.profile.disable()

    @property
    def total(self) -> int:
        return pstats.Stats(self.profile).total_calls  # type: ignore[attr-defined,no-any-return]

    def top(self, count: int = 8) -> list[tuple[int, str]]:
        """The functions called most often, for the failure message."""
        stats = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        found = [
            (calls, f"{path.rsplit('/', 1)[-1]}:{line}({name})")
            for (path, line, name), (_, calls, *_) in stats.items()
        ]
        return sorted(found, reverse=True)[:count]


async def calls_per_step(shape: Shape) -> tuple[float, Calls]:
    calls = Calls()
    async with durable.MemoryDriver() as driver:
        await run_fan(driver, shape, "run_once", measure=calls)
    return calls.total / shape.steps, calls


# A rescan of the run's steps or branches for every finished step shows up as calls
# (a loop over n steps calls something n times), and so does a step whose k emits
# cost O(k²) ("wide": one step emits every other). Counted under run_once, whose
# order of execution is the same every time, so the count is too.
@pytest.mark.timeout(90)
@pytest.mark.parametrize("shape_name", ["deep", "wide"])
async def test_python_calls_per_step_do_not_grow_with_the_graph(
    shape_name: ShapeName,
) -> None:
    small_shape, large_shape = Shape.of(shape_name, SMALL), Shape.of(shape_name, LARGE)
    small, small_calls = await calls_per_step(small_shape)
    large, large_calls = await calls_per_step(large_shape)
    assert large <= small * MAX_GROWTH, (
        f"{small:.0f} calls per step at {small_shape.steps} steps, {large:.0f} at "
        f"{large_shape.steps}; most called at {small_shape.steps}: "
        f"{small_calls.top()}; at {large_shape.steps}: {large_calls.top()}"
    )


async def memory_peak_per_step(shape: Shape, mode: Mode) -> float:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        async with durable.MemoryDriver() as driver:
            await run_fan(driver, shape, mode)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - before) / shape.steps


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["workers", "run_once"])
async def test_memory_per_step_does_not_grow_with_the_graph(mode: Mode) -> None:
    small_shape, large_shape = Shape.of("deep", SMALL), Shape.of("deep", LARGE)
    small = await memory_peak_per_step(small_shape, mode)
    large = await memory_peak_per_step(large_shape, mode)
    assert large <= small * MAX_MEMORY_GROWTH, (
        f"peak {small:.0f} B per step at {small_shape.steps} steps, {large:.0f} B "
        f"at {large_shape.steps}"
    )
