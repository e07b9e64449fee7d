"""The command line: `build_parser` defines its arguments, and `main` runs one command.

Rule: `main` is the one place a failure is printed. It turns a `CommandError`, an
argparse exit and Ctrl-C into at most one stderr line and an `ExitCode`; anything
else is a bug, and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Final

from .._inspect import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .._types import WorkflowState
from .._version import __version__
from .._worker import DEFAULT_CONCURRENCY
from . import _commands
from ._errors import CommandError, ExitCode
from ._http import TOKEN_ENV_VAR, URL_ENV_VAR
from ._location import DEFAULT_SHARED_LEASE, PG_STORE_ENV_VAR, POSTGRES_ENV_VAR
from ._worker import run_worker

if TYPE_CHECKING:
    from collections.abc import Callable


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
    except CommandError as exc:
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
_STORE_HELP: Final = "a LevelDB store (default: $DURABLE_STORE, else ./.durable)"
_POSTGRES_HELP: Final = (
    f"a PostgreSQL database, as a libpq DSN or URL (default: ${POSTGRES_ENV_VAR}); "
    "a store there is shared, and needs durable[postgres]"
)
_PG_STORE_HELP: Final = (
    f"the store in that database, a schema (default: ${PG_STORE_ENV_VAR}, else durable)"
)
_JSON_HELP: Final = 'a JSON value, e.g. \'{"sku": "A1"}\' or \'"text"\'; - reads stdin'


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``durable``: one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog="durable",
        description="Run durable workflows, and list, read and steer them.",
        epilog="Every command but `worker` and `migrate` works on a server (--url) "
        "or on a store: a LevelDB one no worker holds (--store), or a PostgreSQL one "
        "(--postgres). See docs/cli.md.",
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
    _add_store_options(worker)
    worker.add_argument(
        "--lease",
        metavar="SECONDS",
        type=_positive_seconds,
        help="lease each run for SECONDS, renewed while it runs, so that workers "
        f"sharing the store never run one workflow at once (default: "
        f"{DEFAULT_SHARED_LEASE:g} with --postgres, else none)",
    )
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
    worker.set_defaults(command=run_worker)

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
    _add_store_options(where)
    client.add_argument(
        "--json", action="store_true", help="print the HTTP API's JSON, not text"
    )

    def add(
        name: str, summary: str, run: _commands.Command, *, takes_id: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[client], help=summary, description=summary
        )
        sub.set_defaults(
            command=lambda args: _commands.run_client(args, run), action=name
        )
        if takes_id:
            sub.add_argument("workflow_id", metavar="ID", help="the workflow's id")
        return sub

    listing = add(
        "list",
        "list workflows, by state then id",
        _commands.list_workflows,
        takes_id=False,
    )
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

    add("show", "show a workflow's state, input, output and error", _commands.show)
    add("history", "show a workflow's recorded history as a tree", _commands.history)

    start = add(
        "start",
        "start a workflow (an existing ID is left as it is)",
        _commands.start,
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

    message = add("message", "send a message to a workflow", _commands.act)
    message.set_defaults(action="messages")
    message.add_argument("name", metavar="NAME", help="the message's name")
    message.add_argument("data", metavar="JSON", help=_JSON_HELP)

    add("cancel", "cancel a workflow for good", _commands.act)
    add("recover", "run the failed steps of a failed workflow again", _commands.act)
    add("wake", "make a workflow due now (a parked one is tried again)", _commands.act)

    replay = add(
        "replay-from",
        "delete the history from a step on, so the workflow runs again from there",
        _commands.act,
    )
    replay.add_argument(
        "step",
        metavar="STEP",
        nargs="+",
        help="the step's name, or its path: the enclosing entries and branches, "
        "then the name (a whole number is a loop iteration)",
    )

    result = add("result", "print the output of a completed workflow", _commands.result)
    result.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        help="with --url or --postgres: wait up to SECONDS for the workflow to finish",
    )

    summary = "create a PostgreSQL store's schema, or migrate it to this version"
    migrate = commands.add_parser("migrate", help=summary, description=summary)
    migrate.add_argument("--postgres", metavar="DSN", help=_POSTGRES_HELP)
    migrate.add_argument("--pg-store", metavar="NAME", help=_PG_STORE_HELP)
    migrate.add_argument(
        "--json", action="store_true", help="print {store, schema_version} as JSON"
    )
    for option in ("--url", "--token", "--store"):  # refused with a reason, unlisted
        migrate.add_argument(option, help=argparse.SUPPRESS)
    migrate.set_defaults(command=_commands.migrate)
    return parser


def _add_store_options(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
) -> None:
    """``--store`` (LevelDB), or ``--postgres`` with ``--pg-store`` (PostgreSQL)."""
    group.add_argument("--store", metavar="PATH", help=_STORE_HELP)
    group.add_argument("--postgres", metavar="DSN", help=_POSTGRES_HELP)
    group.add_argument("--pg-store", metavar="NAME", help=_PG_STORE_HELP)


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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, not {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            "expected HOST:PORT such as 127.0.0.1:8000 (port 0 picks a free port), "
            f"not {text!r}"
        )
    return host.strip("[]") or "127.0.0.1", int(port)
