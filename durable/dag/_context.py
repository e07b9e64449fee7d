"""StepContext: what an executor sees of its step, and where its output gathers.

Result data, records, inline artifacts and emitted steps gather here and are kept
only if the executor returns without raising: the runtime turns them into the
attempt's recorded outcome. Stored artifacts and projection writes reach their
stores during the call; projection writes commit only after a success, exactly
once per step (see `_projections`).
"""

from __future__ import annotations

import json
import mimetypes
from typing import TYPE_CHECKING, Any

from ._convert import from_plain, to_plain
from ._errors import NotConfiguredError, UnknownStepError
from ._model import (
    DEFAULT_QUEUE,
    REF_KIND,
    Artifact,
    ErrorInfo,
    Record,
    RetryPolicy,
    StepHandle,
    StepResult,
    StepSpec,
    StepStatus,
)
from ._package import Dependencies, make_spec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._artifacts import ArtifactRef, ArtifactStore
    from ._graph import Graph
    from ._projections import Projection, ProjectionSession, ProjectionStore


class StepContext:
    """One attempt of one step, as its executor sees it."""

    def __init__(
        self,
        run_id: str,
        spec: StepSpec,
        *,
        attempt: int,
        round: int,
        now: float,
        worker_id: str,
        graph: Graph,
        artifacts: ArtifactStore | None,
        projections: ProjectionStore | None,
    ) -> None:
        self.run_id = run_id
        self.spec = spec
        self.attempt = attempt  # 1-based, within this round
        self.round = round  # 1 + operator retries
        self.now = now  # epoch seconds when the attempt was admitted
        self.worker_id = worker_id
        self._graph = graph
        self._artifact_store = artifacts
        self._projection_store = projections
        self._data: object = None
        self._has_result = False
        self._records: list[list[object]] = []
        self._artifacts: list[dict[str, object]] = []
        self._emits: list[StepSpec] = []
        self._emitted: dict[str, str | None] = {}  # id → dedup key, for checks
        self.sessions: dict[str, ProjectionSession] = {}

    # --- identity and input -------------------------------------------------------

    @property
    def step_id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def queue(self) -> str:
        return self.spec.queue

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.spec.metadata

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt and re-execution of this step: pass it on."""
        return json.dumps([self.run_id, self.spec.id])

    @property
    def raw_input(self) -> object:
        """The input as stored (plain data)."""
        return self.spec.input

    def input(self, tp: Any = Any) -> Any:
        """The input, decoded into *tp* (an attrs class, a dataclass, any type)."""
        return from_plain(self.spec.input, tp, f"the input of step {self.spec.id!r}")

    # --- dependencies ---------------------------------------------------------------

    def dependency_result(self, step_id: str) -> StepResult | None:
        """The result of step *step_id* of this run (None if it has not finished)."""
        node = self._graph.nodes.get(step_id)
        if node is None or node.outcome is None or not node.status.is_final:
            return None
        return step_result(self.run_id, step_id, node.status, node.outcome)

    def dependency_data(self, step_id: str, tp: Any = Any) -> Any:
        """The result data of succeeded step *step_id*, decoded into *tp*.

        Raises:
            UnknownStepError: the run has no succeeded step *step_id*.
        """
        result = self.dependency_result(step_id)
        if result is None or result.status != StepStatus.SUCCEEDED:
            raise UnknownStepError(self.run_id, step_id)
        return from_plain(result.data, tp, f"the result of step {step_id!r}")

    # --- output -----------------------------------------------------------------------

    def result(self, value: object) -> None:
        """Set the step's result data (the last call wins)."""
        self._data = to_plain(value)
        self._has_result = True

    def record(self, collection: str, key: str, value: object) -> None:
        """Add a keyed value for *collection* to the step's result."""
        collection, key = str(collection).strip(), str(key).strip()
        if not collection or not key:
            raise ValueError("a record needs a non-empty collection and key")
        self._records.append([collection, key, to_plain(value)])

    def artifact(
        self,
        name: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        id: str | None = None,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Keep *body* in the step's result as an artifact; returns its id.

        For large bodies use `store_artifact`: a result lives in the run's history.
        """
        artifact = self._describe(name, content_type, id, kind, metadata)
        artifact["body"] = bytes(body)
        self._artifacts.append(artifact)
        return str(artifact["id"])

    async def store_artifact(
        self,
        name: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        id: str | None = None,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactRef:
        """Store *body* in the runtime's artifact store; keep a reference in the result.

        The bytes are stored at once (a failed step leaves them; a retry
        overwrites them under the same id); the reference is kept only on success.

        Raises:
            NotConfiguredError: the runtime has no artifact store.
        """
        store = self._artifact_store
        if store is None:
            raise NotConfiguredError(
                f"step {self.spec.id!r} stores an artifact, but the runtime has no "
                "artifact store; pass artifacts=FileArtifactStore(root) to Runtime"
            )
        described = self._describe(name, content_type, id, kind, metadata)
        ref = await store.put(
            str(described["id"]),
            bytes(body),
            name=str(described["name"]),
            kind=str(described["kind"]),
            content_type=str(described["content_type"]),
            metadata=dict(metadata or {}),
        )
        self._artifacts.append(
            {
                "id": ref.id,
                "name": f"{name}.ref.json",
                "kind": REF_KIND,
                "content_type": "application/json",
                "metadata": dict(metadata or {}),
                "body": json.dumps(ref.to_json()).encode(),
            }
        )
        return ref

    def _describe(
        self,
        name: str,
        content_type: str,
        artifact_id: str | None,
        kind: str | None,
        metadata: Mapping[str, str] | None,
    ) -> dict[str, object]:
        if not isinstance(name, str) or not name:  # type: ignore[redundant-expr]
            raise ValueError("an artifact needs a non-empty name")
        number = len(self._artifacts) + 1
        if artifact_id is None:
            artifact_id = f"{self.run_id}:{self.spec.id}:artifact:{number:03d}"
        if kind is None:
            major = content_type.split("/", 1)[0] if "/" in content_type else ""
            extension = (mimetypes.guess_extension(content_type) or "").lstrip(".")
            suffix = name.rsplit(".", 1)[1] if "." in name else ""
            kind = major or suffix or extension or "artifact"
        return {
            "id": artifact_id,
            "name": name,
            "kind": kind,
            "content_type": content_type or "application/octet-stream",
            "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
        }

    def projection(self, name: str) -> Projection:
        """Projection *name*, inside this step: its writes commit once, on success.

        Raises:
            NotConfiguredError: the runtime has no projection store.
        """
        store = self._projection_store
        if store is None:
            raise NotConfiguredError(
                f"step {self.spec.id!r} uses projection {name!r}, but the runtime has "
                "no projection store; pass projections=SQLiteProjectionStore(root)"
            )
        session = self.sessions.get(name)
        if session is None:
            # not the round: writes a failed round committed are not applied again
            key = json.dumps([self.run_id, self.spec.id])
            session = self.sessions[name] = store.session(name, key)
        return session

    def emit(
        self,
        id: str | None,
        input: object = None,
        *,
        kind: str,
        queue: str | None = None,
        depends_on: Dependencies | None = None,
        retry: RetryPolicy | None = None,
        metadata: Mapping[str, str] | None = None,
        dedup_key: str | None = None,
    ) -> StepHandle:
        """Add a child step, created only if this step succeeds.

        *id* defaults to ``<this step>:emit:NNN``; *queue* to this step's queue. A
        child may depend on any step of the run and on children emitted before it.
        A child whose *dedup_key* the run already holds is not created: the
        returned handle points at the holder.

        Raises:
            GraphError: a duplicate id or a dependency on an unknown step.
        """
        if id is None:
            id = f"{self.spec.id}:emit:{len(self._emits) + 1:03d}"  # noqa: A001
        spec = make_spec(
            id,
            input,
            kind=kind,
            queue=queue or self.spec.queue or DEFAULT_QUEUE,
            depends_on=depends_on,
            retry=retry,
            metadata=metadata,
            dedup_key=dedup_key,
            parent_id=self.spec.id,
        )
        holder = self._graph.check_emit(spec, self.spec.id, self._emitted)
        if holder is not None:  # its dedup key is held: point at the holder
            return StepHandle(holder)
        self._emits.append(spec)
        self._emitted[spec.id] = spec.dedup_key
        return StepHandle(spec.id)

    def release(self) -> None:
        """Give up the ids this attempt emitted (it failed: they are not created)."""
        self._graph.release(self.spec.id, self._emitted)

    def outcome(self, returned: object) -> dict[str, object]:
        """The success outcome to record (see `step_result` for its shape)."""
        data = self._data if self._has_result else to_plain(returned)
        outcome: dict[str, object] = {"ok": True, "attempt": self.attempt}
        if data is not None:
            outcome["data"] = data
        if self._records:
            outcome["records"] = self._records
        if self._artifacts:
            outcome["artifacts"] = self._artifacts
        if self._emits:
            outcome["emits"] = [spec.to_plain() for spec in self._emits]
        return outcome


def failure(
    code: str,
    message: str,
    *,
    attempt: int,
    retryable: bool = False,
    details: object = None,
) -> dict[str, object]:
    """A failed attempt's recorded outcome."""
    return {
        "ok": False,
        "error": [code, message, retryable, to_plain(details)],
        "attempt": attempt,
    }


def step_result(
    run_id: str, step_id: str, status: StepStatus, outcome: Mapping[str, Any]
) -> StepResult:
    """The `StepResult` a recorded outcome stands for."""
    attempt = int(outcome.get("attempt") or 0)
    if not outcome.get("ok"):
        code, message, retryable, details = outcome["error"]
        return StepResult(
            run_id,
            step_id,
            status,
            error=ErrorInfo(code, message, retryable, details),
            attempts=attempt,
        )
    return StepResult(
        run_id,
        step_id,
        status,
        data=outcome.get("data"),
        records=tuple(Record(*item) for item in outcome.get("records") or ()),
        artifacts=tuple(
            Artifact(
                id=a["id"],
                name=a["name"],
                kind=a["kind"],
                content_type=a["content_type"],
                body=a["body"],
                metadata=a.get("metadata") or {},
            )
            for a in outcome.get("artifacts") or ()
        ),
        emitted=tuple(
            s["id"]
            for s in outcome.get("emits") or ()
            if s["id"] not in (outcome.get("deduplicated") or {})
        ),
        attempts=attempt,
    )
