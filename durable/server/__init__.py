"""The HTTP API of a worker: an ASGI app (Starlette) and a server that runs both.

Needs the optional dependencies of ``durable[server]`` (Starlette and Hypercorn);
without them ``import durable.server`` raises an `ImportError` naming the extra.
"""

from __future__ import annotations

_EXTRA_MODULES = frozenset({"starlette", "hypercorn"})

try:
    from ._app import DEFAULT_MAX_BODY_SIZE, create_app
    from ._serve import serve
except ModuleNotFoundError as exc:  # pragma: no cover - tested in a subprocess
    missing = (exc.name or "").partition(".")[0]
    if missing not in _EXTRA_MODULES:
        raise
    raise ImportError(
        f"durable.server needs the optional dependencies of durable[server] "
        f"({missing} is missing); install them with pip install 'durable[server]'",
        name=missing,
    ) from exc

__all__ = ["DEFAULT_MAX_BODY_SIZE", "create_app", "serve"]


def _rehome() -> None:
    """Make tracebacks and reprs say durable.server.X."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("durable.server."):
            obj.__module__ = __name__


_rehome()
del _rehome
