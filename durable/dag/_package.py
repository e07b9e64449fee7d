"""Packages, run builders and executors: what applications define and register.

A *package* is what callers start: a stable name, a display name and an
*entrypoint* that only describes the run's initial graph on a `RunBuilder` (it does
no work; executors do). An *executor* does the work of one step *kind*.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._convert import to_plain
from ._model import (
    DEFAULT_QUEUE,
    NO_RETRY,
    Dependency,
    RetryPolicy,
    StepHandle,
    StepSpec,
)

if TYPE_CHECKING:
    from ._context import StepContext

Entrypoint = Callable[["RunBuilder", Any], "Awaitable[None] | None"]
ExecutorFn = Callable[..., "Awaitable[object] | object"]
Dependencies = Iterable["StepHandle | Dependency | str"]


def input_type(fn: Callable[..., object], position: int) -> Any:
    """The annotation of *fn*'s parameter at *position* (``Any`` when absent)."""
    parameters = list(inspect.signature(fn).parameters.values())
    if len(parameters) <= position:
        return None
    name = parameters[position].name
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation we cannot resolve: as stored
        return Any
    return hints.get(name, Any)


async def call(fn: Callable[..., object], *args: object) -> object:
    """Call a sync or async function and return its value."""
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


@attrs.frozen
class Package:
    """A startable workflow package; build one with `package`."""

    name: str
    entrypoint: Entrypoint = attrs.field(repr=False)
    display_name: str | None = None

    @property
    def input_type(self) -> Any:
        """The type the entrypoint's input is decoded into."""
        return input_type(self.entrypoint, 1)


class PackageBuilder:
    """``package(name).display_name(...).entrypoint(fn).build()``."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():  # type: ignore[redundant-expr]
            raise ValueError("a package name must be a non-empty str")
        self._name = name
        self._display_name: str | None = None
        self._entrypoint: Entrypoint | None = None

    def display_name(self, name: str) -> PackageBuilder:
        """The name runs get when the entrypoint names none."""
        self._display_name = name
        return self

    def entrypoint(self, fn: Entrypoint) -> PackageBuilder:
        """``fn(run, input)`` (sync or async) describes a new run's initial steps.

        *input* is decoded into the annotation of ``fn``'s second parameter.
        """
        if not callable(fn):
            raise TypeError("an entrypoint must be a function (run, input)")
        self._entrypoint = fn
        return self

    def build(self) -> Package:
        if self._entrypoint is None:
            raise ValueError(f"package {self._name!r} needs an entrypoint")
        return Package(self._name, self._entrypoint, self._display_name)


def package(name: str) -> PackageBuilder:
    """Start building package *name* (see `PackageBuilder`)."""
    return PackageBuilder(name)


def dependencies(depends_on: Dependencies | None) -> tuple[Dependency, ...]:
    """Normalise ``depends_on`` items (handles and ids are required dependencies)."""
    if depends_on is None:
        return ()
    if isinstance(depends_on, str | StepHandle | Dependency):
        depends_on = [depends_on]
    found = []
    for item in depends_on:
        if isinstance(item, Dependency):
            found.append(item)
        elif isinstance(item, StepHandle):
            found.append(Dependency(item.id))
        elif isinstance(item, str):
            found.append(Dependency(item))
        else:
            raise TypeError(
                f"depends_on takes step handles, ids and Dependency, not {item!r}"
            )
    return tuple(found)


def make_spec(
    step_id: str,
    input: object,
    *,
    kind: str,
    queue: str,
    depends_on: Dependencies | None,
    retry: RetryPolicy | None,
    metadata: Mapping[str, str] | None,
    dedup_key: str | None,
    parent_id: str | None = None,
) -> StepSpec:
    """A checked `StepSpec` from builder arguments."""
    if not isinstance(kind, str) or not kind:  # type: ignore[redundant-expr]
        raise ValueError(f"step {step_id!r} needs a kind (the executor that runs it)")
    if not isinstance(queue, str) or not queue:  # type: ignore[redundant-expr]
        raise ValueError(f"step {step_id!r}: queue must be a non-empty str")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"step {step_id!r}: retry must be a RetryPolicy")
    return StepSpec(
        id=step_id,
        kind=kind,
        input=to_plain(input),
        queue=queue,
        depends_on=dependencies(depends_on),
        retry=retry or NO_RETRY,
        metadata={str(k): str(v) for k, v in (metadata or {}).items()},
        dedup_key=dedup_key,
        parent_id=parent_id,
    )


class RunBuilder:
    """What an entrypoint gets: it names the run and adds its initial steps."""

    def __init__(self, run_id: str, package: Package) -> None:
        self.run_id = run_id
        self.package = package
        self._name: str | None = None
        self._metadata: dict[str, str] = {}
        self.steps: list[StepSpec] = []
        self._auto = 0

    def name(self, name: str) -> None:
        """Name the run (default: the package's display name, else its name)."""
        self._name = str(name)

    def metadata(self, key: str, value: str) -> None:
        """Attach a string to the run, kept with it."""
        self._metadata[str(key)] = str(value)

    @property
    def run_name(self) -> str:
        return self._name or self.package.display_name or self.package.name

    @property
    def run_metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def step(
        self,
        id: str | None,
        input: object = None,
        *,
        kind: str,
        queue: str = DEFAULT_QUEUE,
        depends_on: Dependencies | None = None,
        retry: RetryPolicy | None = None,
        metadata: Mapping[str, str] | None = None,
        dedup_key: str | None = None,
    ) -> StepHandle:
        """Add a step; returns its handle for later steps' ``depends_on``.

        *id* is scoped to this run (``None``: ``step-001``, ``step-002``...).
        Dependencies are checked when the run starts: an unknown id or a cycle
        makes `Runtime.start_run` raise `GraphError` and store nothing.
        """
        if id is None:
            self._auto += 1
            id = f"step-{self._auto:03d}"  # noqa: A001
        self.steps.append(
            make_spec(
                id,
                input,
                kind=kind,
                queue=queue,
                depends_on=depends_on,
                retry=retry,
                metadata=metadata,
                dedup_key=dedup_key,
            )
        )
        return StepHandle(id)


@attrs.frozen
class Executor:
    """Runs the steps of one *kind*: ``fn(step)`` or ``fn(step, input)``.

    With a second parameter, the step's input is decoded into its annotation (an
    attrs class, a dataclass, or any annotated type) before the call; a value that
    does not fit fails the step with code ``bad_input``. A value the function
    returns (not None) becomes the step's result unless it called
    ``step.result``.
    """

    kind: str
    fn: ExecutorFn = attrs.field(repr=False)
    typed: bool = attrs.field(init=False)
    input_type: Any = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:  # type: ignore[redundant-expr]
            raise ValueError("an executor kind must be a non-empty str")
        if not callable(self.fn):
            raise TypeError(f"executor {self.kind!r} needs a function (step[, input])")
        count = len(inspect.signature(self.fn).parameters)
        if count not in (1, 2):
            raise TypeError(
                f"executor {self.kind!r}: the function must take (step) or "
                f"(step, input), not {count} parameters"
            )
        object.__setattr__(self, "typed", count == 2)
        object.__setattr__(self, "input_type", input_type(self.fn, 1))

    async def execute(self, step: StepContext) -> object:
        if self.typed:
            return await call(self.fn, step, step.input(self.input_type))
        return await call(self.fn, step)
