"""Reading workflows: listing by state and name with pagination, info, history trees."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import durable
from durable._keys import encode_key
from durable._layout import BY_NAME, BY_STATE, WorkflowKeys, index_keys
from durable.testing import TestClock

SAFETY = 10.0


@durable.workflow(name="quick")
async def quick(ctx: durable.WorkflowContext, value: object) -> object:
    return await ctx.step("echo", lambda: value)


@durable.workflow(name="napper")
async def napper(ctx: durable.WorkflowContext, _: object) -> None:
    await ctx.sleep("nap", 3600.0)


async def populate(driver: durable.Driver) -> None:
    """5 completed `quick`, 3 sleeping `napper`, 2 cancelled `quick`, 1 unnamed."""
    for i in range(5):
        await durable.run_workflow(f"q-{i}", quick, i, driver=driver).result()
    for i in range(3):
        await durable.run_workflow(
            f"n-{i}", napper, None, driver=driver, mode="yield"
        ).result()
    for i in range(2):
        handle = durable.run_workflow(f"c-{i}", quick, i, driver=driver)
        await handle.cancel()

    async def plain(ctx: durable.WorkflowContext, _: object) -> int:
        return 1

    await durable.run_workflow("plain", plain, None, driver=driver).result()


async def every_page(
    driver: durable.Driver, limit: int, **filters: str
) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await durable.list_workflows(
            driver=driver, limit=limit, cursor=cursor, **filters
        )
        pages.append([summary.workflow_id for summary in page.workflows])
        cursor = page.cursor
        if cursor is None:
            return pages


class TestListing:
    async def test_everything_is_listed_by_state_then_id(
        self, driver: durable.Driver
    ) -> None:
        await populate(driver)
        page = await durable.list_workflows(driver=driver)
        listed = [(str(s.state), s.workflow_id) for s in page.workflows]
        assert listed == sorted(listed)
        assert len(listed) == 11
        assert page.cursor is None

    async def test_filters_by_state_by_name_and_by_both(
        self, driver: durable.Driver
    ) -> None:
        await populate(driver)

        async def ids(**filters: str) -> list[str]:
            page = await durable.list_workflows(driver=driver, **filters)
            return [s.workflow_id for s in page.workflows]

        assert await ids(state="sleeping") == ["n-0", "n-1", "n-2"]
        assert await ids(name="napper") == ["n-0", "n-1", "n-2"]
        assert await ids(name="quick", state="cancelled") == ["c-0", "c-1"]
        assert await ids(name="quick") == ["c-0", "c-1"] + [f"q-{i}" for i in range(5)]
        assert await ids(state="completed") == ["plain"] + [f"q-{i}" for i in range(5)]
        assert await ids(name="nobody") == []

    async def test_summaries_carry_name_state_and_times(
        self, driver: durable.Driver
    ) -> None:
        await populate(driver)
        page = await durable.list_workflows(driver=driver, state="sleeping", limit=1)
        [summary] = page.workflows
        assert (summary.workflow_id, summary.name, summary.state) == (
            "n-0",
            "napper",
            durable.WorkflowState.SLEEPING,
        )
        assert summary.sleep_until is not None
        assert summary.created_at <= summary.updated_at

    @pytest.mark.parametrize("limit", [1, 2, 3, 4, 10, 11, 12])
    async def test_pages_cover_everything_once(self, limit: int) -> None:
        async with durable.MemoryDriver() as driver:
            await populate(driver)
            pages = await every_page(driver, limit)
            flat = [workflow_id for page in pages for workflow_id in page]
            assert len(flat) == len(set(flat)) == 11
            assert all(len(page) <= limit for page in pages)
            assert all(pages[:-1])  # only the last page may be short

    async def test_a_workflow_changing_state_moves_in_the_listing(self) -> None:
        async with TestClock(autojump=True) as clock, durable.MemoryDriver() as driver:
            handle = durable.run_workflow(
                "n-0", napper, None, driver=driver, mode="yield", clock=clock
            )
            await handle.result()
            assert await every_page(driver, 5, state="sleeping") == [["n-0"]]
            clock.jump(3600.0)
            await handle.result()
            assert await every_page(driver, 5, state="sleeping") == [[]]
            assert await every_page(driver, 5, state="completed") == [["n-0"]]
            assert await every_page(driver, 5, name="napper") == [["n-0"]]

    async def test_bad_arguments_are_refused(self) -> None:
        async with durable.MemoryDriver() as driver:
            with pytest.raises(ValueError, match="'dozing'"):
                await durable.list_workflows(driver=driver, state="dozing")
            with pytest.raises(ValueError, match="limit"):
                await durable.list_workflows(driver=driver, limit=0)
            with pytest.raises(ValueError, match="cursor"):
                await durable.list_workflows(driver=driver, cursor="!!!")

    async def test_a_cursor_of_another_filter_is_refused(self) -> None:
        async with durable.MemoryDriver() as driver:
            await populate(driver)
            page = await durable.list_workflows(
                driver=driver, state="completed", limit=1
            )
            assert page.cursor is not None
            with pytest.raises(ValueError, match="another listing"):
                await durable.list_workflows(
                    driver=driver, state="sleeping", cursor=page.cursor
                )


class TestInfo:
    async def test_info_of_a_failed_workflow_has_its_error(self) -> None:
        @durable.workflow(name="doomed")
        async def doomed(ctx: durable.WorkflowContext, _: object) -> None:
            def boom() -> None:
                raise durable.CriticalError("no stock")

            await ctx.step("reserve", boom)

        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow("d-1", doomed, {"sku": "A"}, driver=driver)
            with pytest.raises(durable.WorkflowFailedError):
                await handle.result()
            info = await handle.get_info()
            assert (info.state, info.input, info.output) == (
                "failed",
                {"sku": "A"},
                None,
            )
            assert info.error is not None
            assert "no stock" in info.error.message
            assert info.alarm_at is None

    async def test_info_counts_unconsumed_messages(self) -> None:
        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow(
                "n-0", napper, None, driver=driver, mode="yield"
            )
            await handle.result()
            await handle.message("ping", 1)
            await handle.message("ping", 2)
            assert (await handle.get_info()).pending_messages == 2

    async def test_unknown_ids_raise(self) -> None:
        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow("ghost", quick, None, driver=driver)
            with pytest.raises(durable.UnknownWorkflowError):
                await handle.get_info()
            with pytest.raises(durable.UnknownWorkflowError):
                await handle.get_history()


class TestHistoryTree:
    async def test_the_tree_shows_steps_branches_iterations_and_messages(
        self,
    ) -> None:
        @durable.workflow(name="tour")
        async def tour(ctx: durable.WorkflowContext, _: object) -> object:
            await ctx.step("first", lambda: 1)

            async def left(c: durable.WorkflowContext) -> str:
                return await c.step("l", lambda: "L")

            async def right(c: durable.WorkflowContext) -> str:
                return await c.step("r", lambda: "R")

            await ctx.join("both", {"left": left, "right": right})

            async def body(c: durable.WorkflowContext, n: int) -> durable.Loop:
                await c.step("tick", lambda: n)
                return (
                    durable.Loop.break_(n) if n == 2 else durable.Loop.continue_(n + 1)
                )

            await ctx.loop("count", body, state=0, history_keep=2, history_every=2)
            [body_] = await ctx.queue.next("inbox", names=["go"])
            await ctx.sleep("rest", 0.0)
            return body_

        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow("t-1", tour, None, driver=driver)
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle.message, "go", {"ok": True})
            with anyio.fail_after(SAFETY):
                await handle.result()
            tree = await handle.get_history()

        assert [(n.kind, n.name) for n in tree] == [
            ("step", "first"),
            ("join", "both"),
            ("loop", "count"),
            ("message", "inbox"),
            ("sleep", "rest"),
        ]
        first, join, loop, message, sleep = tree
        assert (first.status, first.attempts, first.output) == ("completed", 1, 1)
        assert first.started_at is not None
        assert [(b.kind, b.name) for b in join.children] == [
            ("branch", "left"),
            ("branch", "right"),
        ]
        assert [c.output for b in join.children for c in b.children] == ["L", "R"]
        assert loop.output == 2
        iterations = [(i.kind, i.name) for i in loop.children]
        assert iterations  # the kept iterations, in order
        assert all(kind == "iteration" for kind, _ in iterations)
        assert [int(name) for _, name in iterations] == sorted(
            int(name) for _, name in iterations
        )
        assert all(i.children[0].name == "tick" for i in loop.children)
        assert message.output == [{"ok": True}]
        assert sleep.until is not None
        assert {n.kind for n in tree[0].walk()} == {"step"}

    async def test_a_failed_step_shows_its_failure(self) -> None:
        @durable.workflow(name="failing")
        async def failing(ctx: durable.WorkflowContext, _: object) -> None:
            def boom() -> None:
                raise durable.CriticalError("card declined")

            await ctx.step("charge", boom)

        async with durable.MemoryDriver() as driver:
            handle = durable.run_workflow("f-1", failing, None, driver=driver)
            with pytest.raises(durable.WorkflowFailedError):
                await handle.result()
            [charge] = await handle.get_history()
        assert (charge.status, charge.failure) == ("failed", "critical")
        assert charge.error is not None
        assert charge.error.message == "card declined"


async def test_a_cancelled_workflow_no_longer_shows_what_it_waited_for() -> None:
    async with durable.MemoryDriver() as driver:
        handle = durable.run_workflow("n-0", napper, None, driver=driver, mode="yield")
        assert (await handle.result()).sleep_until is not None
        await handle.cancel()
        info = await handle.get_info()
        assert (info.state, info.sleep_until, info.waiting_for) == (
            "cancelled",
            None,
            None,
        )
        [summary] = (await durable.list_workflows(driver=driver)).workflows
        assert summary.sleep_until is None


async def test_a_workflow_cancelled_while_it_runs_shows_no_wait() -> None:
    @durable.workflow(name="waits")
    async def waits(ctx: durable.WorkflowContext, _: object) -> None:
        await ctx.queue.next("wait", names=["never"])

    async with durable.MemoryDriver() as driver:
        handle = durable.run_workflow("w-0", waits, None, driver=driver)
        async with handle:
            with anyio.fail_after(SAFETY):
                while await handle.get_state() != "sleeping":
                    await anyio.wait_all_tasks_blocked()
            await handle.cancel()
        info = await handle.get_info()
        assert (info.state, info.waiting_for) == ("cancelled", None)


@given(
    workflow_id=st.text(min_size=1),
    state=st.sampled_from([str(s) for s in durable.WorkflowState]),
    name=st.none() | st.text(min_size=1),
)
def test_index_keys_are_the_encoded_index_tuples(
    workflow_id: str, state: str, name: str | None
) -> None:
    """The cached-prefix construction of index keys equals encoding the tuples."""
    expected = [encode_key((BY_STATE, state, workflow_id))]
    if name is not None:
        expected.append(encode_key((BY_NAME, name, state, workflow_id)))
    assert index_keys(WorkflowKeys(workflow_id), state, name) == expected
