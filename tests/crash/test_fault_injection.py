"""Fault injection: random workflows whose k-th write crashes or fails always converge.

A `FaultyDriver` over a `MemoryDriver` fails one write of a random workflow program;
the test reads what the inner store kept, resumes there, and checks that the output
equals an uninterrupted run's and that no step recorded before the fault ran again.
Each example runs on asyncio and on trio (a sync ``@given`` test driving
``anyio.run``: hypothesis and the anyio plugin do not mix).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable import (
    Driver,
    MemoryDriver,
    StorageError,
    SystemClock,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from durable._history import COMPLETED, STEP, History
from durable.testing import FaultyDriver, SimulatedCrash

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hypothesis.strategies import DataObject

WORKFLOW_ID = "faulty"
BACKENDS = ("asyncio", "trio")

pytestmark = pytest.mark.crash


class WriteFailedError(OSError):
    """A storage error a user's driver would raise: the write failed, nothing written."""


# A program is a list of ops: ("step", value, ephemeral) or ("sleep", seconds).
Op = tuple[Any, ...]

storable_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack stores
step_values = st.one_of(
    st.none(),
    st.booleans(),
    storable_ints,
    st.text(max_size=6),
    st.lists(storable_ints, max_size=3).map(tuple),  # comes back as a list
)
ops = st.one_of(
    st.tuples(st.just("step"), step_values, st.booleans()),
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.001])),
)
programs = st.lists(ops, min_size=1, max_size=12)


def step_names(program: list[Op]) -> list[str]:
    return [f"op-{i}" for i, op in enumerate(program) if op[0] == "step"]


def make_workflow(
    program: list[Op], executions: Counter[str]
) -> Callable[[WorkflowContext, object], Awaitable[list[object]]]:
    """The workflow that runs *program*, counting each step execution."""

    def step_fn(name: str, value: object, *, is_async: bool) -> Callable[[], object]:
        def run() -> object:
            executions[name] += 1
            return value

        async def run_async() -> object:
            await anyio.lowlevel.checkpoint()
            executions[name] += 1
            return value

        return run_async if is_async else run

    async def workflow(ctx: WorkflowContext, _input: object) -> list[object]:
        results = []
        for i, op in enumerate(program):
            name = f"op-{i}"
            if op[0] == "step":
                _, value, ephemeral = op
                fn = step_fn(name, value, is_async=i % 2 == 1)
                results.append(await ctx.step(name, fn, ephemeral=ephemeral))
            else:
                await ctx.sleep(name, op[1])
        return results

    return workflow


@attrs.frozen
class Config:
    """How the workflow runs: mode, and the poll interval its sleeps compare with."""

    mode: Literal["live", "yield"]
    poll_interval: float  # 1.0: sleeps wait in memory; 0.0005: they set an alarm


configs = st.builds(
    Config, st.sampled_from(["live", "yield"]), st.sampled_from([1.0, 0.0005])
)


@attrs.frozen
class Reference:
    """An uninterrupted run: its output and how many writes it made."""

    output: object
    writes: int


async def run_to_end(
    program: list[Op], driver: Driver, executions: Counter[str], config: Config
) -> object:
    """Run (in yield mode: again after each wait) until completed; return the output."""
    for _ in range(100):
        result = await run_workflow(
            WORKFLOW_ID,
            make_workflow(program, executions),
            None,
            driver=driver,
            mode=config.mode,
        ).result()
        if result.state == WorkflowState.COMPLETED:
            return result.output
        assert config.mode == "yield"
        assert result.state == WorkflowState.SLEEPING
        assert result.sleep_until is not None
        await SystemClock().sleep_until(result.sleep_until)
    raise AssertionError("the workflow never completed")


async def run_clean(program: list[Op], config: Config) -> Reference:
    async with MemoryDriver(poll_interval=config.poll_interval) as inner:
        counting = FaultyDriver(inner)
        output = await run_to_end(program, counting, Counter(), config)
    return Reference(output, counting.writes)


async def stored(driver: Driver) -> tuple[list[str], WorkflowState | None]:
    """The completed steps (in program order) and the state the store holds."""
    history = await History.load(driver, WORKFLOW_ID)
    recorded = sorted(
        (entry.seq, history.names[entry.name_index])
        for entry in history.entries.values()
        if entry.kind == STEP and entry.status == COMPLETED
    )
    return [name for _, name in recorded], (
        None if history.meta is None else history.meta.state
    )


UNFINISHED = (None, WorkflowState.RUNNING, WorkflowState.SLEEPING)


async def resume(
    program: list[Op], driver: Driver, reference: Reference, config: Config
) -> Counter[str]:
    """Run to completion on *driver*: each step not recorded yet runs exactly once."""
    recorded, _ = await stored(driver)
    executions: Counter[str] = Counter()
    assert await run_to_end(program, driver, executions, config) == reference.output
    for name in step_names(program):
        expected = 0 if name in recorded else 1
        assert executions[name] == expected, (name, recorded, executions)
    return executions


def assert_recorded_in_order(program: list[Op], recorded: list[str]) -> None:
    """Writes reach the store in order, so the recorded steps are a prefix."""
    names = step_names(program)
    assert recorded == names[: len(recorded)], (recorded, names)


async def crash_then_resume(
    program: list[Op], config: Config, crash_points: list[int], reference: Reference
) -> None:
    async with MemoryDriver(poll_interval=config.poll_interval) as inner:
        executions: Counter[str] = Counter()
        cut_short: Counter[str] = Counter()  # executed, then lost in a crash
        for k in crash_points:
            faulty = FaultyDriver(inner, fail_at=k, mode="crash")
            before, _ = await stored(inner)
            counted = executions.copy()
            try:
                output = await run_to_end(program, faulty, executions, config)
            except SimulatedCrash:
                assert faulty.writes == k
            else:
                assert faulty.writes < k
                assert output == reference.output
            # nothing recorded before this run executed again in it
            for name in before:
                assert executions[name] == counted[name], (name, before)
            recorded, state = await stored(inner)
            assert_recorded_in_order(program, recorded)
            assert set(before) <= set(recorded)
            if not faulty.crashed:
                assert state == WorkflowState.COMPLETED
                break
            assert state in UNFINISHED
            cut_short.update(
                name for name in executions - counted if name not in recorded
            )
        executions += await resume(program, inner, reference, config)
        for name in step_names(program):
            assert executions[name] == 1 + cut_short[name], (name, executions)


async def fail_write_then_resume(
    program: list[Op],
    config: Config,
    k: int,
    error: Callable[[], Exception],
    reference: Reference,
) -> None:
    async with MemoryDriver(poll_interval=config.poll_interval) as inner:
        faulty = FaultyDriver(inner, fail_at=k, mode="raise", error=error)
        failure: Exception | None = None
        try:
            output = await run_to_end(program, faulty, Counter(), config)
        except Exception as exc:
            failure = exc
        recorded, state = await stored(inner)
        if faulty.writes == k:
            # the very error the driver raised, not a WorkflowFailedError
            assert type(failure) is type(error()), failure
            assert state in UNFINISHED
        else:
            assert failure is None, failure
            assert faulty.writes < k
            assert output == reference.output
            assert state == WorkflowState.COMPLETED
        assert_recorded_in_order(program, recorded)
        # the same driver works again after its failed write
        await resume(program, faulty, reference, config)


@settings(deadline=None)
@given(program=programs, config=configs, data=st.data())
def test_resuming_after_crashes_at_random_writes_converges(
    program: list[Op], config: Config, data: DataObject
) -> None:
    reference = anyio.run(run_clean, program, config)
    crash_points = data.draw(
        st.lists(st.integers(1, reference.writes + 1), min_size=1, max_size=3),
        label="crash_points",
    )
    for backend in BACKENDS:
        anyio.run(
            crash_then_resume, program, config, crash_points, reference, backend=backend
        )


ERRORS: dict[str, Callable[[], Exception]] = {
    "OSError": lambda: WriteFailedError("disk full"),
    "StorageError": lambda: StorageError("the store went away"),
}


@settings(deadline=None)
@given(
    program=programs,
    config=configs,
    error=st.sampled_from(sorted(ERRORS)),
    data=st.data(),
)
def test_failed_write_surfaces_the_error_without_failing_the_workflow(
    program: list[Op], config: Config, error: str, data: DataObject
) -> None:
    reference = anyio.run(run_clean, program, config)
    k = data.draw(st.integers(1, reference.writes + 1), label="failing_write")
    for backend in BACKENDS:
        anyio.run(
            fail_write_then_resume,
            program,
            config,
            k,
            ERRORS[error],
            reference,
            backend=backend,
        )


async def test_workflow_that_catches_a_failed_write_still_ends_with_it() -> None:
    executions: Counter[str] = Counter()

    def side_effect(name: str) -> Callable[[], str]:
        def run() -> str:
            executions[name] += 1
            return name

        return run

    async def workflow(ctx: WorkflowContext, _input: object) -> list[str]:
        try:
            first = await ctx.step("first", side_effect("first"))
        except OSError:
            first = "lost"  # code that ignores the storage failure
        return [first, await ctx.step("second", side_effect("second"))]

    async with MemoryDriver() as inner:
        faulty = FaultyDriver(
            inner, fail_at=1, mode="raise", error=lambda: WriteFailedError("full")
        )
        with pytest.raises(WriteFailedError):
            await run_workflow(WORKFLOW_ID, workflow, None, driver=faulty).result()
        assert await stored(inner) == ([], None)  # nothing after the failure written
        result = await run_workflow(WORKFLOW_ID, workflow, None, driver=inner).result()
    assert result.output == ["first", "second"]
