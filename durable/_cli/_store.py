"""Store mode: the commands run on a store that the command opens itself.

Rule: each call opens the store, does one thing through a `Worker` that is never
started (so nothing runs) and closes it, and answers with the JSON the HTTP API would
answer with. A LevelDB store works only while no worker holds it; a PostgreSQL store
works alongside running workers, which is also why ``result --wait`` waits there.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio

from .._engine._run import UNKNOWN_ERROR
from .._errors import DurableError, WorkflowCancelledError, WorkflowFailedError
from .._inspect import DEFAULT_PAGE_SIZE, WorkflowInfo
from .._json import JSON, history_json, info_json, page_json, result_json
from .._types import WorkflowResult, WorkflowState
from .._worker import Worker
from ._app import load_workflows
from ._errors import CommandError, ExitCode, code_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._http import Action
    from ._location import Location

T = TypeVar("T")


class Store:
    """Store mode: each call opens the store, does one thing and closes it.

    Every answer has the shape the HTTP API would answer with.
    """

    def __init__(self, location: Location, app: str | None) -> None:
        self.location = location
        self.app = app

    def call(
        self,
        op: Callable[[Worker], Awaitable[T]],
        *,
        create: bool = False,
        listen: bool = False,
    ) -> T:
        """Run *op* with a worker of the store (never started: nothing runs).

        The store must exist unless *create*; *listen* if *op* waits for wake-ups
        from other processes.
        """
        if not create:
            self.location.check_exists()
        workflows = () if self.app is None else load_workflows(self.app)

        async def run() -> T:
            async with self.location.open(listen=listen) as driver:
                return await op(Worker(driver, workflows))

        try:
            return anyio.run(run)
        except (DurableError, ValueError, TypeError) as exc:
            kind = type(exc).__name__
            if kind == "StoreLockedError":
                raise CommandError(
                    ExitCode.UNAVAILABLE,
                    f"{self.location} is held by another process (a "
                    "running worker?); send the command to its HTTP API with "
                    "--url URL (run the worker with --http HOST:PORT), or stop it",
                ) from None
            raise CommandError(code_of(exc), str(exc), kind) from None

    def list_workflows(
        self, state: str | None, name: str | None, limit: int | None, cursor: str | None
    ) -> JSON:
        """`page_json` of one page."""

        async def page(worker: Worker) -> JSON:
            found = await worker.list_workflows(
                state=state, name=name, limit=limit or DEFAULT_PAGE_SIZE, cursor=cursor
            )
            return page_json(found)

        return self.call(page)

    def read(self, workflow_id: str, what: Literal["", "/history"]) -> JSON:
        """The workflow's `info_json`, or with ``"/history"`` its `history_json`."""

        async def read(worker: Worker) -> JSON:
            handle = worker.handle(workflow_id)
            if what:
                return history_json(await handle.get_history())
            return info_json(await handle.get_info())

        return self.call(read)

    def start(self, name: str, workflow_id: str, input: object) -> JSON:
        """Store the workflow, due now, for the next worker; its `info_json`."""
        if self.app is None:
            raise CommandError(
                ExitCode.USAGE,
                "starting a workflow needs the worker's workflows: send it to the "
                "running worker with --url URL, or name them with --app MODULE:OBJECT",
            )

        async def start(worker: Worker) -> JSON:
            handle = await worker.start(name, workflow_id, input)
            return info_json(await handle.get_info())

        return self.call(start, create=True)

    def act(self, workflow_id: str, action: Action, body: Mapping[str, object]) -> JSON:
        """Message, cancel, recover, wake or replay; the workflow's `info_json`."""

        async def act(worker: Worker) -> JSON:
            handle = worker.handle(workflow_id)
            await handle.get_info()  # an unknown id: refused, as by the HTTP API
            step = body.get("step")
            if action == "messages":
                await handle.message(str(body["name"]), body["data"])
            elif action == "replay-from" and isinstance(step, str | tuple):
                await handle.replay_from(step)
            else:
                await getattr(handle, action)()
            return info_json(await handle.get_info())

        return self.call(act)

    def result(self, workflow_id: str, wait: float | None) -> JSON:
        """`result_json` if completed, else `info_json`; failed or cancelled raise.

        On a shared (PostgreSQL) store, first wait up to *wait* seconds for the
        workers that run it to finish the workflow.
        """
        if wait is not None and not self.location.shared:
            raise CommandError(
                ExitCode.USAGE,
                "--wait needs --url or a PostgreSQL store: nothing runs the workflows "
                "of a LevelDB store that the command opens itself",
            )

        async def outcome(worker: Worker) -> WorkflowInfo:
            handle = worker.handle(workflow_id)
            if wait:
                # final either way: the info says how
                failed = (WorkflowFailedError, WorkflowCancelledError)
                with anyio.move_on_after(wait), contextlib.suppress(*failed):
                    await handle.result()  # woken by the workers' commits
            return await handle.get_info()

        info = self.call(outcome, listen=bool(wait))
        if info.state == WorkflowState.FAILED:
            failed = WorkflowFailedError(workflow_id, info.error or UNKNOWN_ERROR)
            raise CommandError(ExitCode.FAILED, str(failed), "WorkflowFailedError")
        if info.state == WorkflowState.CANCELLED:
            cancelled = WorkflowCancelledError(workflow_id)
            raise CommandError(
                ExitCode.FAILED, str(cancelled), "WorkflowCancelledError"
            )
        if info.state == WorkflowState.COMPLETED:
            return result_json(WorkflowResult(info.state, info.output))
        return info_json(info)  # as the HTTP API's 202
