"""The DAG layer's records: step specs, policies, outcomes and what reads return.

Everything a run stores is plain data (see `_convert`); these classes are its typed
face. `StepSpec.to_plain` / `from_plain` and `Outcome` define the stored shapes.
"""

from __future__ import annotations

import enum
import json
import math
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from ._artifacts import ArtifactRef

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_QUEUE: Final = "default"


def _frozen_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


@attrs.frozen
class Dependency:
    """An edge: the step waits for *step_id*; *required* ones must succeed."""

    step_id: str
    required: bool = True


@attrs.frozen
class StepHandle:
    """A step added to a run; pass it to `require`/`optional` or ``depends_on``."""

    id: str

    def optional(self) -> Dependency:
        """A dependency on this step that only needs it finished, in any state."""
        return Dependency(self.id, required=False)


def require(*handles: StepHandle | str) -> list[Dependency]:
    """Required dependencies on *handles*: the step runs once all of them succeeded."""
    return [Dependency(h if isinstance(h, str) else h.id) for h in handles]


def optional(*handles: StepHandle | str) -> list[Dependency]:
    """Optional dependencies: the step waits for them to finish, whatever the outcome."""
    return [Dependency(h if isinstance(h, str) else h.id, False) for h in handles]


Backoff = Literal["fixed", "linear", "exponential"]


@attrs.frozen
class RetryPolicy:
    """How often a step is attempted and how long it waits between attempts.

    *max_attempts* counts the first attempt: the default 1 never retries. Only
    `Retryable` errors are retried. The wait before attempt n+1 is *initial* (fixed),
    *initial* x n (linear) or *initial* x *multiplier*^(n-1) (exponential), capped
    at *max_backoff*. The wait is a durable sleep: it survives restarts.
    """

    max_attempts: int = 1
    backoff: Backoff = "exponential"
    initial: float = 1.0
    multiplier: float = 2.0
    max_backoff: float | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts!r}")
        if self.backoff not in ("fixed", "linear", "exponential"):
            raise ValueError(f"unknown backoff {self.backoff!r}")
        for name in ("initial", "multiplier"):
            value = getattr(self, name)
            if (
                not (isinstance(value, int | float) and math.isfinite(value))
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt *attempt* (1-based)."""
        if self.backoff == "fixed":
            wait = self.initial
        elif self.backoff == "linear":
            wait = self.initial * attempt
        else:
            wait = self.initial * self.multiplier ** (attempt - 1)
        return wait if self.max_backoff is None else min(wait, self.max_backoff)

    def to_plain(self) -> list[object]:
        return [
            self.max_attempts,
            self.backoff,
            self.initial,
            self.multiplier,
            self.max_backoff,
        ]

    @classmethod
    def from_plain(cls, data: object) -> RetryPolicy:
        if not isinstance(data, list) or len(data) != 5:
            return cls()
        return cls(*data)


NO_RETRY: Final = RetryPolicy()


@attrs.frozen
class QueuePolicy:
    """Admission limits of one queue, shared by every run of a runtime.

    At most *max_workers* of its steps run at once. With *rate* (steps per second),
    a token bucket holding up to *burst* tokens (default: ``max(1, ceil(rate))``)
    admits a step per token; its state is stored, so it survives restarts.
    """

    max_workers: int = 1
    rate: float | None = None
    burst: int | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_workers, bool) or self.max_workers < 1:
            raise ValueError(
                f"max_workers must be an int >= 1, not {self.max_workers!r}"
            )
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be >= 1, not {self.burst!r}")

    @property
    def capacity(self) -> int:
        """Tokens the bucket holds when full."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))


DEFAULT_QUEUE_POLICY: Final = QueuePolicy()
"""What a queue the runtime has no policy for gets: one step at a time, no rate."""


@attrs.frozen
class StepSpec:
    """One step of a run's graph, as stored."""

    id: str
    kind: str
    input: object = None
    queue: str = DEFAULT_QUEUE
    depends_on: tuple[Dependency, ...] = ()
    retry: RetryPolicy = NO_RETRY
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    dedup_key: str | None = None
    parent_id: str | None = None

    def to_plain(self) -> dict[str, object]:
        plain: dict[str, object] = {"id": self.id, "kind": self.kind}
        if self.input is not None:
            plain["input"] = self.input
        if self.queue != DEFAULT_QUEUE:
            plain["queue"] = self.queue
        if self.depends_on:
            plain["deps"] = [[d.step_id, d.required] for d in self.depends_on]
        if self.retry != NO_RETRY:
            plain["retry"] = self.retry.to_plain()
        if self.metadata:
            plain["metadata"] = dict(self.metadata)
        if self.dedup_key is not None:
            plain["dedup"] = self.dedup_key
        if self.parent_id is not None:
            plain["parent"] = self.parent_id
        return plain

    @classmethod
    def from_plain(cls, data: Mapping[str, object]) -> StepSpec:
        deps: Any = data.get("deps") or []
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            input=data.get("input"),
            queue=str(data.get("queue", DEFAULT_QUEUE)),
            depends_on=tuple(Dependency(str(d[0]), bool(d[1])) for d in deps),
            retry=RetryPolicy.from_plain(data.get("retry")),
            metadata=data.get("metadata") or {},  # type: ignore[arg-type]
            dedup_key=data.get("dedup"),  # type: ignore[arg-type]
            parent_id=data.get("parent"),  # type: ignore[arg-type]
        )


class StepStatus(enum.StrEnum):
    """Where a step stands.

    ``pending``: waiting for dependencies; ``ready``: started (waiting for its
    queue or running); ``retrying``: a failed attempt waits for its next one;
    ``cancelled``: a required dependency failed or was cancelled, or the run was.
    """

    PENDING = "pending"
    READY = "ready"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED)


class RunStatus(enum.StrEnum):
    """A run's status, derived from its steps' (see docs/dag.md)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen
class ErrorInfo:
    """A stored step failure: a stable code, a message, whether it was retryable."""

    code: str
    message: str
    retryable: bool = False
    details: object = None


@attrs.frozen
class Artifact:
    """An artifact kept in a step's result (inline bytes or a stored reference)."""

    id: str
    name: str
    kind: str
    content_type: str
    body: bytes
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)

    @property
    def ref(self) -> ArtifactRef | None:
        """The stored artifact this one points to, if it is a reference."""
        if self.kind != REF_KIND:
            return None
        return ArtifactRef.from_json(json.loads(self.body))


REF_KIND: Final = "external-artifact-ref"


@attrs.frozen
class Record:
    """A keyed value a step produced for a collection (projection-style output)."""

    collection: str
    key: str
    value: object


@attrs.frozen
class StepResult:
    """What a finished step left: its data, records, artifacts and children.

    Only a succeeded step keeps data, records, artifacts and emitted steps; a
    failed one keeps its error.
    """

    run_id: str
    step_id: str
    status: StepStatus
    data: object = None
    records: tuple[Record, ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    emitted: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    attempts: int = 0


@attrs.frozen
class StepInfo:
    """One step of a run as a read sees it."""

    id: str
    kind: str
    queue: str
    status: StepStatus
    depends_on: tuple[Dependency, ...]
    attempts: int = 0
    rounds: int = 0  # executions started: 1 + operator retries
    error: ErrorInfo | None = None
    parent_id: str | None = None
    dedup_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)


@attrs.frozen
class RunInfo:
    """A run as a read sees it: identity, derived status and every step."""

    id: str
    package: str
    name: str
    status: RunStatus
    metadata: Mapping[str, str]
    steps: Mapping[str, StepInfo]
    created_at: float
    updated_at: float

    def count(self, status: StepStatus) -> int:
        """How many steps are in *status*."""
        return sum(1 for step in self.steps.values() if step.status == status)


@attrs.frozen
class RunHandle:
    """What `Runtime.start_run` returns."""

    id: str
    package: str
    name: str


@attrs.frozen
class CycleResult:
    """What one `Runtime.run_once` did."""

    runs: int = 0  # runs it drove
    executed: int = 0  # executor calls
    succeeded: int = 0
    failed: int = 0  # attempts that failed for good
    retried: int = 0  # attempts that failed and will be retried
