"""Bearer-token authentication and the request body size limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

import durable
from durable.server import DEFAULT_MAX_BODY_SIZE, create_app

from .conftest import Kit, assert_error, open_api

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Api

TOKEN = "s3cret-tøken"


class Chunks(httpx.AsyncByteStream):
    """A request body of *count* chunks with no declared length (no generator)."""

    def __init__(self, *, count: int, chunk: bytes) -> None:
        self.count = count
        self.chunk = chunk
        self.sent = 0

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.sent == self.count:
            raise StopAsyncIteration
        self.sent += 1
        return self.chunk


@pytest.fixture
async def secured(kit: Kit) -> AsyncIterator[Api]:
    async with open_api(kit, token=TOKEN) as api:
        yield api


def bearer(token: str) -> dict[str, bytes]:
    return {"Authorization": b"Bearer " + token.encode()}


class TestAuth:
    async def test_the_right_token_is_let_through(self, secured: Api) -> None:
        response = await secured.client.get("/workflows", headers=bearer(TOKEN))
        assert response.status_code == 200

    async def test_a_missing_token_answers_401_with_a_bearer_challenge(
        self, secured: Api
    ) -> None:
        response = await secured.client.get("/workflows")
        assert_error(response, 401, "UnauthorizedError")
        assert response.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize(
        "header",
        [
            b"Bearer wrong",
            b"Bearer " + TOKEN.encode()[:-1],
            b"Bearer " + TOKEN.encode() + b"x",
            b"Basic " + TOKEN.encode(),
            TOKEN.encode(),
            b"Bearer",
        ],
    )
    async def test_a_wrong_token_answers_401_invalid_token(
        self, secured: Api, header: bytes
    ) -> None:
        response = await secured.client.get(
            "/workflows", headers={"Authorization": header}
        )
        assert_error(response, 401, "UnauthorizedError")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    async def test_a_refused_start_stores_nothing(self, secured: Api) -> None:
        before = await secured.snapshot()
        response = await secured.client.post(
            "/workflows",
            json={"name": "echo", "workflow_id": "e-1"},
            headers=bearer("wrong"),
        )
        assert_error(response, 401, "UnauthorizedError")
        assert await secured.snapshot() == before

    @pytest.mark.parametrize(
        "path", ["/workflows/x", "/openapi.json", "/nope", "/workflows/x/cancel"]
    )
    async def test_every_route_but_health_needs_the_token(
        self, secured: Api, path: str
    ) -> None:
        assert_error(await secured.client.get(path), 401, "UnauthorizedError")

    async def test_health_needs_no_token(self, secured: Api) -> None:
        response = await secured.client.get("/health")
        assert (response.status_code, response.json()["status"]) == (200, "ok")

    async def test_without_a_token_the_api_is_open(self, api: Api) -> None:
        response = await api.client.get(
            "/workflows", headers={"Authorization": "Bearer anything"}
        )
        assert response.status_code == 200

    @pytest.mark.parametrize("token", ["", b"bytes"])
    def test_an_empty_or_non_str_token_is_refused(self, token: object) -> None:
        worker = durable.Worker(durable.MemoryDriver())
        with pytest.raises(ValueError, match="token"):
            create_app(worker, token=token)  # type: ignore[arg-type]


class TestBodySize:
    LIMIT = 100

    @pytest.fixture
    async def small(self, kit: Kit) -> AsyncIterator[Api]:
        async with open_api(kit, max_body_size=self.LIMIT) as api:
            yield api

    def body(self, size: int) -> bytes:
        start = b'{"name": "echo", "workflow_id": "e-1", "input": "'
        end = b'"}'
        return start + b"x" * (size - len(start) - len(end)) + end

    async def test_a_body_at_the_limit_is_accepted(self, small: Api) -> None:
        response = await small.client.post("/workflows", content=self.body(self.LIMIT))
        assert response.status_code == 201

    async def test_a_body_over_the_declared_limit_answers_413(self, small: Api) -> None:
        before = await small.snapshot()
        response = await small.client.post(
            "/workflows", content=self.body(self.LIMIT + 1)
        )
        assert_error(response, 413, "PayloadTooLargeError")
        assert await small.snapshot() == before

    async def test_a_streamed_body_without_a_length_is_cut_off_at_the_limit(
        self, small: Api
    ) -> None:
        stream = Chunks(count=1000, chunk=b"[" * 10)
        request = httpx.Request("POST", "http://durable.test/workflows", stream=stream)
        assert "content-length" not in request.headers
        before = await small.snapshot()
        response = await small.client.send(request)
        assert_error(response, 413, "PayloadTooLargeError")
        assert stream.sent < 1000  # reading stopped at the limit
        assert await small.snapshot() == before

    async def test_a_message_body_over_the_limit_answers_413(self, small: Api) -> None:
        await small.start("waiter", "w-1")
        before = await small.snapshot()
        response = await small.client.post(
            "/workflows/w-1/messages", json={"name": "go", "data": "x" * 200}
        )
        assert_error(response, 413, "PayloadTooLargeError")
        assert await small.snapshot() == before

    async def test_a_bad_content_length_answers_400(self, small: Api) -> None:
        response = await small.client.post(
            "/workflows", content=b"{}", headers={"Content-Length": "two"}
        )
        assert_error(response, 400, "BadRequestError")

    def test_the_default_limit_is_one_mebibyte(self) -> None:
        assert DEFAULT_MAX_BODY_SIZE == 1_048_576

    @pytest.mark.parametrize("size", [0, -1, 1.5, True])
    def test_a_bad_limit_is_refused(self, size: object) -> None:
        worker = durable.Worker(durable.MemoryDriver())
        with pytest.raises(ValueError, match="max_body_size"):
            create_app(worker, max_body_size=size)  # type: ignore[arg-type]
