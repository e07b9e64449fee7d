"""Many worker processes on one PostgreSQL store: sharing, takeover, restarts.

Each test starts real processes (``programs/pg_worker.py``) that share a fresh store
in the local PostgreSQL, each running a `durable.Worker` with a lease. Every step
execution is logged with the pid that ran it, so the tests can check that each
workflow completed once with the output of an uninterrupted run, that no step the
store had recorded ran again, and who took over after a kill.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from durable import PostgresDriver
from durable._history import COMPLETED, STEP, History

PROGRAM = Path(__file__).parent / "programs" / "pg_worker.py"
WORKFLOWS = 12
STEPS = 6
DELAY = 0.01
TIMEOUT = 60.0

pytestmark = pytest.mark.crash


def expected_outputs() -> dict[str, int]:
    outputs = {}
    for seed in range(WORKFLOWS):
        total = seed
        for i in range(STEPS):
            total = total * 3 + i
        outputs[f"chain-{seed}"] = total
    return outputs


def spawn(
    dsn: str, store: str, log: Path, backend: str, lease: float
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(PROGRAM),
        dsn,
        store,
        str(log),
        backend,
        str(WORKFLOWS),
        str(STEPS),
        str(DELAY),
        str(lease),
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str]) -> dict[str, int]:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    return json.loads(stdout)  # type: ignore[no-any-return]


def executions(log: Path) -> list[tuple[str, str]]:
    """(``"<workflow> <step>"``, pid) for every logged step execution."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text(encoding="utf-8").splitlines():
        workflow, step, pid = line.split()
        rows.append((f"{workflow} {step}", pid))
    return rows


async def recorded_steps(dsn: str, store: str) -> set[str]:
    recorded = set()
    async with PostgresDriver(dsn, store=store) as driver:
        for i in range(WORKFLOWS):
            history = await History.load(driver, f"chain-{i}")
            for entry in history.entries.values():
                if entry.kind == STEP and entry.status == COMPLETED:
                    recorded.add(f"chain-{i} {history.names[entry.name_index]}")
    return recorded


def wait_for_lines(log: Path, count: int, *processes: subprocess.Popen[str]) -> None:
    deadline = time.perf_counter() + TIMEOUT
    while len(executions(log)) < count:
        assert time.perf_counter() < deadline, "the workers made no progress"
        for process in processes:
            assert process.poll() is None, process.communicate()[1]
        time.sleep(0.005)


@pytest.mark.parametrize(("processes", "backend"), [(2, "asyncio"), (4, "trio")])
def test_workers_share_one_store_and_every_workflow_completes_once(
    postgres_dsn: str, postgres_store: str, tmp_path: Path, processes: int, backend: str
) -> None:
    log = tmp_path / "steps.log"
    workers = [
        spawn(postgres_dsn, postgres_store, log, backend, 5.0) for _ in range(processes)
    ]
    outputs = [finish(worker) for worker in workers]
    assert all(output == expected_outputs() for output in outputs)
    runs = executions(log)
    steps = [step for step, _ in runs]
    assert sorted(steps) == sorted(
        f"chain-{i} s{j}" for i in range(WORKFLOWS) for j in range(STEPS)
    )  # every step ran exactly once: no two workers ever ran one workflow
    assert len({pid for _, pid in runs}) >= 2  # the work was shared


def test_a_killed_worker_is_taken_over_and_recorded_steps_do_not_run_again(
    postgres_dsn: str, postgres_store: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    lease = 1.0
    victim = spawn(postgres_dsn, postgres_store, log, "asyncio", lease)
    wait_for_lines(log, WORKFLOWS, victim)
    survivor = spawn(postgres_dsn, postgres_store, log, "trio", lease)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT)
    killed_at = len(executions(log))
    recorded = anyio.run(recorded_steps, postgres_dsn, postgres_store)

    assert finish(survivor) == expected_outputs()
    runs = executions(log)
    again = [step for step, _ in runs[killed_at:] if step in recorded]
    assert again == [], f"recorded steps ran again after the kill: {again}"
    steps = [step for step, _ in runs]
    assert set(steps) == {
        f"chain-{i} s{j}" for i in range(WORKFLOWS) for j in range(STEPS)
    }
    # only what the victim had in flight ran twice (at most its concurrency)
    assert len(steps) - len(set(steps)) <= 4
    victim_pid = str(victim.pid)
    taken_over = {
        step.split()[0] for step, pid in runs[:killed_at] if pid == victim_pid
    }
    survivor_pid = str(survivor.pid)
    assert any(
        step.split()[0] in taken_over and pid == survivor_pid
        for step, pid in runs[killed_at:]
    )  # the survivor finished workflows the victim had started


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None, reason="needs Debian's pg_ctlcluster"
)
def test_workers_reconnect_after_postgres_restarts(
    postgres_dsn: str, postgres_store: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    workers = [
        spawn(postgres_dsn, postgres_store, log, backend, 2.0)
        for backend in ("asyncio", "trio")
    ]
    wait_for_lines(log, WORKFLOWS, *workers)
    version = next(Path("/etc/postgresql").iterdir()).name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    outputs = [finish(worker) for worker in workers]
    assert all(output == expected_outputs() for output in outputs)
    steps = {step for step, _ in executions(log)}
    assert steps == {f"chain-{i} s{j}" for i in range(WORKFLOWS) for j in range(STEPS)}
