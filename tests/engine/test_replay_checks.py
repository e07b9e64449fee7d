"""Every workflow feature passes `durable.testing.check_replay`, in both modes.

Each workflow here is small but realistic; `check_replay` crashes it at every durable
point, resumes, and checks the outcome, at-most-once step bodies, no divergence and
exactly-once messages (then `check_determinism`). The negative tests at the end prove
the checks bite on code that branches on state outside the history.
"""

from __future__ import annotations

import datetime
import itertools
import random
from typing import TYPE_CHECKING

import anyio
import pytest

from durable import (
    CriticalError,
    JoinError,
    Loop,
    RollbackContext,
    StepExhaustedError,
    StepTimeoutError,
    WorkflowContext,
)
from durable.testing import check_determinism, check_replay

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Workflow = Callable[[WorkflowContext, object], Awaitable[object]]

START = 1_700_000_000.0  # where every check_replay run's TestClock starts
DAY = 86400.0

pytestmark = pytest.mark.parametrize("mode", ["live", "yield"])


class Flaky:
    """An external service that fails its first *failures* calls after a reset.

    Calls are counted outside the history, like a real service's state; the workflow
    resets it in a step of its own, so every fresh run of `check_replay` starts over,
    and a resumed run keeps counting (as a real service would).
    """

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def call(self, failures: int, value: object) -> object:
        self.calls += 1
        if self.calls <= failures:
            raise ConnectionError(f"attempt {self.calls} refused")
        return value

    async def slow_call(self, hangs: int, value: object) -> object:
        self.calls += 1
        if self.calls <= hangs:
            await anyio.sleep_forever()  # a hung request: only the timeout ends it
        return value


flaky = Flaky()


async def check(
    workflow: Workflow,
    input: object,
    mode: str,
    expected: object,
    messages: list[tuple[str, object]] | None = None,
) -> None:
    report = await check_replay(workflow, input, messages=messages, mode=mode)  # type: ignore[arg-type]
    assert report.outcome == ("completed", expected)
    assert report.writes >= 1
    await check_determinism(workflow, input, messages=messages, mode=mode)  # type: ignore[arg-type]


# steps ------------------------------------------------------------------------------


async def checkout(ctx: WorkflowContext, cart: object) -> object:
    assert isinstance(cart, list)
    total = await ctx.step("price", lambda: sum(cart))

    async def reserve() -> object:
        await anyio.lowlevel.checkpoint()
        return {"reserved": len(cart)}

    reservation = await ctx.step("reserve", reserve)
    session = await ctx.step("session", lambda: "s-1", ephemeral=True)
    return [total, reservation, session]


async def test_sync_async_and_ephemeral_steps(mode: str) -> None:
    await check(checkout, [3, 4], mode, [7, {"reserved": 2}, "s-1"])


async def flaky_payment(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("reset", flaky.reset)
    return await ctx.step(
        "charge",
        lambda: flaky.call(2, "paid"),
        max_retries=3,
        retry_backoff_base=30,  # 30 s then 60 s: longer than a poll interval
        retry_backoff_max=60,
    )


async def test_retries_with_backoff(mode: str) -> None:
    await check(flaky_payment, None, mode, "paid")


async def caught_failures(ctx: WorkflowContext, _: object) -> object:
    def refuse() -> object:
        raise ValueError("card declined")

    def fatal() -> object:
        raise CriticalError("account closed")

    outcomes = []
    try:
        await ctx.step("charge-card", refuse, max_retries=1, retry_backoff_base=1)
    except StepExhaustedError as exc:
        outcomes.append(["exhausted", exc.attempts])
    try:
        await ctx.step("charge-account", fatal)
    except CriticalError as exc:
        outcomes.append(["critical", str(exc)])
    outcomes.append(await ctx.step("invoice", lambda: "invoiced"))
    return outcomes


async def test_caught_step_failures(mode: str) -> None:
    expected = [["exhausted", 2], ["critical", "account closed"], "invoiced"]
    await check(caught_failures, None, mode, expected)


async def timeouts(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("reset", flaky.reset)
    value = await ctx.step(
        "fetch",
        lambda: flaky.slow_call(1, "fetched"),
        timeout=5,
        retry_on_timeout=True,
        max_retries=2,
        retry_backoff_base=1,
    )

    async def hang() -> object:
        await anyio.sleep_forever()

    try:
        await ctx.step("stuck", hang, timeout=5)
    except StepTimeoutError as exc:
        return [value, exc.step_name]
    raise AssertionError("the hung step did not time out")


async def test_timeouts_with_retry_on_timeout(mode: str) -> None:
    await check(timeouts, None, mode, ["fetched", "stuck"])


# sleeps -----------------------------------------------------------------------------


async def reminders(ctx: WorkflowContext, _: object) -> object:
    await ctx.sleep("debounce", 0.05)  # short: waits in memory
    await ctx.sleep("a-month", 30 * DAY)  # long: an alarm, skipped by the test clock
    sent = await ctx.step("remind", lambda: "reminded")
    await ctx.sleep_until("new-year", START + 60 * DAY)
    await ctx.sleep_until(
        "already-past", datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    )
    return [sent, await ctx.step("greet", lambda: "happy new year")]


async def test_short_long_and_absolute_sleeps(mode: str) -> None:
    await check(reminders, None, mode, ["reminded", "happy new year"])


# messages ---------------------------------------------------------------------------


async def inbox(ctx: WorkflowContext, _: object) -> object:
    first = await ctx.queue.next("any")
    votes = await ctx.queue.next("votes", names=["yes", "no"], count=2)
    late = await ctx.queue.next("late", names=["never"], timeout=3600)
    partial = await ctx.queue.next("partial", names=["yes"], count=3, timeout=10)
    await ctx.queue.send("note-to-self", {"votes": len(votes)})
    note = await ctx.queue.next("read-note", names=["note-to-self"])
    return [first, votes, late, partial, note]


async def test_queue_next_and_send_to_self(mode: str) -> None:
    sent: list[tuple[str, object]] = [
        ("hello", "hi"),
        ("yes", 1),
        ("maybe", 0),  # never asked for: stays queued, in every crash scenario
        ("no", 2),
        ("yes", 3),
    ]
    expected = [["hi"], [1, 2], [], [3], [{"votes": 2}]]
    await check(inbox, None, mode, expected, sent)


# join -------------------------------------------------------------------------------


async def fan_out(ctx: WorkflowContext, _: object) -> object:
    async def inventory(c: WorkflowContext) -> object:
        return await c.step("count", lambda: 12)

    async def shipping(c: WorkflowContext) -> object:
        await c.sleep("carrier", 2 * DAY)
        return await c.step("quote", lambda: 5)

    async def fraud(c: WorkflowContext) -> object:
        def verdict() -> object:
            raise ValueError("service down")

        return await c.step("score", verdict, max_retries=0)

    joined = await ctx.join("gather", {"inventory": inventory, "shipping": shipping})
    try:
        await ctx.join("checks", {"inventory": inventory, "fraud": fraud})
    except JoinError as exc:
        failed = sorted(exc.errors)
    else:
        raise AssertionError("the fraud branch did not fail")
    return [joined, failed]


async def test_join_with_a_failing_branch(mode: str) -> None:
    await check(fan_out, None, mode, [{"inventory": 12, "shipping": 5}, ["fraud"]])


# race -------------------------------------------------------------------------------


async def deadline_race(ctx: WorkflowContext, work_takes: object) -> object:
    assert isinstance(work_takes, int)

    async def work(c: WorkflowContext) -> object:
        await c.sleep("working", work_takes)
        return await c.step("result", lambda: "done")

    async def timeout(c: WorkflowContext) -> object:
        await c.sleep("deadline", 3600)
        return "timed out"

    winner, value = await ctx.race(
        "work-or-timeout", {"work": work, "timeout": timeout}
    )
    return [winner, value, await ctx.step("after", lambda: "after")]


@pytest.mark.parametrize(
    ("work_takes", "expected"),
    [(60, ["work", "done", "after"]), (7200, ["timeout", "timed out", "after"])],
    ids=["work-wins", "timeout-wins"],
)
async def test_race_against_a_timeout(
    mode: str, work_takes: int, expected: object
) -> None:
    await check(deadline_race, work_takes, mode, expected)


async def race_loser_reads(ctx: WorkflowContext, _: object) -> object:
    async def listen(c: WorkflowContext) -> object:
        got = await c.queue.next("order")
        await c.sleep("process", 3600)
        return got

    async def quick(c: WorkflowContext) -> object:
        await c.sleep("quick", 60)
        return "quick"

    raced = await ctx.race("first", {"listen": listen, "quick": quick})
    # the loser's message went back to the queue: the workflow reads it once more
    again = await ctx.queue.next("order-again", names=["order"])
    return [list(raced), again]


async def test_race_loser_returns_its_message(mode: str) -> None:
    await check(
        race_loser_reads, None, mode, [["quick", "quick"], ["o-1"]], [("order", "o-1")]
    )


# loop -------------------------------------------------------------------------------


async def poller(ctx: WorkflowContext, options: object) -> object:
    assert isinstance(options, list)
    commit_interval, history_every, history_keep = options

    async def body(c: WorkflowContext, state: object) -> object:
        assert isinstance(state, dict)
        seen = await c.step("poll", lambda: state["n"] * 10)
        if state["n"] == 4:
            await c.sleep("backoff", 0.05)
        state = {"n": state["n"] + 1, "sum": state["sum"] + seen}
        if state["n"] == 7:
            return Loop.break_(state)
        return Loop.continue_(state)

    final = await ctx.loop(
        "poll-loop",
        body,
        state={"n": 0, "sum": 0},
        commit_interval=commit_interval,
        history_every=history_every,
        history_keep=history_keep,
    )
    return [final, await ctx.step("report", lambda: "reported")]


@pytest.mark.parametrize("options", [[1, 1, 1], [3, 5, 2]], ids=["1-1-1", "3-5-2"])
async def test_loop_with_pruning_carries_state(mode: str, options: list[int]) -> None:
    await check(poller, options, mode, [{"n": 7, "sum": 210}, "reported"])


# try_step and try_block -------------------------------------------------------------


async def tries(ctx: WorkflowContext, _: object) -> object:
    def declined() -> object:
        raise ValueError("declined")

    card = await ctx.try_step("card", declined, max_retries=0)
    wallet = await ctx.try_step("wallet", lambda: "paid by wallet")

    async def shipment(c: WorkflowContext) -> object:
        await c.step("label", lambda: "label-1")
        await c.step("pickup", declined, max_retries=0)
        return "shipped"

    async def notify(c: WorkflowContext) -> object:
        return await c.step("email", lambda: "emailed")

    shipped = await ctx.try_block("ship", shipment)
    notified = await ctx.try_block("notify", notify)
    assert card.failure is not None
    assert shipped.failure is not None
    return [
        [card.ok, card.failure.kind, card.failure.attempts],
        [wallet.ok, wallet.value],
        [shipped.ok, shipped.failure.kind, shipped.failure.name],
        [notified.ok, notified.value],
    ]


async def test_try_step_and_try_block(mode: str) -> None:
    expected = [
        [False, "exhausted", 1],
        [True, "paid by wallet"],
        [False, "step", "ship"],
        [True, "emailed"],
    ]
    await check(tries, None, mode, expected)


# rollback ------------------------------------------------------------------------

_cancelled: list[str] = []


async def _cancel(rctx: RollbackContext, confirmation: object) -> None:
    _cancelled.append(f"{rctx.step_name}={confirmation}")


def _no_cars() -> str:
    raise CriticalError("no cars left")


async def saga(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("reset", _cancelled.clear)
    await ctx.rollback_checkpoint("start")
    await ctx.step("flight", lambda: "F", rollback=_cancel)

    async def hotel(branch: WorkflowContext) -> object:
        return await branch.step("hotel", lambda: "H", rollback=_cancel)

    async def museum(branch: WorkflowContext) -> object:
        return await branch.step("museum", lambda: "M", rollback=_cancel)

    await ctx.join("stay", {"hotel": hotel, "museum": museum})
    await ctx.sleep("before-car", 60)
    await ctx.step("car", _no_cars)
    return "booked"


async def test_rollback_survives_a_crash_at_every_durable_point(mode: str) -> None:
    report = await check_replay(saga, None, mode=mode)  # type: ignore[arg-type]
    assert report.outcome[:2] == ("failed", "CriticalError")
    # handlers ran (their order is tested in test_rollback.py)
    assert set(_cancelled) == {"flight=F", "hotel=H", "museum=M"}
    await check_determinism(saga, None, mode=mode)  # type: ignore[arg-type]


# the checks bite --------------------------------------------------------------------

_runs = itertools.count()


async def counter_named_steps(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("setup", lambda: None)
    # the bug: a step name built from state outside the history
    return await ctx.step(f"fetch-{next(_runs)}", lambda: 1)


async def random_branch(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("setup", lambda: None)
    await ctx.sleep("pause", 60)
    if random.random() < 0.5:  # the bug: a branch choice outside any step
        return await ctx.step("heads", lambda: "heads")
    return await ctx.step("tails", lambda: "tails")


async def test_check_replay_reports_the_crash_point(mode: str) -> None:
    with pytest.raises(AssertionError) as info:
        await check_replay(counter_named_steps, None, mode=mode)  # type: ignore[arg-type]
    report = str(info.value)
    assert "did not survive a crash" in report
    assert "crash point: write" in report
    assert "HistoryDivergedError" in report
    assert "history at the crash point" in report
    assert "'fetch-" in report


async def test_check_replay_catches_a_random_branch(mode: str) -> None:
    random.seed(1)  # some crash point replays the other branch (p = 1 - 2**-k)
    with pytest.raises(AssertionError, match=r"crash point: write \d+") as info:
        await check_replay(random_branch, None, mode=mode)  # type: ignore[arg-type]
    assert "'heads'" in str(info.value) or "'tails'" in str(info.value)


async def test_check_determinism_names_the_diverging_entry(mode: str) -> None:
    with pytest.raises(AssertionError, match="check_determinism") as info:
        await check_determinism(counter_named_steps, None, mode=mode)  # type: ignore[arg-type]
    assert "HistoryDivergedError" in str(info.value)
    assert "the history has step 'fetch-" in str(info.value)


async def counter_named_last_step(ctx: WorkflowContext, _: object) -> object:
    await ctx.step("setup", lambda: None)
    # past the recorded history: each replay asks for a new, differently named entry
    return await ctx.step(f"send-{next(_runs)}", lambda: 1, ephemeral=True)


async def test_check_determinism_reports_the_first_differing_entry(mode: str) -> None:
    with pytest.raises(
        AssertionError,
        match=r"the first difference is entry 1: 'send-\d+' \(step\) versus "
        r"'send-\d+' \(step\)",
    ):
        await check_determinism(counter_named_last_step, None, mode=mode)  # type: ignore[arg-type]
