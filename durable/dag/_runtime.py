"""Runtime: DAG runs as durable workflows, on `durable`'s public API only.

A run is one workflow (``durable.dag.run``, id = the run id) whose input is the
frozen plan: package, name, metadata and the initial steps. Its body interprets the
graph inside one ``ctx.group``:

* each execution of a step is a branch ``step/<round>/<id>``: its attempts are
  recorded steps (``attempt-N``), its retry waits durable sleeps (``backoff-N``);
* operator actions arrive as messages, taken by a branch ``op/<k>``;
* the group records the order in which branches finished, and the body feeds them
  to a `Graph` in that order, so a replay rebuilds the same graph and starts the
  same steps; a read of the run folds the stored history the same way.

The workflow is ``live``: a worker keeps it in memory while any step runs and lets
it go (to be replayed once) only when everything waits, e.g. a failed run waiting
for `Runtime.retry_step`. Leases (``lease=``) fence every write of a run, so a
result from a worker that lost its lease is refused.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Self

import anyio

import durable

from ._context import StepContext, failure, step_result
from ._convert import from_plain, to_plain
from ._errors import (
    BAD_EMIT,
    BAD_INPUT,
    EXECUTOR_ERROR,
    MISSING_EXECUTOR,
    PROJECTION_ERROR,
    GraphError,
    NotConfiguredError,
    RunExistsError,
    StepError,
    StepStateError,
    UnknownPackageError,
    UnknownRunError,
    UnknownStepError,
)
from ._graph import Graph
from ._model import (
    DEFAULT_QUEUE_POLICY,
    CycleResult,
    ErrorInfo,
    QueuePolicy,
    RunHandle,
    RunInfo,
    RunStatus,
    StepInfo,
    StepResult,
    StepSpec,
    StepStatus,
)
from ._package import Executor, ExecutorFn, Package, RunBuilder, call
from ._queues import Admission

if TYPE_CHECKING:
    from types import TracebackType

    from ._artifacts import ArtifactStore
    from ._projections import Projection, ProjectionStore

RUN_WORKFLOW: Final = "durable.dag.run"
OP_MESSAGE: Final = "durable.dag.op"
_GROUP: Final = "steps"


def _branch(step_id: str, round: int) -> str:
    return f"step/{round}/{step_id}"


class Runtime:
    """Runs DAG packages on a `durable.Driver`.

    Register executors and packages, start runs, and either drive them in the
    calling task with `run_once` (tests) or serve them with `start_workers` /
    ``async with runtime``. Several processes may serve one shared store
    (``lease=``, `durable.PostgresDriver`).

    Args:
        driver: where runs are stored.
        artifacts: store for `StepContext.store_artifact` (e.g. `FileArtifactStore`).
        projections: store for `StepContext.projection` (`SQLiteProjectionStore`).
        worker_id: names this runtime in logs and step contexts.
        concurrency: runs in memory at once (steps within a run are limited by
            their queues, not by this).
        lease: seconds; share the store with other processes, fencing each run.
        queues: policy per queue name; others get *default_queue*.
        clock: time source (`durable.testing.TestClock` in tests).
    """

    def __init__(
        self,
        driver: durable.Driver,
        *,
        artifacts: ArtifactStore | None = None,
        projections: ProjectionStore | None = None,
        worker_id: str | None = None,
        concurrency: int = durable.DEFAULT_CONCURRENCY,
        lease: float | None = None,
        queues: Mapping[str, QueuePolicy] | None = None,
        default_queue: QueuePolicy = DEFAULT_QUEUE_POLICY,
        clock: durable.Clock | None = None,
    ) -> None:
        self.driver = driver
        self.clock = clock or durable.SystemClock()
        self.artifacts = artifacts
        self.projections = projections
        self._workflow = durable.Workflow(RUN_WORKFLOW, self._interpret, live=True)
        self._worker = durable.Worker(
            driver,
            [self._workflow],
            concurrency=concurrency,
            clock=self.clock,
            lease=lease,
        )
        self.worker_id = worker_id or self._worker.id
        self.admission = Admission(driver, self.clock, queues or {}, default_queue)
        self._executors: dict[str, Executor] = {}
        self._packages: dict[str, Package] = {}
        self._counts = dict.fromkeys(("executed", "succeeded", "failed", "retried"), 0)
        self._closed = False

    # --- registration -----------------------------------------------------------------

    def register_executor(
        self, kind: str | Executor, fn: ExecutorFn | None = None
    ) -> Executor:
        """Register ``fn(step)`` or ``fn(step, input)`` for steps of *kind*.

        Raises ``ValueError`` if *kind* already has an executor.
        """
        executor = kind if isinstance(kind, Executor) else Executor(kind, fn)  # type: ignore[arg-type]
        if executor.kind in self._executors:
            raise ValueError(
                f"an executor is already registered for kind {executor.kind!r}"
            )
        self._executors[executor.kind] = executor
        return executor

    def executor(self, kind: str) -> Callable[[ExecutorFn], ExecutorFn]:
        """Decorator form of `register_executor`."""

        def register(fn: ExecutorFn) -> ExecutorFn:
            self.register_executor(kind, fn)
            return fn

        return register

    def register_package(self, package: Package) -> None:
        """Make *package* startable by name (a later one of the same name replaces it)."""
        if not isinstance(package, Package):
            raise TypeError("register a Package made with durable.dag.package(...)")
        self._packages[package.name] = package

    @property
    def kinds(self) -> tuple[str, ...]:
        """The step kinds with an executor."""
        return tuple(sorted(self._executors))

    # --- starting -----------------------------------------------------------------------

    async def start_run(
        self,
        package: str,
        input: object = None,
        *,
        run_id: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> RunHandle:
        """Describe a run with the package's entrypoint and store it, due at once.

        Starting an id that already holds a run of this package returns its handle
        and stores nothing (safe to repeat).

        Raises:
            UnknownPackageError: no such package is registered.
            GraphError: no steps, a duplicate id, an unknown dependency or a cycle;
                nothing is stored.
            RunExistsError: *run_id* holds another package's run or another workflow.
            TypeError: *input* does not fit the entrypoint's annotation.
            durable.UnstorableValueError: an input cannot be stored.
        """
        found = self._packages.get(package)
        if found is None:
            raise UnknownPackageError(package, tuple(self._packages))
        run_id = run_id or f"{found.name}-{uuid.uuid4().hex}"
        if not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str, not {run_id!r}")
        existing = await self._existing(run_id)
        if existing is not None:
            if existing.get("package") != found.name:
                raise RunExistsError(
                    f"run id {run_id!r} holds a run of package "
                    f"{existing.get('package')!r}; choose another id"
                )
            return RunHandle(run_id, found.name, str(existing.get("name")))
        plain_input = to_plain(input)
        builder = RunBuilder(run_id, found)
        if name is not None:
            builder.name(name)
        for key, value in (metadata or {}).items():
            builder.metadata(key, value)
        typed_input = from_plain(plain_input, found.input_type, "the run input")
        await call(found.entrypoint, builder, typed_input)
        if not builder.steps:
            raise GraphError(f"package {found.name!r}: the entrypoint added no steps")
        Graph().add(builder.steps)  # raises GraphError; nothing is stored yet
        plan = {
            "package": found.name,
            "name": builder.run_name,
            "metadata": builder.run_metadata,
            "input": plain_input,
            "steps": [spec.to_plain() for spec in builder.steps],
        }
        try:
            await self._worker.start(RUN_WORKFLOW, run_id, plan)
        except durable.WorkflowNameMismatchError:
            raise RunExistsError(
                f"{run_id!r} is the id of a workflow that is not a DAG run; "
                "choose another run id"
            ) from None
        return RunHandle(run_id, found.name, builder.run_name)

    async def _existing(self, run_id: str) -> Mapping[str, object] | None:
        info = await self._stored(run_id)
        if info is None:
            return None
        if not _is_run(info):
            raise RunExistsError(
                f"{run_id!r} is the id of a workflow that is not a DAG run; "
                "choose another run id"
            )
        return info.input  # type: ignore[return-value]

    # --- driving runs -------------------------------------------------------------------

    async def run_once(self) -> CycleResult:
        """Drive every due run in this task until none can go on without waiting.

        Steps run one at a time in the order they became ready, so a test sees
        the same order every time. Retry waits are durable sleeps: call again
        once they have passed. Runs that a worker holds are skipped.
        """
        before = dict(self._counts)
        runs = 0
        self.admission.serial = anyio.Lock()
        try:
            for run_id in await self._due_runs():
                handle = durable.run_workflow(
                    run_id,
                    self._workflow,
                    None,
                    driver=self.driver,
                    mode="yield",
                    clock=self.clock,
                )
                with contextlib.suppress(durable.WorkflowBusyError):
                    await handle.result()
                    runs += 1
        finally:
            self.admission.serial = None
        return CycleResult(
            runs=runs, **{k: self._counts[k] - before[k] for k in self._counts}
        )

    async def _due_runs(self) -> list[str]:
        now = self.clock.now()
        due = []
        for state in (
            durable.WorkflowState.PENDING,
            durable.WorkflowState.RUNNING,
            durable.WorkflowState.SLEEPING,
        ):
            cursor = None
            while True:
                page = await self._worker.list_workflows(
                    state=state, name=RUN_WORKFLOW, cursor=cursor
                )
                for summary in page.workflows:
                    if state == durable.WorkflowState.SLEEPING:
                        info = await self._worker.handle(summary.workflow_id).get_info()
                        waiting = info.alarm_at is None or info.alarm_at > now
                        if waiting and not info.pending_messages:
                            continue
                    due.append(summary.workflow_id)
                cursor = page.cursor
                if cursor is None:
                    break
        return sorted(due)

    async def start_workers(self, *, handle_signals: bool = False) -> None:
        """Serve runs (each when due) until `shutdown` or, with *handle_signals*, SIGTERM."""
        await self._worker.run(handle_signals=handle_signals)

    def shutdown(self) -> None:
        """Make `start_workers` return once every run stored its progress."""
        self._worker.shutdown()

    async def __aenter__(self) -> Self:
        await self._worker.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._worker.__aexit__(exc_type, exc, tb)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the artifact and projection stores (the driver is the caller's)."""
        if self._closed:
            return
        self._closed = True
        if self.projections is not None:
            await self.projections.close()
        if self.artifacts is not None:
            await self.artifacts.close()

    # --- operator actions ---------------------------------------------------------------

    async def retry_step(self, run_id: str, step_id: str) -> None:
        """Run failed step *step_id* again; the dependents it cancelled revive.

        Raises:
            UnknownRunError, UnknownStepError: no such run or step.
            StepStateError: the step has not failed, or the run was cancelled.
        """
        run = await self.get_run(run_id)
        step = run.steps.get(step_id)
        if step is None:
            raise UnknownStepError(run_id, step_id)
        if run.status == RunStatus.CANCELLED:
            raise StepStateError(f"run {run_id!r} was cancelled; start a new run")
        if step.status != StepStatus.FAILED:
            raise StepStateError(
                f"step {step_id!r} of run {run_id!r} is {step.status.value}; only a "
                "failed step can be retried"
            )
        handle = self._worker.handle(run_id)
        await handle.message(OP_MESSAGE, {"op": "retry", "step": step_id})

    async def cancel_run(self, run_id: str) -> None:
        """Cancel the run: steps not finished are cancelled, running executors too.

        A run that succeeded stays succeeded.

        Raises:
            UnknownRunError: no such run.
        """
        await self._info(run_id)
        await self._worker.handle(run_id).cancel()

    # --- reads --------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunInfo:
        """The run with every step's status, read from the store.

        Raises:
            UnknownRunError: no such run.
        """
        info, graph, rounds = await self._read(run_id)
        plan: Any = info.input
        cancelled = info.state == durable.WorkflowState.CANCELLED
        steps = {}
        for step_id, node in graph.nodes.items():
            status = node.status
            branch = rounds.get(step_id)
            attempts = 0 if branch is None else _attempts(branch)
            if (
                status == StepStatus.READY
                and branch is not None
                and _backing_off(branch)
            ):
                status = StepStatus.RETRYING
            if cancelled and not status.is_final:
                status = StepStatus.CANCELLED
            outcome = node.outcome
            error = None
            if (
                outcome is not None
                and not outcome.get("ok")
                and node.status == StepStatus.FAILED
            ):
                error = ErrorInfo(*outcome["error"])  # type: ignore[misc]
            spec = node.spec
            steps[step_id] = StepInfo(
                id=step_id,
                kind=spec.kind,
                queue=spec.queue,
                status=status,
                depends_on=spec.depends_on,
                attempts=attempts,
                rounds=node.rounds,
                error=error,
                parent_id=spec.parent_id,
                dedup_key=spec.dedup_key,
                metadata=spec.metadata,
            )
        run_status = graph.run_status()
        if cancelled and run_status != RunStatus.SUCCEEDED:
            run_status = RunStatus.CANCELLED
        elif info.state == durable.WorkflowState.PENDING and not rounds:
            run_status = RunStatus.PENDING  # stored, not run yet
        return RunInfo(
            id=run_id,
            package=str(plan.get("package")),
            name=str(plan.get("name")),
            status=run_status,
            metadata=dict(plan.get("metadata") or {}),
            steps=steps,
            created_at=info.created_at,
            updated_at=info.updated_at,
        )

    async def get_result(self, run_id: str, step_id: str) -> StepResult | None:
        """The result of finished step *step_id* (None while it has not finished).

        Raises:
            UnknownRunError, UnknownStepError: no such run or step.
        """
        _, graph, _ = await self._read(run_id)
        node = graph.nodes.get(step_id)
        if node is None:
            raise UnknownStepError(run_id, step_id)
        if node.outcome is None or not node.status.is_final:
            return None
        return step_result(run_id, step_id, node.status, node.outcome)

    async def wait_run(self, run_id: str, *, poll: float = 0.05) -> RunInfo:
        """Wait until the run succeeded, failed or was cancelled; return it.

        Polls the run's workflow record every *poll* seconds (one read) and reads
        the whole run only when that record changed while no step was running. A
        failed run can still be revived with `retry_step`.
        """
        finished = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
        seen = None
        while True:
            info = await self._info(run_id)
            running = info.state == durable.WorkflowState.RUNNING
            if not running and info.updated_at != seen:
                seen = info.updated_at
                run = await self.get_run(run_id)
                if run.status in finished:
                    return run
            await anyio.sleep(poll)

    def projection(self, name: str) -> Projection:
        """Projection *name* for queries (and writes outside any step)."""
        if self.projections is None:
            raise NotConfiguredError(
                "the runtime has no projection store; pass "
                "projections=SQLiteProjectionStore(root) to Runtime"
            )
        return self.projections.projection(name)

    async def queue_tokens(self, queue: str) -> float | None:
        """Tokens in *queue*'s bucket now (None: the queue has no rate limit)."""
        return await self.admission.tokens(queue)

    async def _stored(self, run_id: str) -> durable.WorkflowInfo | None:
        try:
            return await self._worker.handle(run_id).get_info()
        except durable.UnknownWorkflowError:
            return None

    async def _info(self, run_id: str) -> durable.WorkflowInfo:
        """The workflow record of DAG run *run_id* (else `UnknownRunError`)."""
        info = await self._stored(run_id)
        if info is None or not _is_run(info):
            raise UnknownRunError(run_id)
        return info

    async def _read(
        self, run_id: str
    ) -> tuple[durable.WorkflowInfo, Graph, dict[str, durable.HistoryNode]]:
        """The run's record, and its graph folded from the stored history."""
        info = await self._info(run_id)
        history = await self._worker.handle(run_id).get_history()
        graph, rounds = _fold(info.input, history)  # type: ignore[arg-type]
        return info, graph, rounds

    # --- the run's workflow ---------------------------------------------------------------

    async def _interpret(self, ctx: durable.WorkflowContext, plan: Any) -> object:
        run_id = ctx.workflow_id
        graph = Graph()
        graph.add(StepSpec.from_plain(p) for p in plan["steps"])

        async def body(group: durable.BranchGroup) -> object:
            ops = 0
            group.start(f"op/{ops}", _wait_for_op)
            self._start_ready(group, run_id, graph)
            while graph.run_status() != RunStatus.SUCCEEDED:
                name, value = await group.next()
                if name.startswith("op/"):
                    ops += 1
                    group.start(f"op/{ops}", _wait_for_op)
                retried = _apply(graph, name, value)
                if retried is not None:
                    node = graph.nodes[retried]
                    group.start(
                        _branch(retried, node.rounds),
                        self._execution(run_id, graph, node.spec, node.rounds),
                    )
                self._start_ready(group, run_id, graph)
            return {"status": RunStatus.SUCCEEDED.value, "steps": len(graph.nodes)}

        return await ctx.group(_GROUP, body)

    def _start_ready(
        self, group: durable.BranchGroup, run_id: str, graph: Graph
    ) -> None:
        for step_id in graph.take_ready():
            spec = graph.nodes[step_id].spec
            group.start(_branch(step_id, 1), self._execution(run_id, graph, spec, 1))

    def _execution(
        self, run_id: str, graph: Graph, spec: StepSpec, round: int
    ) -> Callable[[durable.WorkflowContext], Awaitable[object]]:
        """One execution (round) of a step: attempts and durable retry waits."""

        async def execute(ctx: durable.WorkflowContext) -> object:
            policy = spec.retry
            attempt = 1
            while True:
                attempt_fn = functools.partial(
                    self._attempt, run_id, graph, spec, attempt, round
                )
                outcome: Any = await ctx.step(
                    f"attempt-{attempt}", attempt_fn, max_retries=0, timeout=None
                )
                retryable = not outcome["ok"] and outcome["error"][2]
                if not retryable or attempt >= policy.max_attempts:
                    return outcome
                await ctx.sleep(f"backoff-{attempt}", policy.delay(attempt))
                attempt += 1

        return execute

    async def _attempt(
        self, run_id: str, graph: Graph, spec: StepSpec, attempt: int, round: int
    ) -> dict[str, object]:
        """Run the executor once (after queue admission); never raises a step error."""
        executor = self._executors.get(spec.kind)
        if executor is None:
            self._counts["failed"] += 1
            return failure(
                MISSING_EXECUTOR,
                f"no executor is registered for kind {spec.kind!r} "
                f"(registered: {', '.join(self.kinds) or 'none'})",
                attempt=attempt,
            )
        async with self.admission.admit(spec.queue):
            self._counts["executed"] += 1
            step = StepContext(
                run_id,
                spec,
                attempt=attempt,
                round=round,
                now=self.clock.now(),
                worker_id=self.worker_id,
                graph=graph,
                artifacts=self.artifacts,
                projections=self.projections,
            )
            outcome = await self._call(executor, step, attempt)
        if not outcome["ok"]:
            step.release()  # its children are not created: free their ids
        if outcome["ok"]:
            self._counts["succeeded"] += 1
        elif outcome["error"][2] and attempt < spec.retry.max_attempts:  # type: ignore[index]
            self._counts["retried"] += 1
        else:
            self._counts["failed"] += 1
        return outcome

    async def _call(
        self, executor: Executor, step: StepContext, attempt: int
    ) -> dict[str, object]:
        try:
            try:
                args: tuple[object, ...] = (step,)
                if executor.typed:
                    try:
                        args = (step, step.input(executor.input_type))
                    except TypeError as exc:
                        raise StepError(BAD_INPUT, str(exc), retryable=False) from exc
                returned = await call(executor.fn, *args)
                outcome = step.outcome(returned)
            except StepError as exc:
                return failure(
                    exc.code,
                    exc.message,
                    attempt=attempt,
                    retryable=exc.retryable,
                    details=exc.details,
                )
            except GraphError as exc:  # emit() refused a child
                return failure(BAD_EMIT, str(exc), attempt=attempt)
            except Exception as exc:
                return failure(
                    EXECUTOR_ERROR, f"{type(exc).__name__}: {exc}", attempt=attempt
                )
            try:
                for session in step.sessions.values():
                    await session.commit()  # False: applied by an earlier execution
            except Exception as exc:
                return failure(
                    PROJECTION_ERROR,
                    f"{type(exc).__name__}: {exc}",
                    attempt=attempt,
                    retryable=True,
                )
            return outcome
        finally:
            with anyio.CancelScope(shield=True):
                for session in step.sessions.values():
                    await session.rollback()  # no-op after a commit


async def _wait_for_op(ctx: durable.WorkflowContext) -> object:
    return (await ctx.queue.next("op", names=[OP_MESSAGE]))[0]


def _is_run(info: durable.WorkflowInfo) -> bool:
    return info.name == RUN_WORKFLOW and isinstance(info.input, Mapping)


def _apply(graph: Graph, branch: str, value: Any) -> str | None:
    """Feed *graph* the branch that finished; return a step to run again, if any.

    The run's workflow and `_fold` (reads) both apply events through here, in the
    group's recorded order, so they see the same graph.
    """
    if not branch.startswith("op/"):
        graph.finish(branch.split("/", 2)[2], value)
        return None
    retry = isinstance(value, Mapping) and value.get("op") == "retry"
    if retry and graph.retry(value.get("step")):
        return str(value["step"])
    return None


def _fold(
    plan: Mapping[str, Any], history: tuple[durable.HistoryNode, ...]
) -> tuple[Graph, dict[str, durable.HistoryNode]]:
    """Rebuild a run's graph from its stored history, as its workflow did.

    Returns the graph and, per started step, the branch of its latest round.
    """
    graph = Graph()
    graph.add(StepSpec.from_plain(p) for p in plan["steps"])
    graph.take_ready()
    group = next((n for n in history if n.kind == "group" and n.name == _GROUP), None)
    latest: dict[str, durable.HistoryNode] = {}
    if group is None:
        return graph, latest
    branches = {n.name: n for n in group.children if n.kind == "branch"}
    for node in branches.values():
        if node.name.startswith("step/"):
            _, round_text, step_id = node.name.split("/", 2)
            if step_id not in latest or int(round_text) > int(
                latest[step_id].name.split("/", 2)[1]
            ):
                latest[step_id] = node
    for taken in group.children:
        if taken.kind != "next":
            continue
        branch = branches.get(taken.name)
        if branch is not None:
            _apply(graph, taken.name, branch.output)
            graph.take_ready()
    return graph, latest


def _attempts(branch: durable.HistoryNode) -> int:
    return sum(1 for n in branch.children if n.name.startswith("attempt-"))


def _backing_off(branch: durable.HistoryNode) -> bool:
    """Whether the round's last record is a failed attempt or a retry wait not over."""
    if not branch.children:
        return False
    last = branch.children[-1]
    if last.kind == "sleep":
        return last.status != "completed"
    output = last.output
    return isinstance(output, Mapping) and not output.get("ok")
