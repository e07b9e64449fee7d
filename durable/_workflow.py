"""Named workflows: what a stored workflow records so any later process can resume it.

A plain ``async def`` runs under `run_workflow` in the process that holds it. A
`Workflow` adds a stable *name*: the store records it with the workflow, and a
`Worker` that registered the name resumes the workflow after a restart.

Rule: the name, not the function's module path, identifies the code; renaming or
moving the function keeps stored workflows runnable as long as the name stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, TypeVar, cast, overload

import attrs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._engine._context import WorkflowContext
    from ._engine._run import WorkflowFn

InputT = TypeVar("InputT")
# what @workflow accepts: any input type, so `async def f(ctx, order: Order)` type-checks
AnyWorkflowFn: TypeAlias = "Callable[[WorkflowContext, InputT], Awaitable[object]]"


@attrs.frozen
class Workflow:
    """A workflow function with the name the store records; made by `workflow`.

    Calling it calls the function, so a `Workflow` works wherever a workflow
    function does (`run_workflow` records its name too).
    """

    name: str
    fn: WorkflowFn = attrs.field(repr=False)
    live: bool = False  # a worker keeps it in memory while any of its tasks runs

    def __call__(self, ctx: WorkflowContext, input: object) -> Awaitable[object]:
        return self.fn(ctx, input)


@overload
def workflow(fn: AnyWorkflowFn[InputT], /) -> Workflow: ...
@overload
def workflow(
    *, name: str | None = None, live: bool = False
) -> Callable[[AnyWorkflowFn[InputT]], Workflow]: ...
def workflow(
    fn: AnyWorkflowFn[InputT] | None = None,
    /,
    *,
    name: str | None = None,
    live: bool = False,
) -> Workflow | Callable[[AnyWorkflowFn[InputT]], Workflow]:
    """Name a workflow function (``@durable.workflow`` or ``@durable.workflow(name=...)``).

    The name defaults to the function's ``__name__``. Choose it once: stored
    workflows find their code by it.

    A `Worker` runs workflows in yield mode: each long wait stores the workflow
    and a later run replays its history. With ``live=True`` it runs it in live
    mode instead: a task's wait stays in memory while any other task of the
    workflow runs, and only once every task waits does the workflow leave memory.
    Use it for coordinators whose branches wait often (``ctx.group`` drivers):
    their history is replayed once per idle spell, not once per wait.

    Example:
        @durable.workflow(name="order")
        async def order(ctx: durable.WorkflowContext, order_id: str) -> str: ...
    """

    def wrap(fn: AnyWorkflowFn[InputT]) -> Workflow:
        if not callable(fn):
            raise TypeError("@workflow decorates an async function taking (ctx, input)")
        chosen = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(chosen, str) or not chosen:
            raise ValueError(f"a workflow name must be a non-empty str, not {chosen!r}")
        # the stored input is whatever the caller passed; the function declares it
        return Workflow(chosen, cast("WorkflowFn", fn), live)

    if fn is not None:
        return wrap(fn)
    return wrap


def workflow_name(fn: object) -> str | None:
    """The recorded name of *fn*: its `Workflow` name, else None."""
    return fn.name if isinstance(fn, Workflow) else None
