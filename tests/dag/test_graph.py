"""durable.dag's Graph against a reference model, and replay determinism of runs.

Random DAGs (each step depends on a random subset of earlier steps, each edge
required or optional, duplicates allowed) with a random set of failing steps are
driven through `Graph` the way the runtime drives it: take the ready steps, finish
one of the steps in flight (which one is drawn by hypothesis), take the ready steps
again. The final statuses must match a model that just walks the steps in order:

* a step is cancelled iff one of its required dependencies failed or was cancelled;
* otherwise it runs: it fails iff it is told to, else it succeeds.

Along the way a step is only ever started once its required dependencies succeeded
and its optional ones finished, and the status counters match the statuses.

The end-to-end test runs such graphs on a `Runtime`, then reads and drives the
stored run from a second runtime (a restarted process): the same statuses, nothing
executed again, and a retry replays the stored history before running anything.
Hypothesis and the anyio plugin do not mix, so it is a sync ``@given`` test driving
``anyio.run`` on both backends (as in tests/crash/test_fault_injection.py).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import attrs
from hypothesis import event, given, settings
from hypothesis import strategies as st

import durable
from durable import dag
from durable.dag._graph import Graph
from durable.dag._model import Dependency, RunStatus, StepSpec, StepStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

BACKENDS = ("asyncio", "trio")
MAX_STEPS = 12
BLOCKING = (StepStatus.FAILED, StepStatus.CANCELLED)

# --- graphs and the reference model ---------------------------------------------------


def step_id(index: int) -> str:
    return f"s{index:02d}"


@attrs.frozen
class Dag:
    """Steps ``s00``, ``s01``...; each depends only on earlier ones."""

    # per step, its edges: (an earlier step, required)
    edges: tuple[tuple[tuple[int, bool], ...], ...]
    order: tuple[int, ...]  # the order in which the steps are given to the graph

    @property
    def ids(self) -> list[str]:
        return [step_id(i) for i in range(len(self.edges))]

    def depends_on(self, index: int) -> tuple[Dependency, ...]:
        return tuple(
            Dependency(step_id(d), required) for d, required in self.edges[index]
        )

    def specs(self) -> list[StepSpec]:
        return [
            StepSpec(step_id(i), "work", depends_on=self.depends_on(i))
            for i in self.order
        ]


@st.composite
def dags(draw: st.DrawFn, max_steps: int = MAX_STEPS) -> Dag:
    n = draw(st.integers(1, max_steps), label="steps")
    edges = []
    for i in range(n):
        if i == 0:
            edges.append(())
            continue
        edge = st.tuples(st.integers(0, i - 1), st.booleans())  # (target, required)
        edges.append(tuple(draw(st.lists(edge, max_size=min(i + 1, 6)))))
    order = draw(st.permutations(range(n)), label="order")
    return Dag(tuple(edges), tuple(order))


@st.composite
def dags_and_failures(
    draw: st.DrawFn, max_steps: int = MAX_STEPS
) -> tuple[Dag, frozenset[str]]:
    graph = draw(dags(max_steps))
    failing = draw(st.sets(st.sampled_from(graph.ids)), label="failing")
    return graph, frozenset(failing)


def merged_edges(graph: Dag, index: int) -> dict[str, bool]:
    """Step *index*'s dependencies; edges to one step merge (required wins)."""
    edges: dict[str, bool] = {}
    for d, required in graph.edges[index]:
        edges[step_id(d)] = edges.get(step_id(d), False) or required
    return edges


def reference(graph: Dag, failing: Iterable[str]) -> dict[str, StepStatus]:
    """The final statuses, step by step in id order (dependencies come first)."""
    failing = set(failing)
    statuses: dict[str, StepStatus] = {}
    for i, sid in enumerate(graph.ids):
        required = merged_edges(graph, i)
        if any(req and statuses[d] in BLOCKING for d, req in required.items()):
            statuses[sid] = StepStatus.CANCELLED
        elif sid in failing:
            statuses[sid] = StepStatus.FAILED
        else:
            statuses[sid] = StepStatus.SUCCEEDED
    return statuses


def expected_run_status(statuses: Mapping[str, StepStatus]) -> RunStatus:
    if all(s == StepStatus.SUCCEEDED for s in statuses.values()):
        return RunStatus.SUCCEEDED
    return RunStatus.FAILED


# --- driving a Graph as the runtime does ----------------------------------------------


def outcome(ok: bool) -> dict[str, object]:
    if ok:
        return {"ok": True, "attempt": 1}
    return {
        "ok": False,
        "attempt": 1,
        "error": ["told_to_fail", "it fails", False, None],
    }


class Driver:
    """Feeds a Graph finished steps in a chosen order, checking it at every event."""

    def __init__(self, graph: Dag) -> None:
        self.graph = Graph()
        self.graph.add(graph.specs())
        self.in_flight: list[str] = []
        self.started: Counter[str] = Counter()  # executions started per step
        self.take()

    def take(self) -> None:
        for sid in self.graph.take_ready():
            self.check_may_start(sid)
            assert self.started[sid] == 0, f"{sid} was taken ready twice"
            self.start(sid)
        self.check_counters()

    def start(self, sid: str) -> None:
        self.started[sid] += 1
        self.in_flight.append(sid)

    def check_may_start(self, sid: str) -> None:
        node = self.graph.nodes[sid]
        assert node.status == StepStatus.READY
        for dep in node.spec.depends_on:
            status = self.graph.nodes[dep.step_id].status
            if dep.required:
                assert status == StepStatus.SUCCEEDED, (sid, dep, status)
            else:
                assert status.is_final, (sid, dep, status)

    def check_counters(self) -> None:
        counted = Counter(node.status for node in self.graph.nodes.values())
        assert {s: n for s, n in self.graph.counts.items() if n} == dict(counted)
        # every ready step was handed out: nothing ready is forgotten
        assert self.graph.counts[StepStatus.READY] == len(self.in_flight)
        if self.in_flight:
            assert self.graph.run_status() == RunStatus.RUNNING

    def drain(self, failing: frozenset[str], choose: Callable[[int], int]) -> None:
        """Finish the steps in flight, in *choose*'s order, until none is ready."""
        while self.in_flight:
            sid = self.in_flight.pop(choose(len(self.in_flight)))
            self.graph.finish(sid, outcome(sid not in failing))
            self.take()

    def retry(self, sid: str) -> None:
        """What the runtime does for `Runtime.retry_step`: a new round of *sid*."""
        assert self.graph.retry(sid)
        assert self.graph.nodes[sid].status == StepStatus.READY
        self.start(sid)
        self.take()

    @property
    def statuses(self) -> dict[str, StepStatus]:
        return {sid: node.status for sid, node in self.graph.nodes.items()}

    def check_final(self, expected: Mapping[str, StepStatus]) -> None:
        assert self.statuses == expected
        assert not self.graph.active
        assert self.graph.run_status() == expected_run_status(expected)
        # a step ran iff it is not cancelled, once per round
        ran = {
            sid for sid, status in expected.items() if status != StepStatus.CANCELLED
        }
        assert set(self.started) == ran
        for sid, node in self.graph.nodes.items():
            assert node.rounds == self.started[sid]


def chooser(data: st.DataObject, label: str) -> Callable[[int], int]:
    def choose(count: int) -> int:
        return 0 if count == 1 else data.draw(st.integers(0, count - 1), label=label)

    return choose


# --- Graph against the model ----------------------------------------------------------


class TestGraph:
    @given(case=dags_and_failures(), data=st.data())
    def test_final_statuses_match_the_reference_model(
        self, case: tuple[Dag, frozenset[str]], data: st.DataObject
    ) -> None:
        graph, failing = case
        driver = Driver(graph)
        driver.drain(failing, chooser(data, "finish"))
        driver.check_final(reference(graph, failing))

    @given(case=dags_and_failures(), data=st.data())
    def test_retrying_a_failed_step_equals_a_run_where_it_did_not_fail(
        self, case: tuple[Dag, frozenset[str]], data: st.DataObject
    ) -> None:
        graph, failing = case
        driver = Driver(graph)
        choose = chooser(data, "finish")
        driver.drain(failing, choose)
        driver.check_final(reference(graph, failing))
        for sid, status in driver.statuses.items():
            if status != StepStatus.FAILED:  # only a failed step can be retried
                assert not driver.graph.retry(sid)
        retries = data.draw(st.integers(1, 3), label="retries")
        for _ in range(retries):
            failed = sorted(
                s for s, v in driver.statuses.items() if v == StepStatus.FAILED
            )
            if not failed:
                break
            target = data.draw(st.sampled_from(failed), label="retry")
            failing -= {target}
            driver.retry(target)
            driver.drain(failing, choose)  # the retried round succeeds
            driver.check_final(reference(graph, failing))

    @given(case=dags_and_failures(), data=st.data())
    def test_final_statuses_do_not_depend_on_the_finishing_order(
        self, case: tuple[Dag, frozenset[str]], data: st.DataObject
    ) -> None:
        graph, failing = case
        first, second = Driver(graph), Driver(graph)
        first.drain(failing, chooser(data, "first order"))
        second.drain(failing, chooser(data, "second order"))
        assert first.statuses == second.statuses
        assert first.graph.run_status() == second.graph.run_status()
        assert first.started == second.started

    @given(graph=dags())
    def test_steps_are_inserted_dependencies_first_with_one_edge_per_target(
        self, graph: Dag
    ) -> None:
        built = Graph()
        built.add(graph.specs())  # in a random order
        position = {sid: k for k, sid in enumerate(built.nodes)}
        assert sorted(position) == graph.ids
        edges: dict[str, dict[str, bool]] = {sid: {} for sid in graph.ids}
        for sid, node in built.nodes.items():
            for dependent, required in node.dependents:
                assert sid not in edges[dependent.spec.id], "two edges to one step"
                edges[dependent.spec.id][sid] = required
        for i, sid in enumerate(graph.ids):
            assert edges[sid] == merged_edges(graph, i)
            assert all(position[target] < position[sid] for target in edges[sid])
        roots = [sid for i, sid in enumerate(graph.ids) if not graph.edges[i]]
        assert sorted(built.take_ready()) == roots

    def test_duplicate_edges_to_one_step_are_stored_as_one_edge(self) -> None:
        graph = Graph()
        graph.add(
            [
                StepSpec("a", "work"),
                StepSpec(
                    "b", "work", depends_on=(Dependency("a"), Dependency("a", False))
                ),
            ]
        )
        assert graph.nodes["b"].spec.depends_on == (Dependency("a"),)


# --- whole runs: replay determinism ---------------------------------------------------


class Work:
    """The executor of every step: fails for the ids in *failing*; counts calls."""

    def __init__(self, failing: Iterable[str]) -> None:
        self.failing = set(failing)
        self.calls: Counter[str] = Counter()

    def __call__(self, step: dag.StepContext) -> str:
        self.calls[step.step_id] += 1
        if step.step_id in self.failing:
            raise dag.Permanent("told_to_fail", f"{step.step_id} fails")
        return f"{step.step_id}-done"


def runtime_for(store: durable.Driver, graph: Dag, work: Work) -> dag.Runtime:
    def start(run: dag.RunBuilder, _: object) -> None:
        for i in graph.order:
            run.step(
                step_id(i), None, kind="work", depends_on=list(graph.depends_on(i))
            )

    runtime = dag.Runtime(store)
    runtime.register_executor("work", work)
    runtime.register_package(dag.package("graph").entrypoint(start).build())
    return runtime


def statuses_of(run: dag.RunInfo) -> dict[str, StepStatus]:
    return {sid: step.status for sid, step in run.steps.items()}


async def run_then_replay(
    graph: Dag, failing: frozenset[str], retry: str | None
) -> None:
    expected = reference(graph, failing)
    ran = Counter(s for s, v in expected.items() if v != StepStatus.CANCELLED)
    async with durable.MemoryDriver() as store:
        first_work = Work(failing)
        first = runtime_for(store, graph, first_work)
        await first.start_run("graph", run_id="r")
        cycle = await first.run_once()
        assert (cycle.runs, cycle.executed) == (1, sum(ran.values()))
        assert first_work.calls == ran
        run = await first.get_run("r")
        assert statuses_of(run) == expected
        assert run.status == expected_run_status(expected)

        # a restarted process: a new runtime, the same registrations, the same store
        work = Work(failing)
        second = runtime_for(store, graph, work)
        assert await second.get_run("r") == run
        cycle = await second.run_once()
        assert cycle.executed == 0
        assert not work.calls
        assert await second.get_run("r") == run
        if retry is None:
            return

        # retrying replays the stored history, then runs only the retried step and
        # the steps its failure had cancelled
        work.failing.discard(retry)
        await second.retry_step("r", retry)
        cycle = await second.run_once()
        revived = reference(graph, failing - {retry})
        now_ran = Counter(s for s, v in revived.items() if v != StepStatus.CANCELLED)
        assert work.calls == (now_ran - ran) + Counter([retry])
        assert cycle.executed == sum(work.calls.values())
        again = await second.get_run("r")
        assert statuses_of(again) == revived
        assert again.status == expected_run_status(revived)
        assert again.steps[retry].rounds == 2
        assert await first.get_run("r") == again  # both read the store


@settings(max_examples=15, deadline=None)
@given(case=dags_and_failures(max_steps=8), data=st.data())
def test_a_stored_run_reads_and_replays_the_same_from_a_new_runtime(
    case: tuple[Dag, frozenset[str]], data: st.DataObject
) -> None:
    graph, failing = case
    failed = sorted(
        s for s, v in reference(graph, failing).items() if v == StepStatus.FAILED
    )
    retry = data.draw(st.sampled_from(failed), label="retry") if failed else None
    event("a failed step is retried" if failed else "nothing failed")
    for backend in BACKENDS:
        anyio.run(run_then_replay, graph, failing, retry, backend=backend)
