"""The benchmark suite runs end to end at a tiny size, so it never rots (not timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["W0", "W1", "W2", "W3", "W4", "W5", "W5p", "W6", "W7"]


def run_suite(*args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [
        json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")
    ]


@pytest.mark.parametrize("driver", ["leveldb", "memory"])
def test_every_workload_prints_one_json_line_of_the_spec(driver: str) -> None:
    lines = run_suite("--n", "20", "--driver", driver)
    assert [line["workload"] for line in lines] == WORKLOADS
    for line in lines:
        assert set(line) == {"workload", "driver", "n", "seconds", "per_sec", "extra"}
        assert line["per_sec"] > 0  # type: ignore[operator]
        assert line["extra"]["sync"] is False  # type: ignore[index]
    by_name = {line["workload"]: line for line in lines}
    assert by_name["W2"]["extra"]["executed"] == 0  # type: ignore[index]
    assert by_name["W1"]["extra"]["executed"] == 20  # type: ignore[index]
    assert by_name["W0"]["driver"] == "leveldb"


def test_only_and_sync_select_workloads_and_durability() -> None:
    lines = run_suite("--only", "w1,W4", "--n", "40", "--sync")
    assert [line["workload"] for line in lines] == ["W1", "W4"]
    assert all(line["extra"]["sync"] is True for line in lines)  # type: ignore[index]
    # W4 leaves a bounded number of keys: default history_keep 20, two keys each
    assert lines[1]["extra"]["keys"] <= 2 * 20 * 2 + 10  # type: ignore[index, operator]


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
