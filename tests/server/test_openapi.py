"""/openapi.json: valid OpenAPI 3.1 that describes every route and method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

import durable
from durable.server import create_app

from .conftest import Kit, open_api

if TYPE_CHECKING:
    from .conftest import Api


def routes(token: str | None) -> set[tuple[str, str]]:
    """(path, method) of every route of an app, HEAD aside."""
    app = create_app(durable.Worker(durable.MemoryDriver()), token=token)
    found = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                found.add((route.path, method.lower()))
    return found


def operations(spec: dict[str, object]) -> set[tuple[str, str]]:
    paths = spec["paths"]
    assert isinstance(paths, dict)
    return {
        (path, method)
        for path, item in paths.items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


async def test_the_document_is_valid_openapi_3_1(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["version"] == durable.__version__
    validate(spec)


async def test_every_route_and_method_is_described_and_nothing_else(
    api: Api,
) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert operations(spec) == routes(None)
    assert len(operations(spec)) == 12


@pytest.mark.parametrize("token", [None, "t"])
async def test_every_operation_documents_its_responses(
    kit: Kit, token: str | None
) -> None:
    async with open_api(kit, token=token) as api:
        headers = {"Authorization": "Bearer t"} if token else {}
        spec = (await api.client.get("/openapi.json", headers=headers)).json()
    validate(spec)
    for path, method in operations(spec):
        responses = spec["paths"][path][method]["responses"]
        assert any(code.startswith("2") for code in responses), (path, method)
        if token and path != "/health":
            assert "401" in responses, (path, method)


async def test_with_a_token_the_document_declares_bearer_auth(kit: Kit) -> None:
    async with open_api(kit, token="t") as api:
        response = await api.client.get(
            "/openapi.json", headers={"Authorization": "Bearer t"}
        )
    spec = response.json()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []


async def test_without_a_token_the_document_declares_no_auth(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert "security" not in spec
    assert "securitySchemes" not in spec["components"]


async def test_the_bodies_the_api_sends_match_their_schemas(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()

    def check(body: object, schema: str) -> None:
        document = {"$ref": f"#/components/schemas/{schema}", **spec}
        jsonschema.Draft202012Validator(document).validate(body)

    await api.start("steps", "s-1")
    await api.start("flaky", "f-1")
    await api.start("waiter", "w-1")
    check((await api.finish("s-1")).json(), "WorkflowResult")
    check((await api.finish("f-1")).json(), "Error")
    check((await api.client.get("/workflows/w-1/result")).json(), "WorkflowInfo")
    check((await api.client.get("/workflows/f-1")).json(), "WorkflowInfo")
    check(
        (await api.client.get("/workflows", params={"limit": 1})).json(), "WorkflowPage"
    )
    for node in (await api.client.get("/workflows/s-1/history")).json():
        check(node, "HistoryNode")
    check((await api.client.get("/health")).json(), "Health")
    with pytest.raises(jsonschema.ValidationError):
        check({"workflow_id": "w-1"}, "WorkflowInfo")  # the check itself works
