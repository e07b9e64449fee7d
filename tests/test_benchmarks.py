"""The benchmark suite runs end to end at a tiny size, so it never rots (not timed).

The PostgreSQL runs use the local server that .ci/run starts (trust auth, user root,
database test; DURABLE_TEST_POSTGRES_DSN overrides it, as for the driver tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["W0", "W1", "W2", "W3", "W4", "W5", "W5p", "W6", "WH", "W7", "WD"]


def run_suite(*args: str) -> list[dict[str, Any]]:
    return run_suite_process(*args)[1]


def run_suite_process(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """The suite's process id (it names its PostgreSQL stores) and its JSON lines."""
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    if process.returncode:
        raise AssertionError(f"the suite exited with {process.returncode}:\n{err}")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return process.pid, lines


@pytest.mark.parametrize("driver", ["leveldb", "memory"])
def test_every_workload_prints_one_json_line_of_the_spec(driver: str) -> None:
    lines = run_suite("--n", "20", "--driver", driver)
    assert [line["workload"] for line in lines] == WORKLOADS
    for line in lines:
        assert set(line) == {"workload", "driver", "n", "seconds", "per_sec", "extra"}
        assert line["per_sec"] > 0
        assert line["extra"]["sync"] is False
    by_name = {line["workload"]: line for line in lines}
    assert by_name["W2"]["extra"]["executed"] == 0
    assert by_name["W1"]["extra"]["executed"] == 20
    assert by_name["W0"]["driver"] == "leveldb"
    assert_wd_ran_every_step_once(by_name["WD"], 20)


def assert_wd_ran_every_step_once(line: dict[str, Any], n: int) -> None:
    """WD's run succeeded with 10 n + 2 steps, each executed once (the suite checks
    the ids too)."""
    extra = line["extra"]
    assert line["n"] == n
    assert extra["status"] == "succeeded"
    assert extra["steps"] == extra["executed"] == 10 * n + 2
    assert extra["read_seconds"] > 0
    # per_sec is steps/s, not n/s
    assert line["per_sec"] == pytest.approx(extra["steps"] / line["seconds"], rel=0.01)


def test_wd_runs_a_dag_of_10_n_steps_alone_on_trio() -> None:
    [line] = run_suite("--only", "wd", "--n", "30", "--backend", "trio")
    assert line["workload"] == "WD"
    assert_wd_ran_every_step_once(line, 30)
    assert line["extra"]["children"] == 30
    assert line["extra"]["grandchildren_each"] == 9


def test_only_and_sync_select_workloads_and_durability() -> None:
    lines = run_suite("--only", "w1,W4", "--n", "40", "--sync")
    assert [line["workload"] for line in lines] == ["W1", "W4"]
    assert all(line["extra"]["sync"] is True for line in lines)
    # W4 leaves a bounded number of keys: default history_keep 20, two keys each
    assert lines[1]["extra"]["keys"] <= 2 * 20 * 2 + 10


def test_an_unknown_workload_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "W9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "W9" in done.stderr


def stores_left_by(dsn: str, pid: int) -> list[str]:
    """The PostgreSQL stores the suite run *pid* made and did not drop."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
            (f"bench\\_{pid}\\_%",),
        ).fetchall()
    return [name for (name,) in rows]


def test_every_single_process_workload_runs_on_postgres(postgres_dsn: str) -> None:
    pid, lines = run_suite_process(
        "--driver",
        "postgres",
        "--dsn",
        postgres_dsn,
        "--n",
        "20",
        "--only",
        ",".join(WORKLOADS),
    )
    assert [line["workload"] for line in lines] == WORKLOADS
    for line in lines:
        assert line["driver"] == "postgres"
        assert line["per_sec"] > 0
        assert line["extra"]["sync"] is False
        assert line["extra"]["pool_size"] >= 1
    by_name = {line["workload"]: line for line in lines}
    assert by_name["W1"]["extra"]["executed"] == 20
    assert by_name["W2"]["extra"]["executed"] == 0
    assert by_name["W0"]["n"] >= 20  # W1's batches, replayed raw through psycopg
    assert_wd_ran_every_step_once(by_name["WD"], 20)
    assert stores_left_by(postgres_dsn, pid) == []


def test_w3w_runs_workflows_once_across_worker_processes(postgres_dsn: str) -> None:
    pid, [line] = run_suite_process(
        "--driver",
        "postgres",
        "--dsn",
        postgres_dsn,
        "--only",
        "W3w",
        "--n",
        "20",
        "--workers",
        "2,1",
    )
    assert line["workload"] == "W3w"
    assert line["driver"] == "postgres"
    extra = line["extra"]
    assert extra["workers"] == [1, 2]
    assert set(extra["by_workers"]) == {"1", "2"}
    assert extra["by_workers"]["1"]["ratio"] == 1.0
    for k, figures in extra["by_workers"].items():
        # the suite itself fails unless every workflow completed once, with its output
        assert sum(figures["workflows_by_worker"]) == 20
        assert len(figures["workflows_by_worker"]) == int(k)
        assert figures["per_sec"] > 0
    assert line["per_sec"] == extra["by_workers"]["2"]["per_sec"]
    assert stores_left_by(postgres_dsn, pid) == []


def test_w3w_needs_postgres() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "W3w"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "W3w runs only on --driver postgres" in done.stderr
