"""Bearer-token authentication for every route but the health check.

Rule: the token is compared with `hmac.compare_digest` on bytes, so the time taken
does not tell how much of a guess was right; a refused request reaches no endpoint.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final

from starlette.datastructures import Headers

from ._errors import UNAUTHORIZED, error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS: Final = frozenset({"/health"})


class BearerAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if header is None:
            response = error_response(
                401,
                UNAUTHORIZED,
                "this server needs a token: send the header "
                "'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scheme, _, credentials = header.partition(" ")
        # Headers decodes as latin-1: encoding back gives the bytes as sent
        given = credentials.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._token):
            response = error_response(
                401,
                UNAUTHORIZED,
                "the bearer token is wrong; send the token the server was started with",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
