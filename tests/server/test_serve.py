"""serve(): the worker and the HTTP API over a real socket, and their shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

import durable
from durable.server import serve

from .conftest import SAFETY, Kit

if TYPE_CHECKING:
    from pathlib import Path

ANNOUNCEMENT = re.compile(
    r"^durable: serving HTTP on (http://127\.0\.0\.1:(\d+))$", re.M
)


class WatchedDriver(durable.MemoryDriver):
    """A memory store that tells when *workflow_id* got its n-th subscriber."""

    def __init__(self, workflow_id: str, n: int) -> None:
        super().__init__()
        self.workflow_id = workflow_id
        self.left = n
        self.subscribed = anyio.Event()

    def subscribe(self, workflow_id: str) -> durable.Subscription:
        subscription = super().subscribe(workflow_id)
        if workflow_id == self.workflow_id:
            self.left -= 1
            if self.left == 0:
                self.subscribed.set()
        return subscription


async def test_serve_on_port_0_announces_the_bound_port_and_serves_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    kit = Kit()
    async with durable.MemoryDriver() as driver:
        worker = durable.Worker(driver, kit.workflows())
        with anyio.fail_after(SAFETY):
            async with anyio.create_task_group() as tg:
                url = await tg.start(_serve, worker, {"port": 0, "token": "t"})
                match = ANNOUNCEMENT.search(capsys.readouterr().err)
                assert match is not None
                assert match.group(1) == url
                assert int(match.group(2)) > 0
                headers = {"Authorization": "Bearer t"}
                async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                    started = await client.post(
                        "/workflows", json={"name": "waiter", "workflow_id": "w-1"}
                    )
                    assert started.status_code == 201
                    sent = await client.post(
                        "/workflows/w-1/messages", json={"name": "go", "data": 7}
                    )
                    assert sent.status_code == 202
                    result = await client.get(
                        "/workflows/w-1/result", params={"wait": SAFETY}
                    )
                    assert (result.status_code, result.json()["output"]) == (200, 7)
                    refused = await client.get(
                        "/workflows", headers={"Authorization": ""}
                    )
                    assert refused.status_code == 401
                    worker.shutdown()  # serve() returns once both halves stopped
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(url + "/health")


async def test_shutdown_answers_a_waiting_result_request_with_202_at_once() -> None:
    kit = Kit()
    # the worker's run of w-1 subscribes to it, then the result request does
    async with WatchedDriver("w-1", 2) as driver:
        worker = durable.Worker(driver, kit.workflows())
        responses: list[httpx.Response] = []
        with anyio.fail_after(SAFETY):
            async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
                url = await tg.start(_serve, worker, {"port": 0})
                await client.post(
                    f"{url}/workflows",
                    json={"name": "waiter", "workflow_id": "w-1"},
                )

                async def wait_for_result() -> None:
                    response = await client.get(
                        f"{url}/workflows/w-1/result", params={"wait": 60}
                    )
                    responses.append(response)

                tg.start_soon(wait_for_result)
                await driver.subscribed.wait()
                worker.shutdown()
            [response] = responses
            assert response.status_code == 202  # at once: SAFETY < 60 s


async def test_a_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = durable.Worker(durable.MemoryDriver())
        with pytest.raises(OSError, match="in use"):
            await serve(worker, port=port)


@pytest.mark.parametrize("port", [-1, 65536, "8000", True])
async def test_a_bad_port_is_refused(port: object) -> None:
    worker = durable.Worker(durable.MemoryDriver())
    with pytest.raises(ValueError, match="port"):
        await serve(worker, port=port)  # type: ignore[arg-type]


async def _serve(
    worker: durable.Worker,
    options: dict[str, object],
    *,
    task_status: anyio.abc.TaskStatus[str],
) -> None:
    await serve(worker, task_status=task_status, **options)  # type: ignore[arg-type]


# --- signals, in a real process ---------------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import sys

    import anyio

    import durable
    import durable.server


    @durable.workflow(name="waiter")
    async def waiter(ctx, _):
        [body] = await ctx.queue.next("wait", names=["go"])
        return body


    @durable.workflow(name="blocker")
    async def blocker(ctx, _):
        return await ctx.step("hold", anyio.sleep_forever)


    async def main() -> None:
        async with durable.LevelDBDriver(sys.argv[2]) as driver:
            worker = durable.Worker(driver, [waiter, blocker])
            await durable.server.serve(worker, port=0, handle_signals=True)
        print("stopped", flush=True)


    anyio.run(main, backend=sys.argv[1])
    """
)


class Server:
    """The program above, serving on a free port."""

    def __init__(self, tmp_path: Path, backend: str) -> None:
        script = tmp_path / "serve.py"
        script.write_text(PROGRAM, encoding="utf-8")
        self.store = tmp_path / "store"
        self.process = subprocess.Popen(
            [sys.executable, "-W", "error", str(script), backend, str(self.store)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "" if it died first
        match = ANNOUNCEMENT.search(line)
        assert match is not None, line + self.process.stderr.read()
        self.url = match.group(1)

    def signal(self) -> None:
        os.kill(self.process.pid, signal.SIGTERM)

    def wait_until_refused(self) -> None:
        """Poll until the HTTP server stopped accepting connections."""
        with httpx.Client(base_url=self.url) as client:
            for _ in range(1000):
                try:
                    client.get("/health")
                except httpx.ConnectError:
                    return
                time.sleep(0.01)
        raise AssertionError("the server still accepts connections")

    def stop(self) -> tuple[int, str, str]:
        stdout, stderr = self.process.communicate(timeout=SAFETY)
        return self.process.returncode, stdout, stderr


def _state(store: Path, workflow_id: str) -> str:
    async def read() -> str:
        async with durable.LevelDBDriver(store) as driver:
            return str(await durable.Worker(driver).handle(workflow_id).get_state())

    return anyio.run(read)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_stops_the_server_and_the_worker_gracefully(
    tmp_path: Path, backend: str
) -> None:
    server = Server(tmp_path, backend)
    try:
        with httpx.Client(base_url=server.url) as client:
            started = client.post(
                "/workflows", json={"name": "waiter", "workflow_id": "w-1"}
            )
            assert started.status_code == 201
            assert client.get("/health").json()["status"] == "ok"
        server.signal()
        code, stdout, stderr = server.stop()
    finally:
        server.process.kill()
    assert (code, stdout) == (0, "stopped\n"), stderr
    assert _state(server.store, "w-1") in {"pending", "sleeping"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_second_sigterm_stops_a_step_that_would_not_finish(
    tmp_path: Path, backend: str
) -> None:
    server = Server(tmp_path, backend)
    try:
        with httpx.Client(base_url=server.url) as client:
            client.post("/workflows", json={"name": "blocker", "workflow_id": "b-1"})
            for _ in range(1000):  # the step starts within moments
                if client.get("/health").json()["running"]:
                    break
                time.sleep(0.01)
        server.signal()  # graceful: the worker waits for the step, which never ends
        server.wait_until_refused()  # the first signal was handled
        server.signal()  # at once: the step is cancelled, not recorded
        code, stdout, stderr = server.stop()
    finally:
        server.process.kill()
    assert (code, stdout) == (0, "stopped\n"), stderr
    # not completed: the next worker runs the step again
    assert _state(server.store, "b-1") in {"pending", "running"}
