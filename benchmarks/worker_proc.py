"""One worker process of W3w: ``python -m benchmarks.worker_proc --dsn D --store S``.

It talks to the benchmark over stdin and stdout, one line each way at a time: it
prints ``ready`` once its PostgresDriver is connected, runs a `durable.Worker` with a
lease from ``go`` until ``stop`` (or the end of stdin), then prints one JSON line:
the step bodies and workflow bodies it ran, the warnings its worker logged (a lost
lease logs one) and the CPU seconds it spent from ``go`` to ``stop``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time

import anyio
import anyio.to_thread

import durable

NAME = "w3w"
STEPS = 10
counts = {"steps": 0, "workflows": 0, "warnings": 0}


def expected_output(i: int) -> int:
    """What workflow *i* returns: the sum of its steps' values i, i + 1, ..."""
    return STEPS * i + sum(range(STEPS))


def _step(value: int) -> int:
    counts["steps"] += 1  # at least once per step: a second run would count twice
    return value


@durable.workflow(name=NAME)
async def ten_steps(ctx: durable.WorkflowContext, i: int) -> int:
    """W3's workflow: ten sequential steps, each returning a small int."""
    total = 0
    for j in range(STEPS):
        total += await ctx.step(f"s{j}", functools.partial(_step, i + j))
    counts["workflows"] += 1
    return total


class _CountWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        counts["warnings"] += 1


async def _line() -> str:
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    logging.getLogger("durable").addHandler(_CountWarnings(logging.WARNING))
    options = {} if args.pool_size is None else {"pool_size": args.pool_size}
    async with durable.PostgresDriver(args.dsn, store=args.store, **options) as driver:
        worker = durable.Worker(
            driver, [ten_steps], lease=args.lease, concurrency=args.concurrency
        )
        _say("ready")
        if await _line() != "go":
            return
        cpu = time.process_time()
        async with worker:
            await _line()  # "stop", or "" when the benchmark went away
        cpu = time.process_time() - cpu
    _say(json.dumps({**counts, "cpu_seconds": round(cpu, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_proc")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=durable.DEFAULT_CONCURRENCY)
    parser.add_argument("--pool-size", type=int, help="the driver's default if unset")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(serve, args, backend=args.backend)


if __name__ == "__main__":
    main()
