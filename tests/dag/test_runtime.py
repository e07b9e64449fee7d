"""durable.dag: graph semantics, the reference's holes fixed, retries, cancel, queues."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import attrs
import pytest

import durable
from durable import dag

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio
LIMIT = 10.0


class Crash(BaseException):
    """Raised from an executor to stop the run dead, as a killed process would."""


@attrs.frozen
class Hello:
    message: str


@pytest.fixture
async def store() -> AsyncIterator[durable.MemoryDriver]:
    async with durable.MemoryDriver() as driver:
        yield driver


def graph_package(
    name: str, steps: list[tuple[str, str, list[dag.Dependency]]]
) -> dag.Package:
    """A package whose entrypoint adds ``(id, kind, depends_on)`` steps in order."""

    def start(run: dag.RunBuilder, _: object) -> None:
        for step_id, kind, deps in steps:
            run.step(step_id, step_id, kind=kind, depends_on=deps)

    return dag.package(name).entrypoint(start).build()


class Calls:
    """Records executor calls; executors made here succeed or fail on demand."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.count: Counter[str] = Counter()
        self.fail: set[str] = set()

    def ok(self, step: dag.StepContext) -> object:
        self.order.append(step.step_id)
        self.count[step.step_id] += 1
        if step.step_id in self.fail:
            raise dag.Permanent("told_to_fail", f"{step.step_id} fails")
        return f"{step.step_id}-done"


def runtime_with(
    driver: durable.Driver, calls: Calls, **options: object
) -> dag.Runtime:
    runtime = dag.Runtime(driver, **options)  # type: ignore[arg-type]
    runtime.register_executor("ok", calls.ok)
    return runtime


async def statuses(runtime: dag.Runtime, run_id: str) -> dict[str, str]:
    run = await runtime.get_run(run_id)
    return {step_id: step.status.value for step_id, step in run.steps.items()}


class TestHello:
    async def test_typed_executor_result_and_metadata(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)

        @runtime.executor("hello/echo")
        async def echo(step: dag.StepContext, hello: Hello) -> None:
            if not hello.message:
                raise dag.Permanent("empty_message", "message is required")
            step.result({"echoed": hello.message})

        def start(run: dag.RunBuilder, hello: Hello) -> None:
            run.metadata("source", "test")
            run.step("root", hello, kind="hello/echo")

        runtime.register_package(
            dag.package("hello").display_name("Hello").entrypoint(start).build()
        )
        handle = await runtime.start_run("hello", Hello("hi"), run_id="r1")
        assert handle == dag.RunHandle("r1", "hello", "Hello")
        assert (await runtime.get_run("r1")).status == dag.RunStatus.PENDING
        cycle = await runtime.run_once()
        assert (cycle.runs, cycle.executed, cycle.succeeded) == (1, 1, 1)
        run = await runtime.get_run("r1")
        assert run.status == dag.RunStatus.SUCCEEDED
        assert run.metadata == {"source": "test"}
        result = await runtime.get_result("r1", "root")
        assert result is not None
        assert result.data == {"echoed": "hi"}

        await runtime.start_run("hello", Hello(""), run_id="r2")
        await runtime.run_once()
        failed = await runtime.get_result("r2", "root")
        assert failed is not None
        assert failed.error == dag.ErrorInfo("empty_message", "message is required")
        assert (await runtime.get_run("r2")).status == dag.RunStatus.FAILED

    async def test_input_that_does_not_fit_the_annotation_fails_with_bad_input(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)

        @runtime.executor("hello/echo")
        def echo(step: dag.StepContext, hello: Hello) -> str:
            return hello.message

        def start(run: dag.RunBuilder, _: object) -> None:
            run.step("root", {"message": 5}, kind="hello/echo")

        runtime.register_package(dag.package("p").entrypoint(start).build())
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        result = await runtime.get_result("r", "root")
        assert result is not None
        assert result.error is not None
        assert result.error.code == "bad_input"
        assert "message" in result.error.message


class TestDependencies:
    async def test_steps_start_when_required_dependencies_succeeded(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        runtime = runtime_with(store, calls)
        runtime.register_package(
            graph_package(
                "p",
                [
                    ("c", "ok", dag.require("a", "b")),
                    ("a", "ok", []),
                    ("b", "ok", dag.require("a")),
                ],
            )
        )
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        assert calls.order == ["a", "b", "c"]
        assert (await runtime.get_run("r")).status == dag.RunStatus.SUCCEEDED

    async def test_a_failure_cancels_required_dependents_transitively(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        calls.fail.add("a")
        runtime = runtime_with(store, calls)
        runtime.register_package(
            graph_package(
                "p",
                [
                    ("a", "ok", []),
                    ("b", "ok", dag.require("a")),
                    ("c", "ok", dag.require("b")),
                    ("opt", "ok", dag.optional("a")),  # only needs a finished
                    ("free", "ok", []),
                ],
            )
        )
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        assert await statuses(runtime, "r") == {
            "a": "failed",
            "b": "cancelled",
            "c": "cancelled",
            "opt": "succeeded",
            "free": "succeeded",
        }
        assert "b" not in calls.count
        assert (await runtime.get_run("r")).status == dag.RunStatus.FAILED

    async def test_output_is_kept_only_when_the_executor_succeeds(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)

        @runtime.executor("half")
        def half(step: dag.StepContext) -> None:
            step.result("data")
            step.record("col", "k", 1)
            step.artifact("a.txt", b"x", content_type="text/plain")
            step.emit("child", kind="half")
            raise dag.Permanent("late", "failed after producing output")

        runtime.register_package(graph_package("p", [("root", "half", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        run = await runtime.get_run("r")
        assert set(run.steps) == {"root"}  # the emitted child was not created
        result = await runtime.get_result("r", "root")
        assert result is not None
        assert (result.data, result.records, result.artifacts) == (None, (), ())
        assert result.error is not None
        assert result.error.code == "late"

    async def test_records_artifacts_and_emitted_steps_of_a_success(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)

        @runtime.executor("parent")
        def parent(step: dag.StepContext) -> None:
            step.result({"n": 2})
            step.record("pages", "1", {"words": 3})
            artifact_id = step.artifact("p.txt", b"body", content_type="text/plain")
            assert artifact_id == "r:root:artifact:001"
            first = step.emit(None, 1, kind="child")
            step.emit(None, 2, kind="child", depends_on=[first])

        @runtime.executor("child")
        def child(step: dag.StepContext) -> object:
            return step.dependency_data("root")["n"] * step.input(int)

        runtime.register_package(graph_package("p", [("root", "parent", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        result = await runtime.get_result("r", "root")
        assert result is not None
        assert result.records == (dag.Record("pages", "1", {"words": 3}),)
        (artifact,) = result.artifacts
        assert (artifact.kind, artifact.body, artifact.ref) == ("text", b"body", None)
        assert result.emitted == ("root:emit:001", "root:emit:002")
        run = await runtime.get_run("r")
        assert run.steps["root:emit:002"].depends_on == (
            dag.Dependency("root:emit:001"),
        )
        assert run.steps["root:emit:001"].parent_id == "root"
        second = await runtime.get_result("r", "root:emit:002")
        assert second is not None
        assert second.data == 4


class TestReferenceHolesFixed:
    async def test_step_ids_are_scoped_to_their_run(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        runtime = runtime_with(store, calls)
        runtime.register_package(graph_package("p", [("root", "ok", [])]))
        await runtime.start_run("p", run_id="one")
        await runtime.start_run("p", run_id="two")
        assert (await runtime.run_once()).executed == 2
        for run_id in ("one", "two"):
            result = await runtime.get_result(run_id, "root")
            assert result is not None
            assert result.data == "root-done"

    @pytest.mark.parametrize(
        ("steps", "message"),
        [
            ([("a", "ok", dag.require("ghost"))], "'ghost', which is not a step"),
            (
                [("a", "ok", dag.require("b")), ("b", "ok", dag.require("a"))],
                "form a cycle",
            ),
            ([("a", "ok", dag.require("a"))], "depends on itself"),
            ([("a", "ok", []), ("a", "ok", [])], "used twice"),
            ([], "added no steps"),
        ],
    )
    async def test_bad_graphs_are_refused_at_start_and_nothing_is_stored(
        self,
        store: durable.MemoryDriver,
        steps: list[tuple[str, str, list[dag.Dependency]]],
        message: str,
    ) -> None:
        runtime = runtime_with(store, Calls())
        runtime.register_package(graph_package("p", steps))
        with pytest.raises(dag.GraphError, match=message):
            await runtime.start_run("p", run_id="r")
        with pytest.raises(dag.UnknownRunError):
            await runtime.get_run("r")
        assert await store.list_range(b"", b"\xff") == []

    async def test_dedup_keys_are_enforced_within_a_run(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        runtime = runtime_with(store, calls)

        @runtime.executor("emitter")
        def emitter(step: dag.StepContext) -> None:
            held = step.emit("again", kind="ok", dedup_key="k")
            assert held == dag.StepHandle("first")
            step.emit("after", kind="ok", depends_on=[held])

        def start(run: dag.RunBuilder, _: object) -> None:
            run.step("first", kind="ok", dedup_key="k")
            run.step("dup", kind="ok", dedup_key="k")  # dropped: "first" holds k
            run.step("uses-dup", kind="ok", depends_on=["dup"])
            run.step("emitter", kind="emitter", depends_on=["first"])

        runtime.register_package(dag.package("p").entrypoint(start).build())
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        run = await runtime.get_run("r")
        assert set(run.steps) == {"first", "uses-dup", "emitter", "after"}
        assert run.steps["uses-dup"].depends_on == (dag.Dependency("first"),)
        assert calls.count["first"] == 1
        assert run.status == dag.RunStatus.SUCCEEDED

    async def test_a_bad_emit_fails_the_emitting_step(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = runtime_with(store, Calls())

        @runtime.executor("emitter")
        def emitter(step: dag.StepContext) -> None:
            step.emit("child", kind="ok", depends_on=["nowhere"])

        runtime.register_package(graph_package("p", [("root", "emitter", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        result = await runtime.get_result("r", "root")
        assert result is not None
        assert result.error is not None
        assert result.error.code == "bad_emit"
        assert "nowhere" in result.error.message

    async def test_retry_step_revives_the_dependents_its_failure_cancelled(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        calls.fail.add("a")
        runtime = runtime_with(store, calls)
        runtime.register_package(
            graph_package(
                "p",
                [
                    ("a", "ok", []),
                    ("b", "ok", dag.require("a")),
                    ("c", "ok", dag.require("b")),
                    ("other", "ok", []),
                ],
            )
        )
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        assert (await runtime.get_run("r")).status == dag.RunStatus.FAILED
        with pytest.raises(dag.StepStateError, match="only a failed step"):
            await runtime.retry_step("r", "b")
        with pytest.raises(dag.UnknownStepError):
            await runtime.retry_step("r", "ghost")
        calls.fail.clear()
        await runtime.retry_step("r", "a")
        await runtime.run_once()
        run = await runtime.get_run("r")
        assert run.status == dag.RunStatus.SUCCEEDED
        assert run.steps["a"].rounds == 2
        assert calls.count == Counter({"a": 2, "b": 1, "c": 1, "other": 1})
        result = await runtime.get_result("r", "c")
        assert result is not None
        assert result.data == "c-done"

    async def test_start_run_is_idempotent_per_id_and_refuses_other_packages(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        runtime = runtime_with(store, calls)
        runtime.register_package(graph_package("p", [("root", "ok", [])]))
        runtime.register_package(graph_package("q", [("root", "ok", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.start_run("p", run_id="r")
        with pytest.raises(dag.RunExistsError):
            await runtime.start_run("q", run_id="r")
        with pytest.raises(dag.UnknownPackageError, match="'nope' is not registered"):
            await runtime.start_run("nope")
        await runtime.run_once()
        assert calls.count["root"] == 1


class TestRetries:
    async def test_retryable_errors_are_retried_with_backoff_and_codes(
        self, store: durable.MemoryDriver
    ) -> None:
        attempts: list[int] = []
        runtime = dag.Runtime(store)

        @runtime.executor("flaky")
        def flaky(step: dag.StepContext) -> str:
            attempts.append(step.attempt)
            if step.attempt < 3:
                raise dag.Retryable("busy", f"attempt {step.attempt}")
            return "finally"

        def start(run: dag.RunBuilder, _: object) -> None:
            policy = dag.RetryPolicy(max_attempts=3, backoff="fixed", initial=0.0)
            run.step("s", kind="flaky", retry=policy)

        runtime.register_package(dag.package("p").entrypoint(start).build())
        await runtime.start_run("p", run_id="r")
        cycle = await runtime.run_once()
        assert (cycle.executed, cycle.retried, cycle.succeeded) == (3, 2, 1)
        assert attempts == [1, 2, 3]
        run = await runtime.get_run("r")
        assert run.steps["s"].attempts == 3
        assert run.status == dag.RunStatus.SUCCEEDED

    @pytest.mark.parametrize(
        ("error", "code", "executions"),
        [
            (dag.Permanent("nope", "never works"), "nope", 1),
            (dag.Retryable("busy", "still busy"), "busy", 2),
            (KeyError("plain"), "executor_error", 1),  # not a StepError: no retry
        ],
    )
    async def test_what_is_retried_and_the_code_that_stays(
        self,
        store: durable.MemoryDriver,
        error: Exception,
        code: str,
        executions: int,
    ) -> None:
        calls: list[int] = []
        runtime = dag.Runtime(store)

        @runtime.executor("bad")
        def bad(step: dag.StepContext) -> None:
            calls.append(step.attempt)
            raise error

        def start(run: dag.RunBuilder, _: object) -> None:
            run.step(
                "s",
                kind="bad",
                retry=dag.RetryPolicy(max_attempts=2, backoff="linear", initial=0.0),
            )

        runtime.register_package(dag.package("p").entrypoint(start).build())
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        assert len(calls) == executions
        step = (await runtime.get_run("r")).steps["s"]
        assert step.status == dag.StepStatus.FAILED
        assert step.error is not None
        assert step.error.code == code

    async def test_a_step_without_an_executor_fails_with_missing_executor(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)
        runtime.register_package(graph_package("p", [("s", "unknown/kind", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        step = (await runtime.get_run("r")).steps["s"]
        assert step.error is not None
        assert step.error.code == "missing_executor"

    def test_backoff_shapes(self) -> None:
        fixed = dag.RetryPolicy(max_attempts=5, backoff="fixed", initial=2)
        linear = dag.RetryPolicy(max_attempts=5, backoff="linear", initial=2)
        exponential = dag.RetryPolicy(max_attempts=5, initial=2, max_backoff=10)
        assert [fixed.delay(n) for n in (1, 2, 3)] == [2, 2, 2]
        assert [linear.delay(n) for n in (1, 2, 3)] == [2, 4, 6]
        assert [exponential.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
        with pytest.raises(ValueError, match="max_attempts"):
            dag.RetryPolicy(max_attempts=0)


class TestCrashAndResume:
    async def test_a_crash_mid_fan_out_resumes_without_rerunning_finished_steps(
        self, store: durable.MemoryDriver
    ) -> None:
        counts: Counter[str] = Counter()
        crash = ["root:emit:011"]
        runtime = dag.Runtime(store)

        @runtime.executor("fan")
        def fan(step: dag.StepContext) -> None:
            counts[step.step_id] += 1
            children = [step.emit(None, n, kind="leaf") for n in range(20)]
            step.emit("sum", kind="sum", depends_on=children)

        @runtime.executor("leaf")
        def leaf(step: dag.StepContext) -> int:
            counts[step.step_id] += 1
            if step.step_id in crash:
                raise Crash
            return step.input(int)

        @runtime.executor("sum")
        def total(step: dag.StepContext) -> int:
            counts[step.step_id] += 1
            run_steps = [f"root:emit:{n:03d}" for n in range(1, 21)]
            return sum(step.dependency_data(s, int) for s in run_steps)

        runtime.register_package(graph_package("p", [("root", "fan", [])]))
        await runtime.start_run("p", run_id="r")
        with pytest.raises(BaseException) as crashed:  # noqa: PT011 - checked below
            await runtime.run_once()
        assert (
            crashed.group_contains(Crash)
            if isinstance(crashed.value, BaseExceptionGroup)
            else isinstance(crashed.value, Crash)
        )
        assert counts["root:emit:011"] == 1
        assert "sum" not in counts
        crash.clear()
        # a new runtime on the same store: as after a restart
        restarted = dag.Runtime(store)
        for kind, fn in (("fan", fan), ("leaf", leaf), ("sum", total)):
            restarted.register_executor(kind, fn)
        restarted.register_package(graph_package("p", [("root", "fan", [])]))
        await restarted.run_once()
        run = await restarted.get_run("r")
        assert run.status == dag.RunStatus.SUCCEEDED
        result = await restarted.get_result("r", "sum")
        assert result is not None
        assert result.data == sum(range(20))
        assert counts["root"] == 1
        assert counts["root:emit:011"] == 2  # the one that was running
        assert all(
            n == 1 for step_id, n in counts.items() if step_id != "root:emit:011"
        )


class TestWorkersAndQueues:
    async def test_queue_limits_hold_across_runs_under_load(
        self, store: durable.MemoryDriver
    ) -> None:
        running: Counter[str] = Counter()
        peak: Counter[str] = Counter()
        runtime = dag.Runtime(store, queues={"narrow": dag.QueuePolicy(max_workers=3)})

        async def work(step: dag.StepContext) -> None:
            running[step.queue] += 1
            peak[step.queue] = max(peak[step.queue], running[step.queue])
            await anyio.sleep(0.005)
            running[step.queue] -= 1

        runtime.register_executor("work", work)

        def start(run: dag.RunBuilder, _: object) -> None:
            for n in range(12):
                run.step(f"n{n}", kind="work", queue="narrow")
                run.step(f"d{n}", kind="work", queue="unlisted")  # default: 1 worker

        runtime.register_package(dag.package("p").entrypoint(start).build())
        with anyio.fail_after(LIMIT):
            async with runtime:
                ids = [
                    (await runtime.start_run("p", run_id=f"r{i}")).id for i in range(4)
                ]
                for run_id in ids:
                    run = await runtime.wait_run(run_id)
                    assert run.status == dag.RunStatus.SUCCEEDED
        assert peak["narrow"] == 3
        assert peak["unlisted"] == 1

    async def test_token_bucket_limits_the_rate_and_survives_a_restart(
        self, store: durable.MemoryDriver
    ) -> None:
        from durable.testing import TestClock

        policy = dag.QueuePolicy(max_workers=5, rate=10.0, burst=2)
        started: list[float] = []

        def make_runtime(clock: durable.Clock) -> dag.Runtime:
            runtime = dag.Runtime(store, queues={"q": policy}, clock=clock)

            def tick(step: dag.StepContext) -> None:
                started.append(clock.now())

            runtime.register_executor("tick", tick)

            def start(run: dag.RunBuilder, _: object) -> None:
                for n in range(6):
                    run.step(f"s{n}", kind="tick", queue="q")

            runtime.register_package(dag.package("p").entrypoint(start).build())
            return runtime

        async with TestClock(autojump=True) as clock:
            runtime = make_runtime(clock)
            await runtime.start_run("p", run_id="r")
            await runtime.run_once()
            # 2 at once from the full bucket, then one per 1/rate seconds
            gaps = [round(b - a, 3) for a, b in itertools.pairwise(started)]
            assert gaps == [0.0, 0.1, 0.1, 0.1, 0.1]
            assert await runtime.queue_tokens("q") == pytest.approx(0.0, abs=1e-6)
            again = make_runtime(clock)  # the bucket is in the store, not in memory
            assert await again.queue_tokens("q") == pytest.approx(0.0, abs=1e-6)
            await again.start_run("p", run_id="r2")
            del started[:]
            await again.run_once()
            gaps = [round(b - a, 3) for a, b in itertools.pairwise(started)]
            assert gaps == [0.1] * 5  # the emptied bucket was not refilled by a restart

    async def test_cancel_run_cancels_running_executors_and_pending_steps(
        self, store: durable.MemoryDriver
    ) -> None:
        entered = anyio.Event()
        cancelled: list[str] = []
        runtime = dag.Runtime(store)

        async def hang(step: dag.StepContext) -> None:
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(step.step_id)
                raise

        runtime.register_executor("hang", hang)
        runtime.register_package(
            graph_package(
                "p", [("slow", "hang", []), ("after", "hang", dag.require("slow"))]
            )
        )
        with anyio.fail_after(LIMIT):
            async with runtime:
                await runtime.start_run("p", run_id="r")
                await entered.wait()
                await runtime.cancel_run("r")
                run = await runtime.wait_run("r")
        assert run.status == dag.RunStatus.CANCELLED
        assert {s: i.status.value for s, i in run.steps.items()} == {
            "slow": "cancelled",
            "after": "cancelled",
        }
        assert cancelled == ["slow"]
        with pytest.raises(dag.StepStateError, match="cancelled"):
            await runtime.retry_step("r", "slow")

    async def test_a_failed_run_waits_for_retry_step_out_of_memory(
        self, store: durable.MemoryDriver
    ) -> None:
        calls = Calls()
        calls.fail.add("a")
        runtime = runtime_with(store, calls)
        runtime.register_package(
            graph_package("p", [("a", "ok", []), ("b", "ok", dag.require("a"))])
        )
        with anyio.fail_after(LIMIT):
            async with runtime:
                await runtime.start_run("p", run_id="r")
                assert (await runtime.wait_run("r")).status == dag.RunStatus.FAILED
                calls.fail.clear()
                await runtime.retry_step("r", "a")
                while (await runtime.get_run("r")).status != dag.RunStatus.SUCCEEDED:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        assert calls.count == Counter({"a": 2, "b": 1})


class TestErrors:
    async def test_reads_of_unknown_runs_and_steps(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = runtime_with(store, Calls())
        with pytest.raises(dag.UnknownRunError, match="no DAG run 'nope'"):
            await runtime.get_run("nope")
        runtime.register_package(graph_package("p", [("a", "ok", [])]))
        await runtime.start_run("p", run_id="r")
        with pytest.raises(dag.UnknownStepError):
            await runtime.get_result("r", "zzz")
        assert await runtime.get_result("r", "a") is None  # not finished yet

    async def test_a_non_dag_workflow_id_is_not_a_run(
        self, store: durable.MemoryDriver
    ) -> None:
        async def plain(ctx: durable.WorkflowContext, _: object) -> int:
            return 1

        await durable.run_workflow("taken", plain, None, driver=store).result()
        runtime = runtime_with(store, Calls())
        runtime.register_package(graph_package("p", [("a", "ok", [])]))
        with pytest.raises(dag.RunExistsError, match="not a DAG run"):
            await runtime.start_run("p", run_id="taken")
        with pytest.raises(dag.UnknownRunError):
            await runtime.get_run("taken")

    async def test_stores_that_are_not_configured_are_named(
        self, store: durable.MemoryDriver
    ) -> None:
        runtime = dag.Runtime(store)

        @runtime.executor("x")
        async def uses(step: dag.StepContext) -> None:
            await step.store_artifact("a", b"")

        runtime.register_package(graph_package("p", [("a", "x", [])]))
        await runtime.start_run("p", run_id="r")
        await runtime.run_once()
        step = (await runtime.get_run("r")).steps["a"]
        assert step.error is not None
        assert "no artifact store" in step.error.message
        with pytest.raises(dag.NotConfiguredError):
            runtime.projection("x")


def _unused(fn: Callable[..., object]) -> None:  # keeps the import block honest
    del fn


class TestProjectionsAcrossACrash:
    async def test_writes_committed_before_a_crash_are_not_applied_again(
        self, store: durable.MemoryDriver, tmp_path: Path
    ) -> None:
        """The process dies after the projection commit, before the step is recorded."""
        executions: list[int] = []

        class DyingSession:
            """A real session whose first commit dies right after committing."""

            def __init__(self, inner: dag.ProjectionSession) -> None:
                self.inner = inner
                self.execute = inner.execute
                self.query = inner.query
                self.rollback = inner.rollback

            async def commit(self) -> bool:
                applied = await self.inner.commit()
                if projections.die:
                    projections.die = False
                    raise Crash
                return applied

        class DyingStore(dag.SQLiteProjectionStore):
            die = True

            def session(self, name: str, key: str) -> dag.ProjectionSession:
                return DyingSession(super().session(name, key))  # type: ignore[return-value]

        projections = DyingStore(tmp_path)

        def make_runtime() -> dag.Runtime:
            runtime = dag.Runtime(store, projections=projections)

            @runtime.executor("index")
            async def index(step: dag.StepContext) -> None:
                executions.append(step.attempt)
                db = step.projection("pages")
                await db.execute("CREATE TABLE IF NOT EXISTS pages(n INTEGER)")
                await db.execute("INSERT INTO pages VALUES (?)", (len(executions),))

            runtime.register_package(graph_package("p", [("s", "index", [])]))
            return runtime

        runtime = make_runtime()
        await runtime.start_run("p", run_id="r")
        with pytest.raises(BaseException) as died:  # noqa: PT011 - checked
            await runtime.run_once()
        assert "Crash" in repr(died.value)  # bare or in a group
        restarted = make_runtime()
        await restarted.run_once()
        assert executions == [1, 1]  # the step ran again: its record was lost
        assert (await restarted.get_run("r")).status == dag.RunStatus.SUCCEEDED
        rows = await restarted.projection("pages").query("SELECT n FROM pages")
        assert rows == [{"n": 1}]  # the first execution's write, applied once
        await restarted.close()
