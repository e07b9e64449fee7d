"""A travel-booking saga: book a flight, a hotel and a car; the car fails, so the
hotel and then the flight are cancelled, each exactly once.

    python examples/saga.py
"""

from __future__ import annotations

import anyio

import durable


def book(what: str) -> str:
    print(f"  booking the {what}")
    return f"{what}-confirmation"


def book_car() -> str:
    print("  booking the car")
    raise durable.CriticalError("no cars left")


async def cancel(rctx: durable.RollbackContext, confirmation: object) -> None:
    print(f"  cancelling {rctx.step_name} ({confirmation})")


async def trip(ctx: durable.WorkflowContext, _: object) -> dict[str, object]:
    await ctx.rollback_checkpoint("start")
    flight = await ctx.step("flight", lambda: book("flight"), rollback=cancel)
    hotel = await ctx.step("hotel", lambda: book("hotel"), rollback=cancel)
    car = await ctx.step("car", book_car, rollback=cancel)
    return {"flight": flight, "hotel": hotel, "car": car}


async def main() -> None:
    async with durable.MemoryDriver() as driver:
        handle = durable.run_workflow("trip-1", trip, None, driver=driver)
        try:
            await handle.result()
        except durable.WorkflowFailedError as failed:
            print(f"state: {await handle.get_state()}; error: {failed.error}")


if __name__ == "__main__":
    anyio.run(main)
