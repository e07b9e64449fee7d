"""Real crashes of a worker: SIGKILL a worker process mid-way, restart it on the store.

``programs/worker_app.py`` runs several multi-step workflows at once (with a durable
sleep each, so runs leave memory and return through the alarm index). The test kills
it at random moments and starts it again on the same LevelDB store until it finishes,
then checks that every workflow produced the output of an uninterrupted run and that
no step the store had recorded before a kill ran again after it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from durable import LevelDBDriver
from durable._history import COMPLETED, STEP, History

PROGRAM = Path(__file__).parent / "programs" / "worker_app.py"
WORKFLOWS = 5
STEPS = 8
DELAY = 0.003
KILLS = 3
TIMEOUT = 30.0

pytestmark = pytest.mark.crash


def command(store: Path, log: Path, backend: str) -> list[str]:
    return [
        sys.executable,
        str(PROGRAM),
        str(store),
        str(log),
        backend,
        str(WORKFLOWS),
        str(STEPS),
        str(DELAY),
    ]


def read_log(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


async def recorded_steps(store: Path) -> set[str]:
    """``"<workflow id> <step>"`` for every step the store holds as completed."""
    recorded = set()
    async with LevelDBDriver(store) as driver:
        for i in range(WORKFLOWS):
            history = await History.load(driver, f"chain-{i}")
            for entry in history.entries.values():
                if entry.kind == STEP and entry.status == COMPLETED:
                    recorded.add(f"chain-{i} {history.names[entry.name_index]}")
    return recorded


def run_to_end(store: Path, log: Path, backend: str) -> dict[str, int]:
    done = subprocess.run(
        command(store, log, backend),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=store.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(("seed", "backend"), [(1, "asyncio"), (2, "trio")])
def test_a_killed_worker_resumes_every_workflow_running_recorded_steps_once(
    tmp_path: Path, seed: int, backend: str
) -> None:
    rng = random.Random(seed)
    expected = run_to_end(tmp_path / "reference", tmp_path / "reference.log", backend)
    store, log = tmp_path / "store", tmp_path / "side-effects.log"
    total = WORKFLOWS * STEPS
    kills: list[tuple[int, set[str]]] = []  # (log lines at the kill, recorded then)
    for _ in range(KILLS):
        target = len(read_log(log)) + rng.randint(2, total // (KILLS + 1))
        process = subprocess.Popen(
            command(store, log, backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            deadline = time.perf_counter() + TIMEOUT
            while len(read_log(log)) < target and process.poll() is None:
                assert time.perf_counter() < deadline, "the worker made no progress"
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 2 * DELAY))
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            _, stderr = process.communicate(timeout=TIMEOUT)
        if process.returncode != -signal.SIGKILL:
            assert process.returncode == 0, stderr
            break  # finished before the kill landed
        kills.append((len(read_log(log)), anyio.run(recorded_steps, store)))

    assert kills, "no kill landed"
    assert run_to_end(store, log, backend) == expected
    executions = read_log(log)
    assert {line.split()[0] for line in executions} == set(expected)
    for lines, recorded in kills:
        again = [line for line in executions[lines:] if line in recorded]
        assert again == [], f"recorded steps ran again after a kill: {again}"
    # every step ran at least once, and more only when a kill caught it unrecorded
    assert len(set(executions)) == total
    assert len(executions) - total <= len(kills) * 3  # at most `concurrency` per kill
