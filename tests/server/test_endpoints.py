"""Every endpoint's happy path, over the ASGI app on asyncio and trio."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

import anyio
import pytest

from .conftest import SAFETY, assert_error, settle

if TYPE_CHECKING:
    from .conftest import Api

INFO_FIELDS = {
    "workflow_id",
    "name",
    "state",
    "created_at",
    "updated_at",
    "input",
    "output",
    "error",
    "sleep_until",
    "waiting_for",
    "alarm_at",
    "pending_messages",
}


class TestHealth:
    async def test_health_reports_the_worker(self, api: Api) -> None:
        response = await api.client.get("/health")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "running": 0,
            "parked": 0,
            "workflows": ["blocker", "echo", "flaky", "steps", "waiter"],
        }

    async def test_health_counts_running_workflows(self, api: Api) -> None:
        await api.start("blocker", "b-1")
        with anyio.fail_after(SAFETY):
            await api.kit.holding.wait()
        assert (await api.client.get("/health")).json()["running"] == 1


class TestStart:
    async def test_a_new_workflow_is_created_with_201_and_its_location(
        self, api: Api
    ) -> None:
        response = await api.client.post(
            "/workflows",
            json={"name": "echo", "workflow_id": "e-1", "input": {"n": [1, 2]}},
        )
        assert response.status_code == 201
        assert response.headers["location"] == "/workflows/e-1"
        body = response.json()
        assert set(body) == INFO_FIELDS
        assert (body["workflow_id"], body["name"], body["input"]) == (
            "e-1",
            "echo",
            {"n": [1, 2]},
        )
        result = await api.finish("e-1")
        assert result.json()["output"] == {"n": [1, 2]}

    async def test_starting_it_again_with_the_same_name_answers_200(
        self, api: Api
    ) -> None:
        await api.start("echo", "e-1", "first")
        await api.finish("e-1")
        again = await api.client.post(
            "/workflows", json={"name": "echo", "workflow_id": "e-1", "input": "2nd"}
        )
        assert again.status_code == 200
        assert (again.json()["state"], again.json()["input"]) == ("completed", "first")

    async def test_the_input_is_optional(self, api: Api) -> None:
        response = await api.client.post(
            "/workflows", json={"name": "echo", "workflow_id": "e-1"}
        )
        assert response.status_code == 201
        assert (await api.finish("e-1")).json()["output"] is None

    async def test_an_id_with_spaces_and_unicode_is_addressed_percent_encoded(
        self, api: Api
    ) -> None:
        workflow_id = "order 7 ✓?#"
        response = await api.client.post(
            "/workflows", json={"name": "echo", "workflow_id": workflow_id, "input": 1}
        )
        location = response.headers["location"]
        assert location == "/workflows/" + urllib.parse.quote(workflow_id, safe="")
        info = await api.client.get(location)
        assert info.json()["workflow_id"] == workflow_id
        result = await api.client.get(location + "/result", params={"wait": SAFETY})
        assert result.json()["output"] == 1


class TestList:
    async def test_pages_follow_the_cursor_and_filters_apply(self, api: Api) -> None:
        for n in range(3):
            await api.start("echo", f"e-{n}", n)
            await api.finish(f"e-{n}")
        await api.start("waiter", "w-1")
        await settle()
        first = await api.client.get(
            "/workflows", params={"state": "completed", "limit": 2}
        )
        assert first.status_code == 200
        page = first.json()
        assert [row["workflow_id"] for row in page["workflows"]] == ["e-0", "e-1"]
        assert page["cursor"]
        second = await api.client.get(
            "/workflows",
            params={"state": "completed", "limit": 2, "cursor": page["cursor"]},
        )
        assert [row["workflow_id"] for row in second.json()["workflows"]] == ["e-2"]
        assert second.json()["cursor"] is None
        waiting = await api.client.get("/workflows", params={"name": "waiter"})
        [row] = waiting.json()["workflows"]
        assert row == {
            "workflow_id": "w-1",
            "name": "waiter",
            "state": "sleeping",
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "sleep_until": None,
            "waiting_for": ["go"],
        }

    async def test_an_empty_store_lists_nothing(self, api: Api) -> None:
        response = await api.client.get("/workflows")
        assert response.json() == {"workflows": [], "cursor": None}


class TestRead:
    async def test_info_shows_input_output_and_state(self, api: Api) -> None:
        await api.start("echo", "e-1", "hi")
        await api.finish("e-1")
        body = (await api.client.get("/workflows/e-1")).json()
        assert (body["state"], body["input"], body["output"]) == (
            "completed",
            "hi",
            "hi",
        )
        assert body["alarm_at"] is None

    async def test_history_is_the_tree_of_recorded_entries(self, api: Api) -> None:
        await api.start("steps", "s-1")
        await api.finish("s-1")
        response = await api.client.get("/workflows/s-1/history")
        assert response.status_code == 200
        tree = response.json()
        assert [(node["kind"], node["name"]) for node in tree] == [
            ("step", "a"),
            ("join", "fanout"),
            ("step", "b"),
        ]
        branches = tree[1]["children"]
        assert [(node["kind"], node["name"]) for node in branches] == [
            ("branch", "branch-a"),
            ("branch", "branch-b"),
        ]
        assert branches[0]["children"][0]["name"] == "charge"
        assert tree[0]["output"] == 1


class TestResult:
    async def test_a_completed_workflow_answers_200_with_its_output(
        self, api: Api
    ) -> None:
        await api.start("echo", "e-1", [1, "two"])
        response = await api.finish("e-1")
        assert response.status_code == 200
        assert response.json() == {
            "state": "completed",
            "output": [1, "two"],
            "sleep_until": None,
            "waiting_for": None,
        }

    async def test_an_unfinished_workflow_answers_202_with_its_info(
        self, api: Api
    ) -> None:
        await api.start("waiter", "w-1")
        await settle()
        response = await api.client.get("/workflows/w-1/result")
        assert response.status_code == 202
        assert (response.json()["state"], response.json()["waiting_for"]) == (
            "sleeping",
            ["go"],
        )

    async def test_a_wait_that_runs_out_answers_202(self, api: Api) -> None:
        await api.start("waiter", "w-1")
        await settle()
        response = await api.client.get(
            "/workflows/w-1/result", params={"wait": "0.01"}
        )
        assert response.status_code == 202

    async def test_a_failed_workflow_answers_409_workflow_failed(
        self, api: Api
    ) -> None:
        await api.start("flaky", "f-1")
        response = await api.finish("f-1")
        assert_error(response, 409, "WorkflowFailedError")
        assert "the card was declined" in response.json()["error"]["message"]
        info = (await api.client.get("/workflows/f-1")).json()
        assert info["error"]["name"] == "CriticalError"


class TestMessages:
    async def test_a_message_reaches_a_waiting_workflow_which_completes(
        self, api: Api
    ) -> None:
        await api.start("waiter", "w-1")
        await settle()
        results = []

        async def wait_for_result() -> None:
            results.append(await api.finish("w-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_result)
            await settle()  # the result request is waiting
            assert results == []
            sent = await api.client.post(
                "/workflows/w-1/messages", json={"name": "go", "data": {"ok": True}}
            )
            assert sent.status_code == 202
            assert set(sent.json()) == INFO_FIELDS
        [result] = results
        assert result.status_code == 200
        assert result.json()["output"] == {"ok": True}
        assert api.kit.calls["before"] == 1

    async def test_a_message_without_data_carries_null(self, api: Api) -> None:
        await api.start("waiter", "w-1")
        sent = await api.client.post("/workflows/w-1/messages", json={"name": "go"})
        assert sent.status_code == 202
        assert (await api.finish("w-1")).json()["output"] is None

    async def test_a_message_for_another_name_waits_in_the_queue(
        self, api: Api
    ) -> None:
        await api.start("waiter", "w-1")
        await settle()
        sent = await api.client.post(
            "/workflows/w-1/messages", json={"name": "other", "data": 1}
        )
        assert sent.json()["pending_messages"] == 1
        await settle()
        info = (await api.client.get("/workflows/w-1")).json()
        assert (info["state"], info["pending_messages"]) == ("sleeping", 1)


class TestSteering:
    async def test_cancel_stops_a_waiting_workflow_for_good(self, api: Api) -> None:
        await api.start("waiter", "w-1")
        await settle()
        response = await api.client.post("/workflows/w-1/cancel")
        assert response.status_code == 200
        assert (response.json()["state"], response.json()["alarm_at"]) == (
            "cancelled",
            None,
        )
        assert_error(
            await api.client.get("/workflows/w-1/result"),
            409,
            "WorkflowCancelledError",
        )

    async def test_cancel_stops_a_running_workflow(self, api: Api) -> None:
        await api.start("blocker", "b-1")
        with anyio.fail_after(SAFETY):
            await api.kit.holding.wait()
        response = await api.client.post("/workflows/b-1/cancel")
        assert response.json()["state"] == "cancelled"

    async def test_cancelling_a_completed_workflow_leaves_it_completed(
        self, api: Api
    ) -> None:
        await api.start("echo", "e-1", 1)
        await api.finish("e-1")
        response = await api.client.post("/workflows/e-1/cancel")
        assert (response.status_code, response.json()["state"]) == (200, "completed")

    async def test_recover_runs_the_failed_step_again(self, api: Api) -> None:
        await api.start("flaky", "f-1")
        assert (await api.finish("f-1")).status_code == 409
        api.kit.fixed = True
        response = await api.client.post("/workflows/f-1/recover")
        assert response.status_code == 200
        assert response.json()["state"] in {"pending", "running", "completed"}
        assert response.json()["error"] is None
        result = await api.finish("f-1")
        assert (result.status_code, result.json()["output"]) == (200, "charged")
        assert api.kit.calls["charge"] == 2

    async def test_recovering_a_workflow_that_did_not_fail_changes_nothing(
        self, api: Api
    ) -> None:
        await api.start("echo", "e-1", 1)
        await api.finish("e-1")
        before = await api.snapshot()
        response = await api.client.post("/workflows/e-1/recover")
        assert (response.status_code, response.json()["state"]) == (200, "completed")
        assert await api.snapshot() == before

    async def test_wake_makes_a_waiting_workflow_due(self, api: Api) -> None:
        await api.start("waiter", "w-1")
        await settle()
        response = await api.client.post("/workflows/w-1/wake")
        assert response.status_code == 200
        assert response.json()["alarm_at"] is not None
        await settle()  # it ran, found no message, and sleeps again
        info = (await api.client.get("/workflows/w-1")).json()
        assert (info["state"], api.kit.calls["before"]) == ("sleeping", 1)

    @pytest.mark.parametrize(
        ("step", "again"),
        [
            ("b", {"b"}),
            (["b"], {"b"}),
            (["fanout", "branch-a", "charge"], {"branch-a.charge", "b"}),
        ],
    )
    async def test_replay_from_runs_the_step_and_what_followed_again(
        self, api: Api, step: object, again: set[str]
    ) -> None:
        await api.start("steps", "s-1")
        await api.finish("s-1")
        response = await api.client.post(
            "/workflows/s-1/replay-from", json={"step": step}
        )
        assert response.status_code == 200
        assert response.json()["output"] is None
        result = await api.finish("s-1")
        assert result.status_code == 200
        names = {"a", "branch-a.charge", "branch-b.ship", "b"}
        assert api.kit.calls == {name: 2 if name in again else 1 for name in names}
