"""The ``durable worker`` command: run an app's workflows on a store until a signal.

Rule: the worker runs until SIGTERM or SIGINT stops it gracefully (exit 0), and
imports the HTTP server (`durable.server`, the ``durable[server]`` extra) only when
``--http`` asks for it, so that a worker runs without the extra. On a LevelDB store it
is the only worker (it holds the store); on a shared PostgreSQL store it takes a lease
on each run (``--lease``, 30 s by default), so that several workers share the work.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import anyio

from .._errors import DurableError
from .._worker import Worker
from ._app import load_workflows
from ._errors import CommandError, ExitCode, code_of
from ._http import bearer_token
from ._location import DEFAULT_SHARED_LEASE, choose_store

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

log = logging.getLogger("durable.cli")


def run_worker(args: argparse.Namespace) -> int:
    """Run ``durable worker``: the workflows of ``args.app`` on the store."""
    workflows = load_workflows(args.app)
    if args.token is not None and args.http is None:
        raise CommandError(
            ExitCode.USAGE, "--token protects the HTTP API: add --http HOST:PORT"
        )
    serve = None if args.http is None else _server_serve()
    token = bearer_token(args.token)
    location = choose_store(args.store, args.postgres, args.pg_store)
    lease: float | None = args.lease
    if lease is None and location.shared:
        lease = DEFAULT_SHARED_LEASE  # other workers may run on the store
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def run() -> None:
        async with location.open() as driver:
            worker = Worker(
                driver, workflows, concurrency=args.concurrency, lease=lease
            )
            names = ", ".join(sorted(worker.workflows))
            leased = "" if lease is None else f", each run leased for {lease:g} s"
            log.info("worker %s on %s runs %s%s", worker.id, location, names, leased)
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
                hint = (
                    "; a LevelDB store has one worker at a time: is one running "
                    "already? (Several workers share a PostgreSQL store.)"
                )
            raise CommandError(code_of(leaf), f"{leaf}{hint}") from None
        if isinstance(leaf, OSError) and args.http is not None:  # the address in use
            message = f"cannot serve on {args.http[0]}:{args.http[1]}: {leaf}"
            raise CommandError(ExitCode.UNAVAILABLE, message) from None
        raise
    if location.shared:
        log.info("worker stopped; other workers on %s resume its workflows", location)
    else:
        log.info(
            "worker stopped; the next worker on %s resumes its workflows", location
        )
    return ExitCode.OK


def _server_serve() -> Callable[..., Awaitable[None]]:
    try:
        from ..server import serve  # an optional extra: imported when needed
    except ImportError as exc:
        raise CommandError(
            ExitCode.UNAVAILABLE,
            f"--http needs the HTTP server ({exc}); install it with "
            "pip install 'durable[server]'",
        ) from None
    return serve


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (anyio wraps)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
