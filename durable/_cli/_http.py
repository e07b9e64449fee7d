"""Server mode: the commands as requests to a running server's HTTP API, via urllib.

Rule: only the standard library talks HTTP here (``durable[server]`` is not needed to
reach a server), and every failure, from an unreachable host to an error answer,
becomes a `CommandError` with the code that store mode would exit with.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Final, Literal

from .._types import WorkflowState
from ._errors import CommandError, ExitCode, code_of_answer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._json import JSON

URL_ENV_VAR: Final = "DURABLE_URL"
TOKEN_ENV_VAR: Final = "DURABLE_TOKEN"  # noqa: S105 (the variable's name, not a token)
HTTP_TIMEOUT: Final = 30.0  # seconds a request may take, on top of the server's wait
MAX_SERVER_WAIT: Final = 60.0  # seconds the server holds one GET .../result?wait=

# What changes a workflow: the last part of the HTTP API's POST /workflows/{id}/...
Action = Literal["messages", "cancel", "recover", "wake", "replay-from"]


def bearer_token(option: str | None) -> str | None:
    """The token that ``--token`` gives, else ``$DURABLE_TOKEN`` (if set)."""
    return option if option is not None else os.environ.get(TOKEN_ENV_VAR)


class Http:
    """Server mode: each call is one or a few HTTP requests, through urllib."""

    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise CommandError(
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
        """Send one request; the JSON answer, or `CommandError` for an error."""
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
            raise CommandError(
                ExitCode.UNAVAILABLE,
                f"cannot reach the durable server at {self.url} ({exc.reason}); check "
                "--url, and that `durable worker ... --http HOST:PORT` runs there",
            ) from None
        except OSError as exc:  # a timeout, a reset connection
            raise CommandError(
                ExitCode.UNAVAILABLE, f"the durable server at {self.url}: {exc}"
            ) from None
        try:
            answer: JSON = json.loads(raw)
        except ValueError:
            raise CommandError(
                ExitCode.UNAVAILABLE,
                f"{url} did not answer with JSON; is --url a durable server?",
            ) from None
        return answer

    def _refused(self, exc: urllib.error.HTTPError) -> CommandError:
        kind, message = None, f"the server answered {exc.code} {exc.reason}"
        try:
            error = json.loads(exc.read())["error"]
            kind, message = str(error["type"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            pass
        if exc.code == 401:
            message += f"; pass it with --token or ${TOKEN_ENV_VAR}"
        return CommandError(code_of_answer(kind, exc.code), message, kind)

    @staticmethod
    def _path(workflow_id: str, action: str = "") -> str:
        if "/" in workflow_id:  # the server cannot route it, even quoted
            raise CommandError(
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

    def act(self, workflow_id: str, action: Action, body: Mapping[str, object]) -> JSON:
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
            except CommandError as exc:
                if exc.kind in ("WorkflowFailedError", "WorkflowCancelledError"):
                    exc.code = ExitCode.FAILED
                raise
            if left <= 0 or (
                isinstance(answer, dict)
                and answer.get("state") == WorkflowState.COMPLETED
            ):
                return answer
