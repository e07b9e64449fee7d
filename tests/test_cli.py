"""The ``durable`` command: store mode in-process, a worker and a server as processes.

Store-mode tests call `main` on a LevelDB store prepared with real runs (on both anyio
backends). The subprocess tests run ``python -m durable worker`` on a store, with and
without ``--http``, and drive the server with the CLI's ``--url`` commands. The last
section does the same on PostgreSQL stores (``--postgres``), where workers share the
store with each other and with store-mode commands, and tests ``durable migrate``.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import psycopg
import pytest
from psycopg import sql

import durable
from durable._cli import ExitCode, load_workflows, main, step_path
from durable._cli._location import PostgresStore, choose_store
from durable._drivers import _postgres
from durable._drivers._postgres import (
    DEFAULT_STORE,
    SCHEMA_VERSION,
    read_store_version,
)
from durable._json import history_json, info_json, page_json

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from types import ModuleType

T = TypeVar("T")

APP = """
import os

import durable


def _log(line):
    with open(os.environ["TESTS_APP_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\\n")
    return line


@durable.workflow(name="greet")
async def greet(ctx, who):
    hello = await ctx.step("hello", lambda: _log(f"hello {who}"))
    [reply] = await ctx.queue.next("reply", names=["reply"])
    return {"greeting": hello, "reply": reply}


@durable.workflow(name="boom")
async def boom(ctx, why):
    def explode():
        raise ValueError(why)

    await ctx.step("explode", explode, max_retries=0)


@durable.workflow(name="batches")
async def batches(ctx, last):
    async def batch(ctx, i):
        await ctx.join(
            "fanout",
            {
                "a": lambda ctx: ctx.step("work", lambda: i),
                "b": lambda ctx: ctx.step("work", lambda: -i),
            },
        )
        return durable.Loop.break_(i) if i >= last else durable.Loop.continue_(i + 1)

    total = await ctx.loop("batches", batch, state=1)
    await ctx.sleep("nap", 3600)
    return total


async def plain(ctx, n):
    return await ctx.step("double", lambda: n * 2)


workflows = [greet, boom, batches, plain]
by_name = {"greet": greet, "twice": plain}
"""
APP_SPEC = "tests_app:workflows"
ENV_VARS = (
    "DURABLE_URL",
    "DURABLE_TOKEN",
    "DURABLE_STORE",
    "DURABLE_POSTGRES",
    "DURABLE_PG_STORE",
)
TIMEOUT = 10.0  # seconds a subprocess may take to get ready or to stop


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``tests_app`` in the current directory, importable; a clean environment."""
    (tmp_path / "tests_app.py").write_text(APP, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TESTS_APP_LOG", str(tmp_path / "steps.log"))
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    sys.modules.pop("tests_app", None)
    yield importlib.import_module("tests_app")
    sys.modules.pop("tests_app", None)


@pytest.fixture
def store(app: ModuleType, tmp_path: Path, anyio_backend: str) -> Path:
    """A store holding one workflow in each state, written by real runs."""
    path = tmp_path / "store"

    async def prepare() -> None:
        async with durable.LevelDBDriver(path) as driver:
            await _write_one_in_each_state(driver, app)

    anyio.run(prepare, backend=anyio_backend)
    return path


async def _write_one_in_each_state(driver: durable.Driver, app: ModuleType) -> None:
    """done (completed), waiting and napping (sleeping), broken, gone (cancelled)."""

    def run(workflow_id: str, name: str, input: object) -> durable.WorkflowHandle:
        fn = getattr(app, name)
        return durable.run_workflow(workflow_id, fn, input, driver=driver, mode="yield")

    done = run("done", "greet", "ada")
    await done.message("reply", "hi")
    await done.result()
    await run("waiting", "greet", "bob").result()
    with pytest.raises(durable.WorkflowFailedError):
        await run("broken", "boom", "bad input").result()
    await run("napping", "batches", 3).result()
    gone = run("gone", "greet", "cy")
    await gone.result()
    await gone.cancel()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``durable *argv`` in-process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def read(path: Path, fn: Callable[[durable.Driver], Awaitable[T]]) -> T:
    """``await fn(driver)`` on the store at *path*."""

    async def call() -> T:
        async with durable.LevelDBDriver(path) as driver:
            return await fn(driver)

    return anyio.run(call)


def info_of(path: Path, workflow_id: str) -> durable.WorkflowInfo:
    async def info(driver: durable.Driver) -> durable.WorkflowInfo:
        return await durable.Worker(driver).handle(workflow_id).get_info()

    return read(path, info)


@contextmanager
def held(path: Path) -> Iterator[None]:
    """The store at *path* open (so locked) in this process."""
    driver = durable.LevelDBDriver(path)
    try:
        yield
    finally:
        anyio.run(driver.close)


# --- store mode ---------------------------------------------------------------------


class TestList:
    def test_lists_every_workflow_with_its_state(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "list", "--store", str(store))
        assert code == ExitCode.OK
        header, *rows = out.splitlines()
        assert header.split() == ["ID", "NAME", "STATE", "UPDATED", "WAITING"]
        states = {row.split()[0]: row.split()[2] for row in rows}
        assert states == {
            "done": "completed",
            "waiting": "sleeping",
            "broken": "failed",
            "napping": "sleeping",
            "gone": "cancelled",
        }
        assert "messages reply" in out

    def test_json_is_the_page_shape(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "list", "--json", "--store", str(store))

        async def page(driver: durable.Driver) -> object:
            return page_json(await durable.list_workflows(driver=driver))

        assert code == ExitCode.OK
        assert json.loads(out) == read(store, page)

    def test_filters_by_state_and_name(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["list", "--json", "--store", str(store), "--state", "sleeping"]
        _, out, _ = cli(capsys, *args, "--name", "greet")
        assert [row["workflow_id"] for row in json.loads(out)["workflows"]] == [
            "waiting"
        ]

    def test_pages_with_the_printed_cursor(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "list", "--store", str(store), "--limit", "3")
        cursor = out.splitlines()[-1].removeprefix("more: add --cursor ")
        code, rest, _ = cli(capsys, "list", "--store", str(store), "--cursor", cursor)
        assert code == ExitCode.OK
        assert len(out.splitlines()) == 1 + 3 + 1  # header, rows, cursor
        assert len(rest.splitlines()) == 1 + 2

    def test_an_unknown_state_is_a_usage_error(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "list", "--store", str(store), "--state", "asleep")
        assert code == ExitCode.USAGE
        assert "invalid choice: 'asleep'" in err

    def test_a_foreign_cursor_is_a_usage_error(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "list", "--store", str(store), "--cursor", "AAAA")
        assert code == ExitCode.USAGE
        assert err.startswith("durable: error: this cursor belongs to another")

    def test_an_empty_store_says_so(
        self, app: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with held(tmp_path / "empty"):
            pass
        code, out, _ = cli(capsys, "list", "--store", str(tmp_path / "empty"))
        assert (code, out) == (ExitCode.OK, "no workflows\n")


class TestShow:
    def test_shows_what_a_waiting_workflow_waits_for(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "show", "waiting", "--store", str(store))
        assert code == ExitCode.OK
        assert "state     sleeping" in out
        assert 'input     "bob"' in out
        assert "waiting   messages reply" in out

    def test_shows_the_error_and_traceback_of_a_failed_workflow(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "show", "broken", "--store", str(store))
        assert "error     StepExhaustedError: step 'explode' failed" in out
        assert "traceback:" in out
        assert "ValueError: bad input" in out

    def test_json_is_the_info_shape(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "show", "done", "--json", "--store", str(store))
        expected = info_json(info_of(store, "done"))
        assert json.loads(out) == expected
        assert expected["output"] == {"greeting": "hello ada", "reply": "hi"}

    def test_an_unknown_id_is_not_found(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = cli(capsys, "show", "nobody", "--store", str(store))
        assert (code, out) == (ExitCode.NOT_FOUND, "")
        assert err.startswith("durable: error: no workflow 'nobody'")
        assert err.count("\n") == 1


class TestHistory:
    def test_draws_loops_iterations_joins_and_branches_as_a_tree(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "history", "napping", "--store", str(store))
        lines = out.splitlines()
        assert code == ExitCode.OK
        assert lines[0] == "napping"
        assert lines[1].startswith("├── loop batches: completed")
        assert lines[1].endswith("→ 3")
        assert lines[2] == "│   ├── iteration 0: completed"
        assert lines[3].startswith("│   │   └── join fanout: completed")
        assert lines[4].startswith("│   │       ├── branch a: completed")
        assert "step work: completed, 1 attempt, started " in lines[5]
        assert lines[-1].startswith("└── sleep nap: pending, until ")

    def test_shows_how_a_step_failed(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "history", "broken", "--store", str(store))
        assert "step explode: failed, 1 attempt" in out
        assert "; exhausted: ValueError: bad input" in out

    def test_json_is_the_history_shape(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "history", "napping", "--json", "--store", str(store))

        async def history(driver: durable.Driver) -> object:
            return history_json(
                await durable.Worker(driver).handle("napping").get_history()
            )

        assert json.loads(out) == read(store, history)


class TestMessage:
    def test_a_message_reaches_the_waiting_workflow(
        self, app: ModuleType, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(
            capsys, "message", "waiting", "reply", '{"n": 1}', "--store", str(store)
        )
        assert code == ExitCode.OK
        assert out.startswith("message 'reply' stored; workflow 'waiting' (greet)")

        async def finish(driver: durable.Driver) -> object:
            handle = durable.run_workflow("waiting", app.greet, None, driver=driver)
            return (await handle.result()).output

        assert read(store, finish) == {"greeting": "hello bob", "reply": {"n": 1}}

    def test_reads_the_data_from_stdin(
        self,
        store: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(sys, "stdin", _Stdin("[1, 2]"))
        args = ["message", "waiting", "reply", "-", "--json", "--store", str(store)]
        code, out, _ = cli(capsys, *args)
        assert (code, json.loads(out)["pending_messages"]) == (ExitCode.OK, 1)

    @pytest.mark.parametrize("data", ["hi", "{'n': 1}", "NaN", "[1,", ""])
    def test_invalid_json_is_a_usage_error(
        self, store: Path, capsys: pytest.CaptureFixture[str], data: str
    ) -> None:
        args = ["message", "waiting", "reply", data, "--store", str(store)]
        code, _, err = cli(capsys, *args)
        assert code == ExitCode.USAGE
        assert err.startswith("durable: error: the message data is not valid JSON")
        assert err.count("\n") == 1

    def test_a_completed_workflow_refuses(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["message", "done", "reply", "1", "--store", str(store)]
        code, _, err = cli(capsys, *args)
        assert code == ExitCode.REFUSED
        assert "is completed and will never read another message" in err

    def test_an_unknown_workflow_is_not_found_and_gets_nothing(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["message", "nobody", "reply", "1", "--store", str(store)]
        assert cli(capsys, *args)[0] == ExitCode.NOT_FOUND
        assert cli(capsys, "show", "nobody", "--store", str(store))[0] == 3  # none


class TestSteering:
    def test_cancel_cancels_for_good(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "cancel", "waiting", "--store", str(store))
        assert (code, out) == (ExitCode.OK, "workflow 'waiting' (greet) is cancelled\n")
        assert info_of(store, "waiting").state == "cancelled"

    def test_cancel_of_an_unknown_id_stores_nothing(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli(capsys, "cancel", "nobody", "--store", str(store))[0] == 3
        assert cli(capsys, "show", "nobody", "--store", str(store))[0] == 3

    def test_recover_makes_a_failed_workflow_due(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "recover", "broken", "--json", "--store", str(store))
        info = json.loads(out)
        assert code == ExitCode.OK
        assert (info["state"], info["error"]) == ("pending", None)
        assert info["alarm_at"] is not None

    def test_wake_makes_a_sleeping_workflow_due(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        before = info_of(store, "napping").alarm_at
        assert before is not None
        code, out, _ = cli(capsys, "wake", "napping", "--json", "--store", str(store))
        assert code == ExitCode.OK
        assert json.loads(out)["alarm_at"] < before

    def test_replay_from_a_step_reruns_it(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(
            capsys, "replay-from", "done", "hello", "--store", str(store)
        )
        assert (code, out) == (ExitCode.OK, "workflow 'done' (greet) is pending\n")

        async def history(driver: durable.Driver) -> object:
            return await durable.Worker(driver).handle("done").get_history()

        assert read(store, history) == ()

    def test_replay_from_a_refused_target_is_refused(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["replay-from", "napping", "batches", "2", "fanout", "a", "work"]
        code, _, err = cli(capsys, *args, "--store", str(store))
        assert code == ExitCode.REFUSED
        assert "cannot replay workflow 'napping' from ('batches', 2, 'fanout'" in err

    def test_a_step_path_turns_whole_numbers_into_iterations(self) -> None:
        assert step_path(["charge"]) == "charge"
        assert step_path(["batches", "3", "fetch"]) == ("batches", 3, "fetch")


class TestResult:
    def test_prints_the_output_of_a_completed_workflow(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "result", "done", "--store", str(store))
        assert code == ExitCode.OK
        assert json.loads(out) == {"greeting": "hello ada", "reply": "hi"}

    def test_json_is_the_result_shape(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, out, _ = cli(capsys, "result", "done", "--json", "--store", str(store))
        assert json.loads(out) == {
            "state": "completed",
            "output": {"greeting": "hello ada", "reply": "hi"},
            "sleep_until": None,
            "waiting_for": None,
        }

    @pytest.mark.parametrize(
        ("workflow_id", "says"),
        [("broken", "failed: StepExhaustedError"), ("gone", "is cancelled")],
    )
    def test_a_failed_or_cancelled_workflow_fails(
        self,
        store: Path,
        capsys: pytest.CaptureFixture[str],
        workflow_id: str,
        says: str,
    ) -> None:
        code, out, err = cli(capsys, "result", workflow_id, "--store", str(store))
        assert (code, out) == (ExitCode.FAILED, "")
        assert says in err

    def test_an_unfinished_workflow_is_not_finished(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = cli(
            capsys, "result", "waiting", "--json", "--store", str(store)
        )
        assert code == ExitCode.NOT_FINISHED
        assert json.loads(out)["waiting_for"] == ["reply"]  # the info shape (202)
        assert "has not finished: it is sleeping, waiting for messages reply" in err

    def test_wait_needs_a_server(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["result", "waiting", "--wait", "1", "--store", str(store)]
        code, _, err = cli(capsys, *args)
        assert code == ExitCode.USAGE
        assert "--wait needs --url" in err


class TestStartOnAStore:
    def test_starts_with_the_apps_registry_for_the_next_worker(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["start", "greet", "new", '"dee"', "--app", APP_SPEC]
        code, out, _ = cli(capsys, *args, "--store", str(store))
        assert (code, out) == (ExitCode.OK, "workflow 'new' (greet) is pending\n")
        info = info_of(store, "new")
        assert (info.input, info.alarm_at is not None) == ("dee", True)

    def test_needs_the_app_or_a_server(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "start", "greet", "new", "1", "--store", str(store))
        assert code == ExitCode.USAGE
        assert "--url URL, or name them with --app MODULE:OBJECT" in err

    def test_an_unregistered_name_is_not_found(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["start", "nope", "new", "1", "--app", APP_SPEC, "--store", str(store)]
        code, _, err = cli(capsys, *args)
        assert code == ExitCode.NOT_FOUND
        assert "no workflow with the name 'nope' is registered" in err

    def test_an_id_running_another_workflow_is_refused(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["start", "boom", "done", "1", "--app", APP_SPEC, "--store", str(store)]
        code, _, err = cli(capsys, *args)
        assert code == ExitCode.REFUSED
        assert "already exists and runs 'greet', not 'boom'" in err


class TestUnavailable:
    def test_a_store_a_worker_holds_suggests_the_url(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with held(store):
            code, _, err = cli(capsys, "list", "--store", str(store))
        assert code == ExitCode.UNAVAILABLE
        assert "is held by another process" in err
        assert "--url URL" in err

    def test_a_missing_store_is_not_created(
        self, app: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "list", "--store", str(tmp_path / "nowhere"))
        assert code == ExitCode.UNAVAILABLE
        assert "no durable store at" in err
        assert not (tmp_path / "nowhere").exists()

    def test_the_default_store_is_durable_store(
        self,
        store: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DURABLE_STORE", str(store))
        assert cli(capsys, "show", "done")[0] == ExitCode.OK

    def test_a_server_that_does_not_answer_is_unavailable(
        self, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "list", "--url", f"http://127.0.0.1:{_free_port()}")
        assert code == ExitCode.UNAVAILABLE
        assert "cannot reach the durable server at http://127.0.0.1:" in err


class TestUsage:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["list", "--url", "http://127.0.0.1:1", "--store", "s"],
            ["list", "--token", "t"],
            ["list", "--url", "ftp://127.0.0.1:1"],
            ["list", "--limit", "0"],
            ["replay-from", "done"],
            ["start", "greet", "x", "1", "--url", "http://h", "--app", APP_SPEC],
            ["worker", "tests_app"],
            ["worker", "no_such_module:workflows"],
            ["worker", "tests_app:nothing"],
            ["worker", "tests_app:_log"],
            ["worker", APP_SPEC, "--http", "nowhere"],
            ["worker", APP_SPEC, "--token", "t"],
            # PostgreSQL stores: all refused before anything connects
            ["list", "--store", "s", "--postgres", "dbname=test"],
            ["list", "--url", "http://127.0.0.1:1", "--postgres", "dbname=test"],
            ["list", "--url", "http://127.0.0.1:1", "--pg-store", "s"],
            ["list", "--pg-store", "s"],
            ["list", "--postgres", "dbname=test", "--token", "t"],
            ["list", "--postgres", "not a dsn"],
            ["show", "x", "--postgres", "dbname=test", "--pg-store", "pg_s"],
            ["worker", APP_SPEC, "--store", "s", "--postgres", "dbname=test"],
            ["worker", APP_SPEC, "--pg-store", "s"],
            ["worker", APP_SPEC, "--postgres", "dbname=test", "--pg-store", "Bad"],
            ["worker", APP_SPEC, "--lease", "0"],
            ["worker", APP_SPEC, "--lease", "inf"],
            ["migrate"],
            ["migrate", "--store", "s"],
            ["migrate", "--url", "http://127.0.0.1:1", "--postgres", "dbname=test"],
            ["migrate", "--postgres", "dbname=test", "--pg-store", "Bad"],
        ],
    )
    def test_bad_arguments_are_usage_errors(
        self, app: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]
    ) -> None:
        code, out, err = cli(capsys, *argv)
        assert (code, out) == (ExitCode.USAGE, "")
        assert "error: " in err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli(capsys, "--version") == (ExitCode.OK, durable.__version__ + "\n", "")

    def test_ctrl_c_exits_130(
        self,
        store: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(sys, "stdin", _Stdin(None))
        args = ["message", "waiting", "reply", "-", "--store", str(store)]
        assert cli(capsys, *args) == (
            ExitCode.INTERRUPTED,
            "",
            "durable: error: interrupted\n",
        )

    def test_a_worker_cannot_open_a_held_store(
        self, store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with held(store):
            code, _, err = cli(capsys, "worker", APP_SPEC, "--store", str(store))
        assert code == ExitCode.UNAVAILABLE
        assert "is one running already?" in err

    def test_a_worker_whose_address_is_taken_is_unavailable(
        self, app: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            argv = ["worker", APP_SPEC, "--store", str(tmp_path / "s"), "--http"]
            code, _, err = cli(capsys, *argv, address)
        assert code == ExitCode.UNAVAILABLE
        assert f"durable: error: cannot serve on {address}" in err


class TestLoadWorkflows:
    def test_a_dict_names_its_plain_functions(self, app: ModuleType) -> None:
        workflows = load_workflows("tests_app:by_name")
        assert [workflow.name for workflow in workflows] == ["greet", "twice"]
        assert workflows[1].fn is app.plain

    def test_a_plain_async_function_is_named_after_itself(
        self, app: ModuleType
    ) -> None:
        assert [w.name for w in load_workflows("tests_app:plain")] == ["plain"]

    def test_a_key_that_renames_a_workflow_is_refused(
        self, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        app.by_name["other"] = app.greet
        code, _, err = cli(capsys, "worker", "tests_app:by_name")
        assert code == ExitCode.USAGE
        assert "the key 'other' holds the workflow named 'greet'" in err


def test_the_docs_list_every_exit_code() -> None:
    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text("utf-8")
    for code in ExitCode:
        assert f"| {code.value} |" in text, code


class _Stdin:
    def __init__(self, text: str | None) -> None:
        self.text = text

    def read(self) -> str:
        if self.text is None:
            raise KeyboardInterrupt
        return self.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it now


# --- processes ----------------------------------------------------------------------


class _Process:
    """``python -m durable ...`` in a directory, with its stderr read line by line."""

    def __init__(self, cwd: Path, *argv: str) -> None:
        env = {**os.environ, "TESTS_APP_LOG": str(cwd / "steps.log")}
        for name in ENV_VARS:
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "durable", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        stream = self.process.stderr
        if stream is not None:
            for line in stream:
                self.lines.put(line)

    def wait_for(self, text: str) -> str:
        """The first stderr line containing *text* (bounded by TIMEOUT)."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no {text!r} on stderr; got {self.stderr}")
            self.stderr.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("the worker did not stop after SIGTERM")


@contextmanager
def running(cwd: Path, *argv: str) -> Iterator[_Process]:
    process = _Process(cwd, *argv)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        process.reader.join(TIMEOUT)  # it reads to the end of the closed pipe
        if process.process.stderr is not None:
            process.process.stderr.close()


def _poll(ready: Callable[[], bool]) -> None:
    """Wait, polling (bounded by TIMEOUT), until *ready()*."""
    for _ in range(int(TIMEOUT / 0.02)):
        if ready():
            return
        threading.Event().wait(0.02)  # readiness polling, bounded
    pytest.fail("never ready")


def _show(
    capsys: pytest.CaptureFixture[str], workflow_id: str, url: list[str]
) -> dict[str, object]:
    code, out, err = cli(capsys, "show", workflow_id, "--json", *url)
    assert code == ExitCode.OK, err
    info: dict[str, object] = json.loads(out)
    return info


@pytest.mark.crash
def test_worker_stops_gracefully_on_sigterm_and_its_workflows_resume(
    app: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    args = ["start", "greet", "w1", '"ada"', "--app", APP_SPEC, "--store", store]
    assert cli(capsys, *args)[0] == ExitCode.OK
    with running(tmp_path, "worker", APP_SPEC, "--store", store) as worker:
        line = worker.wait_for(" runs ")  # logged once the store is open
        assert f"on the store at {store} runs " in line
        assert "leased" not in line  # a LevelDB store has one worker: no lease
        log = tmp_path / "steps.log"
        _poll(lambda: log.exists() and "hello ada" in log.read_text("utf-8"))
        assert worker.stop() == ExitCode.OK
        worker.wait_for("shutting down gracefully")
    assert cli(capsys, "message", "w1", "reply", '"bye"', "--store", store)[0] == 0

    async def resume(driver: durable.Driver) -> object:
        handle = durable.run_workflow("w1", app.greet, None, driver=driver)
        return (await handle.result()).output

    assert read(Path(store), resume) == {"greeting": "hello ada", "reply": "bye"}
    assert (tmp_path / "steps.log").read_text("utf-8") == "hello ada\n"  # ran once


TOKEN = "s3cret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``durable worker tests_app:workflows --http 127.0.0.1:0``; its URL."""
    cwd = tmp_path_factory.mktemp("server")
    (cwd / "tests_app.py").write_text(APP, encoding="utf-8")
    argv = ["worker", APP_SPEC, "--store", str(cwd / "store")]
    with running(cwd, *argv, "--http", "127.0.0.1:0", "--token", TOKEN) as worker:
        line = worker.wait_for("serving HTTP on ")
        yield line.split("serving HTTP on ")[1].strip()
        assert worker.stop() == ExitCode.OK


@pytest.mark.crash
class TestServer:
    def url(self, server: str) -> list[str]:
        return ["--url", server, "--token", TOKEN]

    def test_start_message_result(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        code, out, _ = cli(capsys, "start", "greet", "s1", '"bob"', *url)
        assert (code, out.startswith("workflow 's1' (greet) is ")) == (0, True)
        assert cli(capsys, "message", "s1", "reply", '{"ok": true}', *url)[0] == 0
        code, out, _ = cli(capsys, "result", "s1", "--wait", "5", *url)
        assert code == ExitCode.OK
        assert json.loads(out) == {"greeting": "hello bob", "reply": {"ok": True}}

    def test_result_of_an_unfinished_workflow_is_not_finished(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        cli(capsys, "start", "greet", "s2", '"cy"', *url)
        _poll(lambda: _show(capsys, "s2", url)["state"] == "sleeping")
        code, out, err = cli(capsys, "result", "s2", "--wait", "0.2", "--json", *url)
        assert code == ExitCode.NOT_FINISHED
        assert json.loads(out)["workflow_id"] == "s2"
        assert "has not finished after 0.2 s" in err

    def test_list_and_history(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        cli(capsys, "start", "batches", "b1", "2", *url)
        _poll(lambda: _show(capsys, "b1", url)["sleep_until"] is not None)
        code, out, _ = cli(capsys, "list", "--name", "batches", "--json", *url)
        assert code == ExitCode.OK
        assert [row["workflow_id"] for row in json.loads(out)["workflows"]] == ["b1"]
        code, out, _ = cli(capsys, "history", "b1", *url)
        assert code == ExitCode.OK
        assert "iteration 1: completed" in out
        assert "sleep nap: pending, until " in out

    def test_a_failed_workflow_fails_its_result(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        cli(capsys, "start", "boom", "f1", '"no luck"', *url)
        code, _, err = cli(capsys, "result", "f1", "--wait", "5", *url)
        assert code == ExitCode.FAILED
        assert "ValueError: no luck" in err

    def test_cancel_then_message_is_refused(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        cli(capsys, "start", "greet", "c1", '"dee"', *url)
        code, out, _ = cli(capsys, "cancel", "c1", *url)
        assert (code, out) == (ExitCode.OK, "workflow 'c1' (greet) is cancelled\n")
        assert cli(capsys, "message", "c1", "reply", "1", *url)[0] == ExitCode.REFUSED
        assert cli(capsys, "result", "c1", *url)[0] == ExitCode.FAILED

    def test_unknown_ids_and_names_are_not_found(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        assert cli(capsys, "show", "nobody", *url)[0] == ExitCode.NOT_FOUND
        assert cli(capsys, "start", "nope", "x", "1", *url)[0] == ExitCode.NOT_FOUND

    def test_a_wrong_token_is_unavailable(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "list", "--url", server, "--token", "guess")
        assert code == ExitCode.UNAVAILABLE
        assert "the bearer token is wrong" in err
        assert "--token or $DURABLE_TOKEN" in err

    def test_the_url_and_token_come_from_the_environment(
        self,
        server: str,
        app: ModuleType,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DURABLE_URL", server)
        monkeypatch.setenv("DURABLE_TOKEN", TOKEN)
        assert cli(capsys, "list")[0] == ExitCode.OK

    def test_json_is_what_the_http_api_answers(
        self, server: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = self.url(server)
        cli(capsys, "start", "boom", "j1", '"eve"', *url)
        cli(capsys, "result", "j1", "--wait", "5", *url)  # final: nothing changes now
        _, out, _ = cli(capsys, "show", "j1", "--json", *url)
        request = urllib.request.Request(
            server + "/workflows/j1", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert json.loads(out) == json.loads(response.read())


# --- PostgreSQL stores --------------------------------------------------------------


@pytest.fixture
def pg(app: ModuleType, postgres_dsn: str, postgres_store: str) -> list[str]:
    """The options that name a fresh PostgreSQL store (dropped after the test)."""
    return ["--postgres", postgres_dsn, "--pg-store", postgres_store]


@pytest.fixture
def pg_full(
    app: ModuleType,
    pg: list[str],
    postgres_dsn: str,
    postgres_store: str,
    anyio_backend: str,
) -> list[str]:
    """`pg`, holding one workflow in each state, written by real runs."""

    async def prepare() -> None:
        async with durable.PostgresDriver(postgres_dsn, store=postgres_store) as driver:
            await _write_one_in_each_state(driver, app)

    anyio.run(prepare, backend=anyio_backend)
    return pg


def pg_schema_version(dsn: str, store: str, version: int | None = None) -> int | None:
    """The store's schema_version row, after setting it to *version* if given."""
    table = sql.SQL("{}.schema_version").format(sql.Identifier(store))
    with psycopg.connect(dsn, autocommit=True) as conn:
        if version is not None:
            conn.execute(sql.SQL("UPDATE {} SET version = %s").format(table), [version])
        row = conn.execute(sql.SQL("SELECT version FROM {}").format(table)).fetchone()
    return None if row is None else int(row[0])


class TestStoreModeOnPostgres:
    def test_lists_shows_and_draws_the_history(
        self, pg_full: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "list", *pg_full)
        assert code == ExitCode.OK
        states = {row.split()[0]: row.split()[2] for row in out.splitlines()[1:]}
        assert states == {
            "done": "completed",
            "waiting": "sleeping",
            "broken": "failed",
            "napping": "sleeping",
            "gone": "cancelled",
        }
        code, out, _ = cli(capsys, "show", "waiting", *pg_full)
        assert code == ExitCode.OK
        assert "waiting   messages reply" in out
        code, out, _ = cli(capsys, "history", "napping", *pg_full)
        assert code == ExitCode.OK
        assert out.splitlines()[1].startswith("├── loop batches: completed")
        assert out.splitlines()[-1].startswith("└── sleep nap: pending, until ")

    def test_a_message_reaches_the_waiting_workflow(
        self,
        app: ModuleType,
        pg_full: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        code, out, _ = cli(capsys, "message", "waiting", "reply", '"hi"', *pg_full)
        assert code == ExitCode.OK
        assert out.startswith("message 'reply' stored; workflow 'waiting' (greet)")

        async def finish() -> object:
            async with durable.PostgresDriver(postgres_dsn, store=postgres_store) as d:
                handle = durable.run_workflow("waiting", app.greet, None, driver=d)
                return (await handle.result()).output

        assert anyio.run(finish) == {"greeting": "hello bob", "reply": "hi"}

    def test_cancel_cancels_for_good(
        self, pg_full: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "cancel", "waiting", *pg_full)
        assert (code, out) == (ExitCode.OK, "workflow 'waiting' (greet) is cancelled\n")
        assert cli(capsys, "message", "waiting", "reply", "1", *pg_full)[0] == 4
        assert cli(capsys, "result", "waiting", *pg_full)[0] == ExitCode.FAILED

    def test_result_waits_only_as_long_as_asked(
        self, pg_full: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "result", "done", "--wait", "5", *pg_full)
        assert (code, json.loads(out)) == (0, {"greeting": "hello ada", "reply": "hi"})
        code, _, err = cli(capsys, "result", "waiting", "--wait", "0.1", *pg_full)
        assert code == ExitCode.NOT_FINISHED
        assert "has not finished after 0.1 s" in err
        assert cli(capsys, "result", "nobody", "--wait", "5", *pg_full)[0] == 3


class TestChoosingAPostgresStore:
    def test_a_missing_store_is_not_created(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        code, out, err = cli(capsys, "list", *pg)
        assert (code, out) == (ExitCode.UNAVAILABLE, "")
        assert f"there is no durable store {postgres_store!r}" in err
        assert read_store_version(postgres_dsn, store=postgres_store) is None

    def test_the_store_comes_from_the_environment(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DURABLE_POSTGRES", postgres_dsn)
        monkeypatch.setenv("DURABLE_PG_STORE", postgres_store)
        assert cli(capsys, "migrate")[0] == ExitCode.OK
        assert cli(capsys, "list") == (ExitCode.OK, "no workflows\n", "")

    def test_naming_a_store_wins_over_durable_url(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DURABLE_URL", f"http://127.0.0.1:{_free_port()}")
        monkeypatch.setenv("DURABLE_POSTGRES", postgres_dsn)
        assert cli(capsys, "migrate", "--pg-store", postgres_store)[0] == 0
        assert cli(capsys, "list", "--pg-store", postgres_store)[0] == ExitCode.OK
        assert cli(capsys, "list")[0] == ExitCode.UNAVAILABLE  # the server

    def test_without_the_extra_it_says_what_to_install(
        self,
        pg: list[str],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
        monkeypatch.delitem(sys.modules, "durable._drivers._postgres")
        for argv in (["list"], ["migrate"], ["worker", APP_SPEC]):
            code, out, err = cli(capsys, *argv, *pg)
            assert (code, out) == (ExitCode.UNAVAILABLE, "")
            assert "(psycopg is missing); install it with pip install " in err
            assert "'durable[postgres]'" in err

    def test_without_pg_store_the_store_is_the_drivers_default(
        self, pg: list[str], postgres_dsn: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert choose_store(None, postgres_dsn, None) == PostgresStore(
            postgres_dsn, DEFAULT_STORE
        )
        assert cli(capsys, "list", "--help")[1].count(f"else {DEFAULT_STORE})") == 1


class TestMigrate:
    def test_creates_a_fresh_store_then_finds_it_current(
        self, pg: list[str], postgres_store: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "migrate", *pg)
        store = f"the PostgreSQL store {postgres_store!r}"
        assert (code, out) == (0, f"created {store} at schema version 1\n")
        code, out, _ = cli(capsys, "migrate", *pg)
        current = f"{store} is at schema version 1, the latest; nothing to do\n"
        assert (code, out) == (ExitCode.OK, current)
        code, out, _ = cli(capsys, "migrate", "--json", *pg)
        answer = {"store": postgres_store, "schema_version": SCHEMA_VERSION}
        assert (code, json.loads(out)) == (ExitCode.OK, answer)
        assert cli(capsys, "list", *pg)[:2] == (ExitCode.OK, "no workflows\n")

    def test_migrates_a_store_of_an_older_version(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        assert cli(capsys, "migrate", *pg)[0] == ExitCode.OK
        # as if this durable wrote version 2, adding a table to version 1
        monkeypatch.setattr(_postgres, "SCHEMA_VERSION", 2)
        upgrade = ("CREATE TABLE {s}.added (id integer)",)
        monkeypatch.setattr(_postgres, "_UPGRADES", (upgrade,))
        code, out, _ = cli(capsys, "migrate", *pg)
        store = f"the PostgreSQL store {postgres_store!r}"
        assert (code, out) == (0, f"migrated {store} from schema version 1 to 2\n")
        assert pg_schema_version(postgres_dsn, postgres_store) == 2
        assert cli(capsys, "list", *pg)[0] == ExitCode.OK  # the driver agrees

    def test_a_store_of_a_newer_durable_is_refused(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        assert cli(capsys, "migrate", *pg)[0] == ExitCode.OK
        pg_schema_version(postgres_dsn, postgres_store, 99)
        for argv in (["migrate"], ["list"]):
            code, out, err = cli(capsys, *argv, *pg)
            assert (code, out) == (ExitCode.UNAVAILABLE, "")
            assert "has schema version 99, newer than version 1" in err
            assert "upgrade durable to use it" in err
        assert pg_schema_version(postgres_dsn, postgres_store) == 99

    def test_a_schema_of_other_tables_is_refused(
        self,
        pg: list[str],
        postgres_dsn: str,
        postgres_store: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            schema = sql.Identifier(postgres_store)
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            conn.execute(sql.SQL("CREATE TABLE {}.mine (id int)").format(schema))
        code, _, err = cli(capsys, "migrate", *pg)
        assert code == ExitCode.UNAVAILABLE
        assert "exists and is not a durable store" in err

    def test_an_unreachable_database_is_unavailable(
        self, app: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        dsn = f"host=127.0.0.1 port={_free_port()} dbname=test user=root"
        code, out, err = cli(capsys, "migrate", "--postgres", dsn)
        assert (code, out) == (ExitCode.UNAVAILABLE, "")
        assert err.startswith("durable: error: cannot connect to PostgreSQL (host=")
        assert err.count("\n") == 1


@pytest.mark.crash
def test_workers_share_a_postgres_store_with_the_commands(
    app: ModuleType,
    pg: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leased = ["worker", APP_SPEC, *pg, "--lease", "2"]
    default = ["worker", APP_SPEC, *pg]  # the lease defaults to 30 s on PostgreSQL
    with running(tmp_path, *leased) as first, running(tmp_path, *default) as second:
        assert "runs batches, boom, greet, plain, each run leased for 2 s" in (
            first.wait_for(" runs ")
        )
        assert "each run leased for 30 s" in second.wait_for(" runs ")
        ids = [f"g{i}" for i in range(4)]
        for workflow_id in ids:
            start = ["start", "greet", workflow_id, f'"{workflow_id}"']
            assert cli(capsys, *start, "--app", APP_SPEC, *pg)[0] == ExitCode.OK
        boom = ["start", "boom", "f1", '"no luck"', "--app", APP_SPEC]
        assert cli(capsys, *boom, *pg)[0] == ExitCode.OK
        for workflow_id in ids:
            assert cli(capsys, "message", workflow_id, "reply", "1", *pg)[0] == 0
        for workflow_id in ids:
            code, out, err = cli(capsys, "result", workflow_id, "--wait", "10", *pg)
            assert code == ExitCode.OK, err
            assert json.loads(out) == {"greeting": f"hello {workflow_id}", "reply": 1}
        code, _, err = cli(capsys, "result", "f1", "--wait", "10", *pg)
        assert code == ExitCode.FAILED
        assert "ValueError: no luck" in err
        assert (first.stop(), second.stop()) == (ExitCode.OK, ExitCode.OK)
        assert "other workers on the PostgreSQL store" in first.wait_for("stopped;")
    hellos = sorted((tmp_path / "steps.log").read_text("utf-8").splitlines())
    assert hellos == [f"hello {workflow_id}" for workflow_id in ids]  # each ran once
