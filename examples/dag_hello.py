"""The smallest DAG run: a package `hello` whose one step `root` echoes its input.

    python examples/dag_hello.py [STORE_DIR]

Registers the executor `hello/echo` and the package `hello`, starts run
`hello-run-1`, drives it with `run_once` and prints the run's status and the result
of `root`. The run is stored in a LevelDB store in STORE_DIR (a temporary directory
by default): run it twice on one directory and the second time nothing runs again.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
import attrs

import durable
from durable import dag


@attrs.frozen
class HelloInput:
    message: str


@attrs.frozen
class HelloResult:
    echoed: str


async def echo(step: dag.StepContext, input: HelloInput) -> None:
    """Executor of `hello/echo`: the input arrives decoded into a `HelloInput`."""
    if not input.message:
        raise dag.Permanent("empty_message", "message is required")
    step.result(HelloResult(echoed=input.message))


def start(run: dag.RunBuilder, input: HelloInput) -> None:
    """Entrypoint of `hello`: it describes the run's steps and does no work."""
    run.metadata("source", "getting-started")
    run.step("root", input, kind="hello/echo", queue="default")


HELLO = dag.package("hello").display_name("Hello Workflow").entrypoint(start).build()


async def run_hello(
    store: Path, message: str = "hello workflow"
) -> tuple[dag.RunInfo, dag.StepResult | None]:
    """Start run `hello-run-1` in the LevelDB store at *store* and drive it."""
    async with durable.LevelDBDriver(store) as driver:
        runtime = dag.Runtime(driver)
        runtime.register_executor("hello/echo", echo)
        runtime.register_package(HELLO)
        handle = await runtime.start_run(
            "hello",
            HelloInput(message),
            run_id="hello-run-1",
            metadata={"requestedBy": "example"},
        )
        await runtime.run_once()
        return await runtime.get_run(handle.id), await runtime.get_result(
            handle.id, "root"
        )


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch) / "store"
        run, result = await run_hello(store)
    print(f"run {run.id}: {run.status}")
    print(f"root: {result.data if result else None}")


if __name__ == "__main__":
    anyio.run(main)
