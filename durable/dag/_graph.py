"""A run's graph as pure state: dependencies, cascades, revival, the ready queue.

The run's workflow feeds it the recorded events (a step finished, an operator
retried one) in their recorded order, and a read of the run feeds it the same
events from the stored history, so both see the same statuses.

Every step keeps two counters over its dependencies: ``waiting`` (not satisfied
yet: a required one has not succeeded, an optional one has not finished) and
``blocked`` (required ones that failed or were cancelled). A step not started yet is
``cancelled`` while blocked, ``ready`` once nothing is waiting, else ``pending``.
A status change updates only the direct dependents' counters, so an event costs
O(edges it touches), never a rescan: a fan-in over 1,000 steps costs O(1) per
finished step. Retrying a failed step lowers the counters it raised, which revives
the dependents its failure cancelled, transitively.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import BAD_EMIT, GraphError
from ._model import Dependency, RunStatus, StepSpec, StepStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_UNSTARTED: Final = frozenset({StepStatus.PENDING, StepStatus.CANCELLED})


@attrs.define(slots=True, eq=False)
class Node:
    """One step and its dependency counters."""

    spec: StepSpec
    status: StepStatus = StepStatus.PENDING
    waiting: int = 0
    blocked: int = 0
    dependents: list[tuple[Node, bool]] = attrs.Factory(list)
    rounds: int = 0  # executions started
    outcome: Mapping[str, object] | None = None  # the last finished round's


def _satisfied(status: StepStatus, required: bool) -> bool:  # noqa: FBT001
    return status == StepStatus.SUCCEEDED if required else status.is_final


def _blocking(status: StepStatus, required: bool) -> bool:  # noqa: FBT001
    return required and status in (StepStatus.FAILED, StepStatus.CANCELLED)


class Graph:
    """The steps of one run; see the module docs."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.dedup: dict[str, str] = {}  # dedup key → the step that holds it
        self.reserved: dict[str, str] = {}  # emitted id → emitter, until it finishes
        self.counts: dict[StepStatus, int] = dict.fromkeys(StepStatus, 0)
        self._ready: deque[str] = deque()

    # --- building -------------------------------------------------------------------

    def add(
        self, specs: Iterable[StepSpec], *, parent: str | None = None
    ) -> dict[str, str]:
        """Add *specs* (all or none); return ``{dropped id: existing id}`` for dedup.

        A spec whose dedup key is already held is dropped, and dependencies on it
        point at the holder instead.

        Raises:
            GraphError: an empty or duplicate id, an empty kind, a dependency on an
                unknown step, or a cycle.
        """
        kept, aliases, keys = self._check(list(specs), parent)
        for spec in kept:
            self._insert(spec, aliases, parent)
        self.dedup.update(keys)
        return aliases

    def check_emit(
        self, spec: StepSpec, owner: str, emitted: Mapping[str, str | None]
    ) -> str | None:
        """Check one child *owner* emits after *emitted* (id → dedup key); reserve it.

        Returns the id of the step holding its dedup key (the child is then not
        created), else None. Costs O(its dependencies): a step emitting k
        children pays O(k) in all. The reservation keeps a concurrent step from
        emitting the same id; `release` drops it when *owner* fails.

        Raises:
            GraphError: as `add` would.
        """
        where = f"the steps step {owner!r} emitted"
        if not spec.id:
            raise GraphError(f"{where}: a step id must be a non-empty str")
        taken_by = self.reserved.get(spec.id, owner)
        if spec.id in self.nodes or spec.id in emitted or taken_by != owner:
            raise GraphError(
                f"{where}: step id {spec.id!r} is used twice; "
                "step ids must be unique within a run"
            )
        key = spec.dedup_key
        if key is not None:
            holder = self.dedup.get(key)
            if holder is None:
                holder = next((i for i, k in emitted.items() if k == key), None)
            if holder is not None:
                return holder
        for dep in spec.depends_on:
            if dep.step_id not in self.nodes and dep.step_id not in emitted:
                raise GraphError(
                    f"{where}: step {spec.id!r} depends on {dep.step_id!r}, which "
                    "is not a step of this run (nor a child emitted before it)"
                )
        self.reserved[spec.id] = owner
        return None

    def release(self, owner: str, ids: Iterable[str]) -> None:
        """Drop the reservations of *owner*'s children *ids*."""
        for step_id in ids:
            if self.reserved.get(step_id) == owner:
                del self.reserved[step_id]

    def _check(
        self, specs: list[StepSpec], parent: str | None
    ) -> tuple[list[StepSpec], dict[str, str], dict[str, str]]:
        where = "the run" if parent is None else f"the steps step {parent!r} emitted"
        aliases: dict[str, str] = {}
        keys: dict[str, str] = {}
        kept: list[StepSpec] = []
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec.id, str) or not spec.id:  # type: ignore[redundant-expr]
                raise GraphError(f"{where}: a step id must be a non-empty str")
            if not isinstance(spec.kind, str) or not spec.kind:  # type: ignore[redundant-expr]
                raise GraphError(f"{where}: step {spec.id!r} needs a kind")
            if spec.id in seen or spec.id in self.nodes:
                raise GraphError(
                    f"{where}: step id {spec.id!r} is used twice; "
                    "step ids must be unique within a run"
                )
            seen.add(spec.id)
            key = spec.dedup_key
            if key is not None:
                holder = self.dedup.get(key) or keys.get(key)
                if holder is not None:
                    aliases[spec.id] = holder
                    continue
                keys[key] = spec.id
            kept.append(spec)
        batch = {spec.id: spec for spec in kept}
        for spec in kept:
            for dep in spec.depends_on:
                target = aliases.get(dep.step_id, dep.step_id)
                if target not in batch and target not in self.nodes:
                    raise GraphError(
                        f"{where}: step {spec.id!r} depends on {dep.step_id!r}, "
                        "which is not a step of this run"
                    )
                if target == spec.id:
                    raise GraphError(f"{where}: step {spec.id!r} depends on itself")
        order = _topological(batch, aliases, where)
        return [batch[step_id] for step_id in order], aliases, keys

    def _insert(
        self, spec: StepSpec, aliases: Mapping[str, str], parent: str | None
    ) -> None:
        deps: dict[str, bool] = {}
        for dep in spec.depends_on:  # one edge per target; required wins
            target = aliases.get(dep.step_id, dep.step_id)
            deps[target] = deps.get(target, False) or dep.required
        if parent is not None and spec.parent_id is None:
            spec = attrs.evolve(spec, parent_id=parent)
        merged = tuple(
            Dependency(target, required) for target, required in deps.items()
        )
        if merged != spec.depends_on:
            spec = attrs.evolve(spec, depends_on=merged)
        node = Node(spec)
        self.nodes[spec.id] = node
        self.counts[StepStatus.PENDING] += 1
        for target, required in deps.items():
            before = self.nodes[target]
            before.dependents.append((node, required))
            node.waiting += not _satisfied(before.status, required)
            node.blocked += _blocking(before.status, required)
        status = _derived(node)
        if status is not None:
            self._set(node, status)

    # --- events ---------------------------------------------------------------------

    def take_ready(self) -> list[str]:
        """The steps that became ready since the last call, oldest first; now started."""
        taken = []
        while self._ready:
            step_id = self._ready.popleft()
            node = self.nodes[step_id]
            if node.status == StepStatus.READY and node.rounds == 0:
                node.rounds = 1
                taken.append(step_id)
        return taken

    def finish(self, step_id: str, outcome: Mapping[str, object]) -> None:
        """Apply a finished round of *step_id*: success adds its emitted steps."""
        node = self.nodes[step_id]
        if node.status != StepStatus.READY:
            return  # a duplicate report (cannot happen from one recorded order)
        status = StepStatus.SUCCEEDED if outcome.get("ok") else StepStatus.FAILED
        if status == StepStatus.SUCCEEDED:
            emits: Any = outcome.get("emits") or []
            try:
                specs = [StepSpec.from_plain(plain) for plain in emits]
                aliases = self.add(specs, parent=step_id)
            except (GraphError, KeyError, TypeError, ValueError) as exc:
                status = StepStatus.FAILED
                outcome = {
                    "ok": False,
                    "error": [BAD_EMIT, str(exc), False, None],
                    "attempt": outcome.get("attempt"),
                }
            else:
                if aliases:
                    outcome = {**outcome, "deduplicated": aliases}
        emitted: Any = outcome.get("emits") or []
        self.release(step_id, (plain["id"] for plain in emitted))
        node.outcome = outcome
        self._set(node, status)

    def retry(self, step_id: object) -> bool:
        """Start *step_id* again if it failed; its cancelled dependents revive."""
        node = self.nodes.get(step_id) if isinstance(step_id, str) else None
        if node is None or node.status != StepStatus.FAILED:
            return False
        node.rounds += 1
        self._set(node, StepStatus.READY)
        return True

    # --- status ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether any step is started or can still start."""
        return self.counts[StepStatus.READY] > 0

    def run_status(self) -> RunStatus:
        """Succeeded when every step did; failed once none can run and some did not."""
        if self.counts[StepStatus.SUCCEEDED] == len(self.nodes):
            return RunStatus.SUCCEEDED
        return RunStatus.RUNNING if self.active else RunStatus.FAILED

    # --- propagation ----------------------------------------------------------------

    def _set(self, node: Node, status: StepStatus) -> None:
        """Give *node* *status* and carry the change to its dependents, iteratively."""
        work = [(node, status)]
        while work:
            current, new = work.pop()
            old = current.status
            if old == new:
                continue
            self.counts[old] -= 1
            self.counts[new] += 1
            current.status = new
            if new == StepStatus.READY and current.rounds == 0:
                self._ready.append(current.spec.id)
            changed = []
            for dependent, required in current.dependents:
                dependent.waiting += _satisfied(old, required) - _satisfied(
                    new, required
                )
                dependent.blocked += _blocking(new, required) - _blocking(old, required)
                changed.append(dependent)
            for dependent in changed:
                target = _derived(dependent)
                if target is not None and target != dependent.status:
                    work.append((dependent, target))


def _derived(node: Node) -> StepStatus | None:
    """The status an unstarted node's counters give it (None: it has started)."""
    if node.status not in _UNSTARTED:
        return None
    if node.blocked:
        return StepStatus.CANCELLED
    return StepStatus.READY if node.waiting == 0 else StepStatus.PENDING


def _topological(
    batch: Mapping[str, StepSpec], aliases: Mapping[str, str], where: str
) -> list[str]:
    """*batch*'s ids, dependencies first (Kahn's algorithm, stable); a cycle raises.

    Only edges inside the batch count: steps already in the graph cannot depend on
    new ones, so they cannot close a cycle.
    """
    indegree = dict.fromkeys(batch, 0)
    edges: dict[str, list[str]] = {step_id: [] for step_id in batch}
    for spec in batch.values():
        for target in {aliases.get(d.step_id, d.step_id) for d in spec.depends_on}:
            if target in batch:
                edges[target].append(spec.id)
                indegree[spec.id] += 1
    queue = deque(step_id for step_id, n in indegree.items() if n == 0)
    order = []
    while queue:
        step_id = queue.popleft()
        order.append(step_id)
        for after in edges[step_id]:
            indegree[after] -= 1
            if indegree[after] == 0:
                queue.append(after)
    if len(order) < len(batch):
        loop = sorted(step_id for step_id, n in indegree.items() if n)
        raise GraphError(
            f"{where}: the dependencies of {', '.join(map(repr, loop[:5]))} "
            "form a cycle"
        )
    return order
