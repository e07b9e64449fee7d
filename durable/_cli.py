"""The ``durable`` command: run a worker; list, read and steer workflows.

Every command but ``worker`` runs in one of two modes. With ``--url`` (or
``$DURABLE_URL``) it calls a running server's HTTP API (`durable.server`) through the
standard library's urllib; otherwise it opens the LevelDB store itself (``--store``,
``$DURABLE_STORE`` or ``./.durable``), which works only while no worker holds it. Both
modes print the same: text for people and, with ``--json``, exactly the bodies the
HTTP API answers with (the shapes of `durable._json`).

Rule: a failure prints one ``durable: error: ...`` line to stderr that says what to do,
and exits with an `ExitCode` (the table in docs/cli.md); only a bug shows a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import importlib
import inspect
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NoReturn, TypeAlias, TypeVar

import anyio

from ._drivers import LevelDBDriver
from ._drivers._leveldb import default_store_path
from ._engine._run import UNKNOWN_ERROR
from ._errors import DurableError, WorkflowCancelledError, WorkflowFailedError
from ._inspect import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ._json import JSON, history_json, info_json, page_json, result_json
from ._types import WorkflowResult, WorkflowState
from ._version import __version__
from ._worker import DEFAULT_CONCURRENCY, Worker
from ._workflow import Workflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

    from ._replay_from import StepPath

T = TypeVar("T")

URL_ENV_VAR: Final = "DURABLE_URL"
TOKEN_ENV_VAR: Final = "DURABLE_TOKEN"  # noqa: S105 (the variable's name, not a token)
HTTP_TIMEOUT: Final = 30.0  # seconds a request may take, on top of the server's wait
MAX_SERVER_WAIT: Final = 60.0  # seconds the server holds one GET .../result?wait=

log = logging.getLogger("durable.cli")


class ExitCode(enum.IntEnum):
    """What the exit status of ``durable`` means (docs/cli.md has the table)."""

    OK = 0
    FAILED = 1  # result: the workflow failed or was cancelled
    USAGE = 2  # bad arguments, invalid JSON, an app that cannot be imported
    NOT_FOUND = 3  # no such workflow id, no workflow registered under the name
    REFUSED = 4  # finished, cancelled, busy, id taken by another name, replay refused
    UNAVAILABLE = 5  # store missing or locked, server unreachable, token refused
    NOT_FINISHED = 6  # result: the workflow has not finished (yet)
    INTERRUPTED = 130  # Ctrl-C


class _CommandError(Exception):
    """Ends the command: one error line and *code*; *kind* names the core error."""

    def __init__(self, code: ExitCode, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


# An error's class name (raised in store mode, or the HTTP API's error "type") → code.
_CODES: Final[Mapping[str, ExitCode]] = {
    "UnknownWorkflowError": ExitCode.NOT_FOUND,
    "UnregisteredWorkflowError": ExitCode.NOT_FOUND,
    "WorkflowFinishedError": ExitCode.REFUSED,
    "WorkflowCancelledError": ExitCode.REFUSED,
    "WorkflowBusyError": ExitCode.REFUSED,
    "WorkflowNameMismatchError": ExitCode.REFUSED,
    "ReplayTargetError": ExitCode.REFUSED,
    "WorkflowFailedError": ExitCode.FAILED,
    "StoreLockedError": ExitCode.UNAVAILABLE,
    "CorruptRecordError": ExitCode.UNAVAILABLE,
    "StorageError": ExitCode.UNAVAILABLE,
    "UnauthorizedError": ExitCode.UNAVAILABLE,
    "NotFoundError": ExitCode.UNAVAILABLE,  # no such route: --url is not the API root
    "UnstorableValueError": ExitCode.USAGE,
    "BadRequestError": ExitCode.USAGE,
    "PayloadTooLargeError": ExitCode.USAGE,
    "ValueError": ExitCode.USAGE,
    "TypeError": ExitCode.USAGE,
}
# An HTTP error of a type not in _CODES → code by status (5xx: UNAVAILABLE).
_STATUS_CODES: Final[Mapping[int, ExitCode]] = {
    400: ExitCode.USAGE,
    401: ExitCode.UNAVAILABLE,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.REFUSED,
    413: ExitCode.USAGE,
    422: ExitCode.USAGE,
}


def _code_of(exc: BaseException) -> ExitCode:
    for cls in type(exc).__mro__:  # e.g. a StorageError subclass → StorageError
        code = _CODES.get(cls.__name__)
        if code is not None:
            return code
    return ExitCode.FAILED


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (anyio wraps)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# --- main and the parser ------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``durable`` command with *argv* (default: ``sys.argv[1:]``).

    Returns the exit status: see `ExitCode` and docs/cli.md.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command: Callable[[argparse.Namespace], int] = args.command
        return command(args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or ExitCode.OK
        return ExitCode.USAGE
    except _CommandError as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return ExitCode.INTERRUPTED


def _error(message: str) -> None:
    print(f"durable: error: {message}", file=sys.stderr)


_APP_HELP: Final = (
    "where your workflows are: a @durable.workflow, an async function, or a list or "
    "dict of them, e.g. myapp.workflows:all (the current directory is on sys.path)"
)
_STORE_HELP: Final = "the LevelDB store (default: $DURABLE_STORE, else ./.durable)"
_JSON_HELP: Final = 'a JSON value, e.g. \'{"sku": "A1"}\' or \'"text"\'; - reads stdin'


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``durable``: one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog="durable",
        description="Run durable workflows, and list, read and steer them.",
        epilog="Every command but `worker` works on a server (--url) or on a store "
        "no worker holds (--store). See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    worker = commands.add_parser(
        "worker",
        help="run the workflows of an app on a store until SIGTERM/SIGINT",
        description="Run a worker: resume what is due on the store, then run each "
        "workflow as it falls due. SIGTERM or SIGINT stops it gracefully (exit 0); "
        "a second signal stops running steps at once.",
    )
    worker.add_argument("app", metavar="MODULE:OBJECT", help=_APP_HELP)
    worker.add_argument("--store", metavar="PATH", help=_STORE_HELP)
    worker.add_argument(
        "--concurrency",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"workflows run at once (default: {DEFAULT_CONCURRENCY})",
    )
    worker.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_host_port,
        help="also serve the HTTP API there (port 0: a free port, logged); needs "
        "durable[server]",
    )
    worker.add_argument(
        "--token", help=f"the bearer token the HTTP API requires (${TOKEN_ENV_VAR})"
    )
    worker.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="what the worker logs to stderr (default: info)",
    )
    worker.set_defaults(command=_worker)

    client = argparse.ArgumentParser(add_help=False)
    where = client.add_argument_group("where")
    where.add_argument(
        "--url",
        help=f"a running server (default: ${URL_ENV_VAR}); without it the command "
        "opens the store itself",
    )
    where.add_argument(
        "--token", help=f"the bearer token for --url (default: ${TOKEN_ENV_VAR})"
    )
    where.add_argument("--store", metavar="PATH", help=_STORE_HELP)
    client.add_argument(
        "--json", action="store_true", help="print the HTTP API's JSON, not text"
    )

    def add(
        name: str, summary: str, run: _Command, *, takes_id: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[client], help=summary, description=summary
        )
        sub.set_defaults(command=lambda args: _client(args, run), action=name)
        if takes_id:
            sub.add_argument("workflow_id", metavar="ID", help="the workflow's id")
        return sub

    listing = add("list", "list workflows, by state then id", _list, takes_id=False)
    states = [str(state) for state in WorkflowState]
    listing.add_argument("--state", choices=states, help="only workflows in STATE")
    listing.add_argument("--name", help="only workflows running this workflow name")
    listing.add_argument(
        "--limit",
        metavar="K",
        type=_positive_int,
        help=f"at most K rows (1 to {MAX_PAGE_SIZE}; default: {DEFAULT_PAGE_SIZE})",
    )
    listing.add_argument("--cursor", help="the next page, as the last one printed")

    add("show", "show a workflow's state, input, output and error", _show)
    add("history", "show a workflow's recorded history as a tree", _history)

    start = add(
        "start",
        "start a workflow (an existing ID is left as it is)",
        _start,
        takes_id=False,
    )
    start.add_argument("name", metavar="NAME", help="the registered workflow name")
    start.add_argument("workflow_id", metavar="ID", help="the new workflow's id")
    start.add_argument("input", metavar="JSON", help=_JSON_HELP)
    start.add_argument(
        "--app",
        metavar="MODULE:OBJECT",
        help="store mode: the worker's workflows, to check NAME; the next worker "
        "on the store runs the workflow",
    )

    message = add("message", "send a message to a workflow", _act)
    message.set_defaults(action="messages")
    message.add_argument("name", metavar="NAME", help="the message's name")
    message.add_argument("data", metavar="JSON", help=_JSON_HELP)

    add("cancel", "cancel a workflow for good", _act)
    add("recover", "run the failed steps of a failed workflow again", _act)
    add("wake", "make a workflow due now (a parked one is tried again)", _act)

    replay = add(
        "replay-from",
        "delete the history from a step on, so the workflow runs again from there",
        _act,
    )
    replay.add_argument(
        "step",
        metavar="STEP",
        nargs="+",
        help="the step's name, or its path: the enclosing entries and branches, "
        "then the name (a whole number is a loop iteration)",
    )

    result = add("result", "print the output of a completed workflow", _result)
    result.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        help="with --url: wait up to SECONDS for the workflow to finish",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, not {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            "expected HOST:PORT such as 127.0.0.1:8000 (port 0 picks a free port), "
            f"not {text!r}"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def _parse_json(text: str, what: str) -> object:
    """*text* as strict JSON (no NaN or Infinity); ``-`` reads stdin."""
    if text == "-":
        text = sys.stdin.read()

    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _CommandError(
            ExitCode.USAGE,
            f"{what} is not valid JSON ({exc}): {text!r}; pass a JSON value such as "
            '\'{"sku": "A1"}\', 42 or \'"text"\' (quoted for your shell)',
        ) from None


# --- the worker ---------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    workflows = load_workflows(args.app)
    if args.token is not None and args.http is None:
        raise _CommandError(
            ExitCode.USAGE, "--token protects the HTTP API: add --http HOST:PORT"
        )
    serve = None if args.http is None else _server_serve()
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV_VAR)
    path = Path(args.store) if args.store is not None else default_store_path()
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def run() -> None:
        async with LevelDBDriver(path) as driver:
            worker = Worker(driver, workflows, concurrency=args.concurrency)
            names = ", ".join(sorted(worker.workflows))
            log.info("worker on the store %s runs %s", path, names)
            if serve is None:
                await worker.run(handle_signals=True)
            else:
                host, port = args.http
                await serve(
                    worker,
                    host=host,
                    port=port,
                    token=token or None,
                    handle_signals=True,
                )

    try:
        anyio.run(run)
    except Exception as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, DurableError):
            hint = ""
            if type(leaf).__name__ == "StoreLockedError":
                hint = "; a store has one worker at a time: is one running already?"
            raise _CommandError(_code_of(leaf), f"{leaf}{hint}") from None
        if isinstance(leaf, OSError):  # e.g. the HTTP address is in use
            message = f"cannot serve on {args.http[0]}:{args.http[1]}: {leaf}"
            raise _CommandError(ExitCode.UNAVAILABLE, message) from None
        raise
    log.info("worker stopped; the next worker on %s resumes its workflows", path)
    return ExitCode.OK


def _server_serve() -> Callable[..., Awaitable[None]]:
    try:
        from .server import serve  # an optional extra: imported when needed
    except ImportError as exc:
        raise _CommandError(
            ExitCode.UNAVAILABLE,
            f"--http needs the HTTP server ({exc}); install it with "
            "pip install 'durable[server]'",
        ) from None
    return serve


def load_workflows(spec: str) -> list[Workflow]:
    """Import the workflows ``MODULE:OBJECT`` names (the current directory first).

    OBJECT is a `Workflow`, an async function, or a list (any iterable) or dict of
    them; a dict's keys name the plain functions it holds.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise _CommandError(
            ExitCode.USAGE,
            f"expected MODULE:OBJECT such as myapp.workflows:order, not {spec!r}",
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:  # as uvicorn does: the app is in the current directory
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise _CommandError(
            ExitCode.USAGE,
            f"cannot import {module_name!r} ({exc}); run durable from the directory "
            "that holds it, or add that directory to PYTHONPATH",
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _CommandError(
                ExitCode.USAGE, f"{module_name!r} has no attribute {attribute!r}"
            ) from None
    items: list[object] = []
    if isinstance(obj, Workflow) or callable(obj):
        items = [obj]
    elif isinstance(obj, dict):
        items = [_named(key, value, spec) for key, value in obj.items()]
    elif isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        items = list(obj)
    workflows: dict[str, Workflow] = {}
    for item in items:
        if isinstance(item, Workflow):
            workflow = item
        elif inspect.iscoroutinefunction(item):
            workflow = Workflow(item.__name__, item)
        else:
            raise _CommandError(
                ExitCode.USAGE,
                f"{spec} holds {item!r}, which is not a @durable.workflow or an "
                "async function",
            )
        if workflows.setdefault(workflow.name, workflow).fn is not workflow.fn:
            raise _CommandError(
                ExitCode.USAGE,
                f"{spec} holds two workflows named {workflow.name!r}; rename one "
                "with @durable.workflow(name=...)",
            )
    if not workflows:
        raise _CommandError(ExitCode.USAGE, f"{spec} holds no workflows")
    return list(workflows.values())


def _named(key: object, value: object, spec: str) -> object:
    """A dict item of an app: the value, named by the key."""
    if not isinstance(key, str) or not key:
        raise _CommandError(ExitCode.USAGE, f"{spec}: {key!r} is not a workflow name")
    if isinstance(value, Workflow) and value.name != key:
        raise _CommandError(
            ExitCode.USAGE,
            f"{spec}: the key {key!r} holds the workflow named {value.name!r}; use "
            "its name as the key",
        )
    if not inspect.iscoroutinefunction(value):
        return value  # a Workflow, or refused by the caller
    return Workflow(key, value)


# --- the two modes ------------------------------------------------------------------

# What changes a workflow: the last part of the HTTP API's POST /workflows/{id}/...
_Action = Literal["messages", "cancel", "recover", "wake", "replay-from"]


class _Store:
    """Store mode: each call opens the LevelDB store, does one thing and closes it.

    Every answer has the shape the HTTP API would answer with.
    """

    def __init__(self, path: Path, app: str | None) -> None:
        self.path = path
        self.app = app

    def call(self, op: Callable[[Worker], Awaitable[T]], *, create: bool = False) -> T:
        """Run *op* with a worker of the store (never started: nothing runs)."""
        if not create and not (self.path / "CURRENT").is_file():  # LevelDB's own
            raise _CommandError(
                ExitCode.UNAVAILABLE,
                f"no durable store at {self.path}; pass --store PATH or set "
                "$DURABLE_STORE, or reach a running worker with --url URL",
            )
        workflows = () if self.app is None else load_workflows(self.app)

        async def run() -> T:
            async with LevelDBDriver(self.path) as driver:
                return await op(Worker(driver, workflows))

        try:
            return anyio.run(run)
        except (DurableError, ValueError, TypeError) as exc:
            kind = type(exc).__name__
            if kind == "StoreLockedError":
                raise _CommandError(
                    ExitCode.UNAVAILABLE,
                    f"the store at {self.path} is held by another process (a "
                    "running worker?); send the command to its HTTP API with "
                    "--url URL (run the worker with --http HOST:PORT), or stop it",
                ) from None
            raise _CommandError(_code_of(exc), str(exc), kind) from None

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
            raise _CommandError(
                ExitCode.USAGE,
                "starting a workflow needs the worker's workflows: send it to the "
                "running worker with --url URL, or name them with --app MODULE:OBJECT",
            )

        async def start(worker: Worker) -> JSON:
            handle = await worker.start(name, workflow_id, input)
            return info_json(await handle.get_info())

        return self.call(start, create=True)

    def act(
        self, workflow_id: str, action: _Action, body: Mapping[str, object]
    ) -> JSON:
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
        """`result_json` if completed, else `info_json`; failed or cancelled raise."""
        if wait is not None:
            raise _CommandError(
                ExitCode.USAGE,
                "--wait needs --url: nothing runs the workflows of a store that the "
                "command opens itself",
            )
        info = self.call(lambda worker: worker.handle(workflow_id).get_info())
        if info.state == WorkflowState.FAILED:
            failed = WorkflowFailedError(workflow_id, info.error or UNKNOWN_ERROR)
            raise _CommandError(ExitCode.FAILED, str(failed), "WorkflowFailedError")
        if info.state == WorkflowState.CANCELLED:
            cancelled = WorkflowCancelledError(workflow_id)
            raise _CommandError(
                ExitCode.FAILED, str(cancelled), "WorkflowCancelledError"
            )
        if info.state == WorkflowState.COMPLETED:
            return result_json(WorkflowResult(info.state, info.output))
        return info_json(info)  # as the HTTP API's 202


class _Http:
    """Server mode: each call is one or a few HTTP requests, through urllib."""

    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise _CommandError(
                ExitCode.USAGE,
                f"--url must start with http:// or https://, not {url!r}",
            )
        self.url = url.rstrip("/")
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None = None,
        *,
        query: Mapping[str, object] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> JSON:
        """Send one request; the JSON answer, or `_CommandError` for an error."""
        url = self.url + path
        pairs = {k: v for k, v in (query or {}).items() if v is not None}
        if pairs:
            url += "?" + urllib.parse.urlencode(pairs)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310 (http(s) only)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except urllib.error.URLError as exc:
            raise _CommandError(
                ExitCode.UNAVAILABLE,
                f"cannot reach the durable server at {self.url} ({exc.reason}); check "
                "--url, and that `durable worker ... --http HOST:PORT` runs there",
            ) from None
        except OSError as exc:  # a timeout, a reset connection
            raise _CommandError(
                ExitCode.UNAVAILABLE, f"the durable server at {self.url}: {exc}"
            ) from None
        try:
            answer: JSON = json.loads(raw)
        except ValueError:
            raise _CommandError(
                ExitCode.UNAVAILABLE,
                f"{url} did not answer with JSON; is --url a durable server?",
            ) from None
        return answer

    def _refused(self, exc: urllib.error.HTTPError) -> _CommandError:
        kind, message = None, f"the server answered {exc.code} {exc.reason}"
        try:
            error = json.loads(exc.read())["error"]
            kind, message = str(error["type"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            pass
        code = _CODES.get(kind or "") or _STATUS_CODES.get(exc.code)
        if code is None:
            code = ExitCode.UNAVAILABLE if exc.code >= 500 else ExitCode.FAILED
        if exc.code == 401:
            message += f"; pass it with --token or ${TOKEN_ENV_VAR}"
        return _CommandError(code, message, kind)

    @staticmethod
    def _path(workflow_id: str, action: str = "") -> str:
        if "/" in workflow_id:  # the server cannot route it, even quoted
            raise _CommandError(
                ExitCode.USAGE,
                f"the workflow id {workflow_id!r} contains '/', which no URL of the "
                "HTTP API can address; use --store while no worker runs",
            )
        return f"/workflows/{urllib.parse.quote(workflow_id, safe='')}{action}"

    def list_workflows(
        self, state: str | None, name: str | None, limit: int | None, cursor: str | None
    ) -> JSON:
        """GET /workflows."""
        query = {"state": state, "name": name, "limit": limit, "cursor": cursor}
        return self.request("GET", "/workflows", query=query)

    def read(self, workflow_id: str, what: Literal["", "/history"]) -> JSON:
        """GET /workflows/{id} or /workflows/{id}/history."""
        return self.request("GET", self._path(workflow_id, what))

    def start(self, name: str, workflow_id: str, input: object) -> JSON:
        """POST /workflows."""
        body = {"name": name, "workflow_id": workflow_id, "input": input}
        return self.request("POST", "/workflows", body)

    def act(
        self, workflow_id: str, action: _Action, body: Mapping[str, object]
    ) -> JSON:
        """POST /workflows/{id}/ACTION."""
        return self.request("POST", self._path(workflow_id, f"/{action}"), body)

    def result(self, workflow_id: str, wait: float | None) -> JSON:
        """GET /workflows/{id}/result, as often as a long *wait* needs."""
        path = self._path(workflow_id, "/result")
        left = wait or 0.0
        while True:
            chunk = min(left, MAX_SERVER_WAIT)
            left -= chunk
            try:
                answer = self.request(
                    "GET", path, query={"wait": chunk}, timeout=HTTP_TIMEOUT + chunk
                )
            except _CommandError as exc:
                if exc.kind in ("WorkflowFailedError", "WorkflowCancelledError"):
                    exc.code = ExitCode.FAILED
                raise
            if left <= 0 or _dict(answer).get("state") == WorkflowState.COMPLETED:
                return answer


# --- the client commands ------------------------------------------------------------

_Api: TypeAlias = _Store | _Http
_Command: TypeAlias = "Callable[[_Api, argparse.Namespace], int]"


def _client(args: argparse.Namespace, run: _Command) -> int:
    """Run a command but ``worker`` in server or store mode, as the options say."""
    url = args.url
    if url is None and args.store is None:
        url = os.environ.get(URL_ENV_VAR) or None
    if url is not None and args.store is not None:
        raise _CommandError(ExitCode.USAGE, "pass --url or --store, not both")
    app = getattr(args, "app", None)
    api: _Api
    if url is None:
        if args.token is not None:
            raise _CommandError(ExitCode.USAGE, "--token goes with --url")
        path = Path(args.store) if args.store is not None else default_store_path()
        api = _Store(path, app)
    else:
        if app is not None:
            raise _CommandError(ExitCode.USAGE, "--app is for store mode, not --url")
        token = args.token if args.token is not None else os.environ.get(TOKEN_ENV_VAR)
        api = _Http(url, token)
    return run(api, args)


def _list(api: _Api, args: argparse.Namespace) -> int:
    page = api.list_workflows(args.state, args.name, args.limit, args.cursor)
    if args.json:
        _print_json(page)
        return ExitCode.OK
    rows = [
        (
            str(row.get("workflow_id")),
            _text(row.get("name")),
            str(row.get("state")),
            _time(row.get("updated_at")),
            _waiting(row),
        )
        for row in _dicts(_dict(page).get("workflows"))
    ]
    table = [("ID", "NAME", "STATE", "UPDATED", "WAITING"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table if rows else []:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]).rstrip())
    if not rows:
        print("no workflows")
    cursor = _dict(page).get("cursor")
    if isinstance(cursor, str):
        print(f"more: add --cursor {cursor}")
    return ExitCode.OK


def _show(api: _Api, args: argparse.Namespace) -> int:
    info = api.read(args.workflow_id, "")
    if args.json:
        _print_json(info)
        return ExitCode.OK
    fields = _dict(info)
    error = _dict(fields.get("error"))
    alarm = fields.get("alarm_at")
    lines = [
        ("workflow", str(fields.get("workflow_id"))),
        ("name", _text(fields.get("name"), "- (a plain function)")),
        ("state", str(fields.get("state"))),
        ("created", _time(fields.get("created_at"))),
        ("updated", _time(fields.get("updated_at"))),
        ("input", _value(fields.get("input"))),
    ]
    if fields.get("state") == WorkflowState.COMPLETED:
        lines.append(("output", _value(fields.get("output"))))
    if error:
        lines.append(("error", _error_text(error)))
    if _waiting(fields):
        lines.append(("waiting", _waiting(fields)))
    lines.append(("due", "never" if alarm is None else _time(alarm)))
    lines.append(("messages", f"{fields.get('pending_messages')} not consumed"))
    for label, text in lines:
        print(f"{label:<9} {text}")
    traceback = error.get("traceback")
    if isinstance(traceback, str) and traceback.strip():
        print("traceback:")
        for line in traceback.rstrip().splitlines():
            print(f"  {line}")
    return ExitCode.OK


def _history(api: _Api, args: argparse.Namespace) -> int:
    nodes = api.read(args.workflow_id, "/history")
    if args.json:
        _print_json(nodes)
        return ExitCode.OK
    print(args.workflow_id)
    lines = list(_tree(_dicts(nodes), "", fancy=_can_print("├└│→")))
    for line in lines or ["(nothing recorded yet)"]:
        print(line)
    return ExitCode.OK


def _tree(nodes: list[dict[str, JSON]], prefix: str, *, fancy: bool) -> Iterator[str]:
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        if fancy:
            branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
        else:
            branch, below = ("`-- ", "    ") if last else ("|-- ", "|   ")
        yield prefix + branch + _node_line(node, fancy=fancy)
        yield from _tree(_dicts(node.get("children")), prefix + below, fancy=fancy)


def _node_line(node: Mapping[str, JSON], *, fancy: bool) -> str:
    """``kind name: status, attempts, times; failure: error → output``."""
    kind, name, status = node.get("kind"), node.get("name"), node.get("status")
    head = f"iteration {name}" if kind == "iteration" else f"{kind} {name}"
    details = [str(status)] if status else []
    attempts = node.get("attempts")
    if isinstance(attempts, int) and (kind == "step" or attempts > 1):
        details.append(f"{attempts} attempt{'' if attempts == 1 else 's'}")
    started, finished = node.get("started_at"), node.get("finished_at")
    if isinstance(started, int | float):
        details.append(f"started {_time(started)}")
        if isinstance(finished, int | float):
            details.append(f"took {_duration(finished - started)}")
    elif isinstance(finished, int | float):
        details.append(f"at {_time(finished)}")
    for key, label in (("until", "until"), ("retry_at", "retry at")):
        if node.get(key) is not None:
            details.append(f"{label} {_time(node.get(key))}")
    if node.get("rolled_back_at") is not None:
        details.append(f"rolled back at {_time(node.get('rolled_back_at'))}")
    line = f"{head}: {', '.join(details)}" if details else head
    error = _dict(node.get("error"))
    if error:
        line += f"; {node.get('failure') or 'error'}: {_error_text(error)}"
    if node.get("output") is not None:
        line += f" {'→' if fancy else '->'} {_value(node.get('output'), limit=60)}"
    return line


def _start(api: _Api, args: argparse.Namespace) -> int:
    value = _parse_json(args.input, "the input")
    return _report(args, api.start(args.name, args.workflow_id, value))


def _act(api: _Api, args: argparse.Namespace) -> int:
    action: _Action = args.action
    body: dict[str, object] = {}
    if action == "messages":
        body = {"name": args.name, "data": _parse_json(args.data, "the message data")}
    elif action == "replay-from":
        body = {"step": step_path(args.step)}  # a tuple goes as a JSON array
    info = api.act(args.workflow_id, action, body)
    done = f"message {args.name!r} stored" if action == "messages" else ""
    return _report(args, info, done)


def step_path(parts: Sequence[str]) -> StepPath:
    """The target of ``replay-from``: one name, or a path whose digits are ints."""
    if len(parts) == 1:
        return parts[0]
    return tuple(int(part) if part.isdigit() else part for part in parts)


def _report(args: argparse.Namespace, info: JSON, done: str = "") -> int:
    """After a change: the workflow's info (``--json``) or one line on it."""
    if args.json:
        _print_json(info)
        return ExitCode.OK
    fields = _dict(info)
    line = f"workflow {fields.get('workflow_id')!r}"
    if fields.get("name") is not None:
        line += f" ({fields.get('name')})"
    line += f" is {fields.get('state')}"
    if _waiting(fields):
        line += f", waiting for {_waiting(fields)}"
    if _dict(fields.get("error")):
        line += f": {_error_text(_dict(fields.get('error')))}"
    print(f"{done}; {line}" if done else line)
    return ExitCode.OK


def _result(api: _Api, args: argparse.Namespace) -> int:
    answer = _dict(api.result(args.workflow_id, args.wait))
    state = answer.get("state")
    if args.json:
        _print_json(answer)
    elif state == WorkflowState.COMPLETED:
        _print_json(answer.get("output"))
    if state == WorkflowState.COMPLETED:
        return ExitCode.OK
    waited = "" if args.wait is None else f" after {args.wait:g} s"
    waiting = f", waiting for {_waiting(answer)}" if _waiting(answer) else ""
    then = "run a worker on the store" if isinstance(api, _Store) else "--wait longer"
    _error(
        f"workflow {args.workflow_id!r} has not finished{waited}: it is {state}"
        f"{waiting}; {then}"
    )
    return ExitCode.NOT_FINISHED


# --- formatting ---------------------------------------------------------------------

_FINAL_STATES: Final = frozenset(
    str(state) for state in WorkflowState if state.is_final
)


def _print_json(value: JSON) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _dict(value: JSON) -> dict[str, JSON]:
    return value if isinstance(value, dict) else {}


def _dicts(value: JSON) -> list[dict[str, JSON]]:
    items = value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, dict)]


def _text(value: JSON, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _time(value: JSON) -> str:
    """Epoch seconds as UTC, to the millisecond: ``2025-01-31 12:00:00.000Z``."""
    if not isinstance(value, int | float):
        return "-"
    moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _waiting(fields: Mapping[str, JSON]) -> str:
    """What a workflow waits for: ``messages a, b``, ``any message``, ``until T``."""
    if fields.get("state") in _FINAL_STATES:
        return ""  # a cancelled workflow keeps the waits it had (see its info)
    parts = []
    names = fields.get("waiting_for")
    if isinstance(names, list):
        parts.append(
            f"messages {', '.join(map(str, names))}" if names else "any message"
        )
    if fields.get("sleep_until") is not None:
        parts.append(f"until {_time(fields.get('sleep_until'))}")
    return " ".join(parts)


def _value(value: JSON, limit: int | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _error_text(error: Mapping[str, JSON]) -> str:
    name, message = error.get("name"), error.get("message")
    return f"{name}: {message}" if message else str(name)


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
