"""Real crashes: a workflow process is SIGKILLed at random points and resumed.

Each test runs ``programs/steps_and_sleeps.py`` on a LevelDB store, kills it with
SIGKILL once its side-effect log reached a random length (plus a random moment more),
and starts it again on the same store until a run completes. After every kill the
test reads the stored history itself to learn which steps were recorded, and checks:

* the final output equals that of an uninterrupted run;
* a step recorded before a kill never executes again after it;
* in the stretch of executions a kill cut short, only a tail went unrecorded (writes
  reach the store in order), and every step ran at least once.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs
import pytest

from durable import LevelDBDriver, WorkflowState
from durable._history import COMPLETED, STEP, History

if TYPE_CHECKING:
    from collections.abc import Iterator

PROGRAM = Path(__file__).parent / "programs" / "steps_and_sleeps.py"
WORKFLOW_ID = "crash-me"  # the program's
STEPS = 16
# seconds each step lingers after logging, so that kills often hit a step in flight
STEP_DELAY = 0.004
KILLS = 4
TIMEOUT = 20.0  # seconds any one process may take; nothing here should come close

pytestmark = pytest.mark.crash


@attrs.frozen
class Kill:
    """What the store and the log held right after one SIGKILL."""

    log_lines: int  # executions logged before the kill
    recorded: frozenset[str]  # steps whose result the store holds
    state: WorkflowState | None


@contextmanager
def running(store: Path, log: Path, backend: str) -> Iterator[subprocess.Popen[str]]:
    """Start the program on *store*; never leave it running, whatever happens."""
    command = [sys.executable, str(PROGRAM), str(store), str(log), backend]
    process = subprocess.Popen(
        [*command, str(STEPS), str(STEP_DELAY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=store.parent,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def finish(process: subprocess.Popen[str]) -> object:
    """Wait for a run to complete and return its output."""
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr
    return json.loads(stdout)


def read_log(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


async def load_recorded(store: Path) -> tuple[frozenset[str], WorkflowState | None]:
    """The names of the completed steps, and the state, as stored (no run involved)."""
    async with LevelDBDriver(store) as driver:
        history = await History.load(driver, WORKFLOW_ID)
    recorded = frozenset(
        history.names[entry.name_index]
        for entry in history.entries.values()
        if entry.kind == STEP and entry.status == COMPLETED
    )
    return recorded, None if history.meta is None else history.meta.state


def kill_at_random(
    process: subprocess.Popen[str], log: Path, target_lines: int, rng: random.Random
) -> object:
    """SIGKILL *process* once *log* has *target_lines* lines and a random moment passed.

    Returns `KILLED`, or the output when the process completed first.
    """
    deadline = time.perf_counter() + TIMEOUT
    while len(read_log(log)) < target_lines and process.poll() is None:
        assert time.perf_counter() < deadline, "the program stopped making progress"
        time.sleep(0.0005)
    time.sleep(rng.uniform(0, 2 * STEP_DELAY))
    process.send_signal(signal.SIGKILL)  # does nothing if it already exited
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    if process.returncode == -signal.SIGKILL:
        return KILLED
    assert process.returncode == 0, stderr
    return json.loads(stdout)


KILLED = object()


def reference_output(tmp_path: Path, backend: str) -> object:
    with running(
        tmp_path / "reference-store", tmp_path / "ref.log", backend
    ) as process:
        return finish(process)


@pytest.mark.parametrize(
    ("seed", "backend"), [(1, "asyncio"), (2, "trio"), (3, "asyncio"), (4, "trio")]
)
def test_killed_workflow_resumes_to_the_same_output_running_recorded_steps_once(
    tmp_path: Path, seed: int, backend: str
) -> None:
    rng = random.Random(seed)
    expected = reference_output(tmp_path, backend)
    store, log = tmp_path / "store", tmp_path / "side-effects.log"
    names = [f"step-{i:02d}" for i in range(STEPS)]

    kills: list[Kill] = []
    attempts = 0
    while True:
        attempts += 1
        assert attempts <= 3 * KILLS, "the workflow never completed"
        remaining = STEPS - (len(kills[-1].recorded) if kills else 0)
        target = len(read_log(log)) + rng.randint(1, max(1, remaining // 2))
        with running(store, log, backend) as process:
            if len(kills) >= KILLS:
                output = finish(process)
                break
            output = kill_at_random(process, log, target, rng)
        if output is not KILLED:
            break
        recorded, state = anyio.run(load_recorded, store)
        kills.append(Kill(len(read_log(log)), recorded, state))

    assert len(kills) >= 3, "too few kills landed before the workflow completed"
    assert output == expected
    recorded, state = anyio.run(load_recorded, store)
    assert state == WorkflowState.COMPLETED
    assert recorded == set(names)

    executions = read_log(log)
    assert set(executions) == set(names)  # at least once each
    start_line = 0
    for kill in kills:
        assert kill.state != WorkflowState.FAILED
        # recorded before the kill: never executed again afterwards
        again = [name for name in executions[kill.log_lines :] if name in kill.recorded]
        assert again == [], f"recorded steps ran again after a kill: {again}"
        # writes reach the store in order: what this run left unrecorded is a tail
        stretch = executions[start_line : kill.log_lines]
        unrecorded = [name for name in stretch if name not in kill.recorded]
        assert stretch[len(stretch) - len(unrecorded) :] == unrecorded, (stretch, kill)
        start_line = kill.log_lines
    # and a step ran more than once only when a kill caught it unrecorded
    for name in names:
        cut_short = sum(
            1
            for i, kill in enumerate(kills)
            if name in executions[kills[i - 1].log_lines if i else 0 : kill.log_lines]
            and name not in kill.recorded
        )
        assert executions.count(name) == 1 + cut_short, name
