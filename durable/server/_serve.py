"""serve(): a worker and its HTTP API in one task group, with a graceful shutdown.

Hypercorn serves the app because it runs on asyncio *and* trio (uvicorn is
asyncio-only); `serve` picks its entry point for the running backend.

Rules:
* The socket is bound and listening before `serve` announces its address, so the
  announced port (the real one, for ``port=0``) accepts connections at once.
* Shutdown (``worker.shutdown()``, or the first SIGTERM/SIGINT with
  ``handle_signals``): the HTTP server stops accepting and finishes the requests in
  flight (``result?wait=`` ones answer 202 at once), while the worker evicts its
  runs and waits for their flushes. A second signal cancels everything now.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

import anyio
from hypercorn.config import Config

from ._app import DEFAULT_MAX_BODY_SIZE, build

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.applications import Starlette

    from .._worker import Worker
    from ._app import Api

log = logging.getLogger("durable.server")


async def serve(
    worker: Worker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    handle_signals: bool = False,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run *worker* and its HTTP API on *host*:*port* until shutdown.

    ``port=0`` binds a free port. Once the socket listens, the line
    ``durable: serving HTTP on http://HOST:PORT`` goes to stderr (with the bound
    port) and ``await task_group.start(serve, ...)`` returns that URL. Returns after
    ``worker.shutdown()`` (or SIGTERM/SIGINT with *handle_signals*; a second signal
    stops at once) once the HTTP server has closed and every run has flushed.
    *token* and *max_body_size* are as in `create_app`.

    Raises:
        OSError: the address cannot be bound (in use, or not this machine's).

    Example:
        anyio.run(functools.partial(durable.server.serve, worker, port=8000))
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:  # type: ignore[redundant-expr]
        raise ValueError(f"port must be an int from 0 to 65535, not {port!r}")
    if not isinstance(host, str) or not host:  # type: ignore[redundant-expr]
        raise ValueError(f"host must be a non-empty str, not {host!r}")
    app, api = build(worker, token=token, max_body_size=max_body_size)
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address as in URLs
        host = host[1:-1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    config = Config()
    config.accesslog = None
    config.errorlog = log  # hypercorn's own messages go through our logger
    with socket.create_server(
        (host, port), family=family, backlog=config.backlog
    ) as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        url = f"http://{_address(listener)}"
        # Hypercorn takes the listening socket over as "fd://N" and closes it when
        # it stops; from then on, connecting to the port is refused.
        config.bind = [f"fd://{listener.detach()}"]
    stopper = _Stopper(worker, api)
    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(_watch_signals, stopper, tg.cancel_scope)
        async with anyio.create_task_group() as both:
            both.start_soon(_serve_http, app, config, stopper)
            both.start_soon(_run_worker, worker, stopper)
            sys.stderr.write(f"durable: serving HTTP on {url}\n")
            sys.stderr.flush()
            task_status.started(url)
        tg.cancel_scope.cancel()  # the signal watcher
    log.info("HTTP server and worker stopped")


def _address(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Stopper:
    """Starts the shutdown of both halves, once."""

    def __init__(self, worker: Worker, api: Api) -> None:
        self.worker = worker
        self.api = api
        self.requested = anyio.Event()

    def stop(self) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        self.api.close()
        self.worker.shutdown()


async def _run_worker(worker: Worker, stopper: _Stopper) -> None:
    try:
        await worker.run()
    finally:
        stopper.stop()  # the worker stopped (shutdown() was called): so does HTTP


async def _serve_http(app: Starlette, config: Config, stopper: _Stopper) -> None:
    try:
        await _hypercorn_serve()(app, config, shutdown_trigger=stopper.requested.wait)
    finally:
        stopper.stop()  # the HTTP server stopped: so does the worker


def _hypercorn_serve() -> Callable[..., Awaitable[None]]:
    """Hypercorn's ``serve`` for the running backend."""
    try:
        import sniffio  # trio depends on it; asyncio may run without
    except ModuleNotFoundError:
        backend = "asyncio"
    else:
        backend = sniffio.current_async_library()
    if backend == "trio":
        from hypercorn.trio import serve as trio_serve

        return trio_serve
    from hypercorn.asyncio import serve as asyncio_serve

    return asyncio_serve


async def _watch_signals(stopper: _Stopper, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stopper.requested.is_set():
                log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                stopper.stop()
            else:
                log.warning("second signal: stopping running steps now")
                scope.cancel()
