"""The commands but ``worker``: each makes one call in store or server mode and prints.

`run_client` picks the mode from the options: `Http` with ``--url`` (or
``$DURABLE_URL``), else `Store` on the store that `choose_store` picks. Both answer
with the bodies of the HTTP API, so a command is written once for both. `migrate`
works on a PostgreSQL store's schema alone.

Rule: ``--json`` prints exactly that answer; the text for people comes from `_render`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from .._types import WorkflowState
from ._errors import CommandError, ExitCode
from ._http import URL_ENV_VAR, Http, bearer_token
from ._location import POSTGRES_ENV_VAR, PostgresStore, choose_store, names_a_store
from ._render import (
    print_history,
    print_info,
    print_json,
    print_migration,
    print_page,
    print_report,
    waiting,
)
from ._store import Store

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from .._json import JSON
    from .._replay_from import StepPath
    from ._http import Action

Api: TypeAlias = Store | Http
Command: TypeAlias = "Callable[[Api, argparse.Namespace], int]"


def run_client(args: argparse.Namespace, run: Command) -> int:
    """Run a command but ``worker`` in server or store mode, as the options say.

    An option that names a store (``--store``, ``--postgres``, ``--pg-store``) wins
    over ``$DURABLE_URL``; with ``--url`` it is a usage error.
    """
    url = args.url
    store_named = names_a_store(args.store, args.postgres, args.pg_store)
    if url is None and not store_named:
        url = os.environ.get(URL_ENV_VAR) or None
    if url is not None and store_named:
        raise CommandError(
            ExitCode.USAGE,
            "pass --url (a server) or a store (--store, or --postgres and "
            "--pg-store), not both",
        )
    app = getattr(args, "app", None)
    api: Api
    if url is None:
        if args.token is not None:
            raise CommandError(ExitCode.USAGE, "--token goes with --url")
        api = Store(choose_store(args.store, args.postgres, args.pg_store), app)
    else:
        if app is not None:
            raise CommandError(ExitCode.USAGE, "--app is for store mode, not --url")
        api = Http(url, bearer_token(args.token))
    return run(api, args)


def list_workflows(api: Api, args: argparse.Namespace) -> int:
    """``durable list``."""
    page = api.list_workflows(args.state, args.name, args.limit, args.cursor)
    return _output(args, page, print_page)


def show(api: Api, args: argparse.Namespace) -> int:
    """``durable show``."""
    return _output(args, api.read(args.workflow_id, ""), print_info)


def history(api: Api, args: argparse.Namespace) -> int:
    """``durable history``."""
    nodes = api.read(args.workflow_id, "/history")
    return _output(args, nodes, lambda nodes: print_history(args.workflow_id, nodes))


def start(api: Api, args: argparse.Namespace) -> int:
    """``durable start``."""
    value = _parse_json(args.input, "the input")
    return _output(args, api.start(args.name, args.workflow_id, value), print_report)


def act(api: Api, args: argparse.Namespace) -> int:
    """``durable message``, ``cancel``, ``recover``, ``wake`` and ``replay-from``."""
    action: Action = args.action
    body: dict[str, object] = {}
    if action == "messages":
        body = {"name": args.name, "data": _parse_json(args.data, "the message data")}
    elif action == "replay-from":
        body = {"step": step_path(args.step)}  # a tuple goes as a JSON array
    info = api.act(args.workflow_id, action, body)
    done = f"message {args.name!r} stored" if action == "messages" else ""
    return _output(args, info, lambda info: print_report(info, done))


def result(api: Api, args: argparse.Namespace) -> int:
    """``durable result``: the output, or an error that says why there is none."""
    answer = api.result(args.workflow_id, args.wait)
    fields = answer if isinstance(answer, dict) else {}
    state = fields.get("state")
    if args.json:
        print_json(fields)
    elif state == WorkflowState.COMPLETED:
        print_json(fields.get("output"))
    if state == WorkflowState.COMPLETED:
        return ExitCode.OK
    waited = "" if args.wait is None else f" after {args.wait:g} s"
    now = waiting(fields)
    waits = f", waiting for {now}" if now else ""
    then = "--wait longer"
    if isinstance(api, Store):
        then = "run a worker on the store"
        if api.location.shared:
            then = "--wait longer, with a worker running on the store"
    raise CommandError(
        ExitCode.NOT_FINISHED,
        f"workflow {args.workflow_id!r} has not finished{waited}: it is {state}"
        f"{waits}; {then}",
    )


def migrate(args: argparse.Namespace) -> int:
    """``durable migrate``: create or migrate a PostgreSQL store's schema."""
    for option, why in (
        ("url", "it works on the database itself, not through a server"),
        ("token", "it works on the database itself, not through a server"),
        ("store", "a LevelDB store has no schema to migrate"),
    ):
        if getattr(args, option) is not None:
            raise CommandError(
                ExitCode.USAGE,
                f"durable migrate takes --postgres DSN, not --{option}: {why}",
            )
    location = choose_store(None, args.postgres, args.pg_store)
    if not isinstance(location, PostgresStore):
        raise CommandError(
            ExitCode.USAGE,
            "durable migrate works on a PostgreSQL store: pass --postgres DSN or set "
            f"${POSTGRES_ENV_VAR} (a LevelDB store has no schema to migrate)",
        )
    before, now = location.migrate()
    answer: JSON = {"store": location.name, "schema_version": now}
    return _output(args, answer, lambda answer: print_migration(answer, before))


def step_path(parts: Sequence[str]) -> StepPath:
    """The target of ``replay-from``: one name, or a path whose digits are ints."""
    if len(parts) == 1:
        return parts[0]
    return tuple(int(part) if part.isdigit() else part for part in parts)


def _output(
    args: argparse.Namespace, answer: JSON, text: Callable[[JSON], None]
) -> int:
    """Print *answer*: as JSON with ``--json``, else as *text* puts it for people."""
    if args.json:
        print_json(answer)
    else:
        text(answer)
    return ExitCode.OK


def _parse_json(text: str, what: str) -> object:
    """*text* as strict JSON (no NaN or Infinity); ``-`` reads stdin."""
    if text == "-":
        text = sys.stdin.read()

    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CommandError(
            ExitCode.USAGE,
            f"{what} is not valid JSON ({exc}): {text!r}; pass a JSON value such as "
            '\'{"sku": "A1"}\', 42 or \'"text"\' (quoted for your shell)',
        ) from None
