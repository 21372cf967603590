"""Orders of one product placed together (server/domain/order_batches.py): the queueing
rules, with placement functions that record what they were asked. The database side
(one statement for a batch, the same answers as alone) is tested through HTTP in
tests/test_flash_sale.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from db.pool import Overloaded
from db.refusals import Refusal
from server.domain.order_batches import Batches


class Recorder:
    """Places orders (strings) after `gate` opens; records each call; refuses orders
    starting with 'x'; a batch holding 'boom' fails, 'down' is an outage."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.slow = asyncio.Event()  # what orders starting with 'slow' wait for too
        self.calls: list[list[str]] = []

    async def one(self, product: int, order: str) -> str:
        self.calls.append([order])
        await self.gate.wait()
        if order.startswith("slow"):
            await self.slow.wait()
        if order.startswith("x"):
            raise Refusal("short_stock")
        return f"placed {order}"

    async def many(self, product: int, orders: Sequence[str]) -> list[str | Refusal]:
        self.calls.append(list(orders))
        await self.gate.wait()
        if "boom" in orders:
            raise ValueError("boom")
        if "down" in orders:
            raise asyncpg.CannotConnectNowError("down")
        return [Refusal("short_stock") if order.startswith("x") else f"placed {order}" for order in orders]


def batches(
    recorder: Recorder, max_batch: int = 64, timeout: float = 60.0, shed_after: float = 0.0
) -> Batches[int, str, str]:
    return Batches(recorder.one, recorder.many, max_batch=max_batch, timeout=timeout, shed_after=shed_after)


async def settle(tasks: list[asyncio.Task[str]]) -> list[str | BaseException]:
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_order_for_an_idle_product_is_placed_alone_at_once() -> None:
    recorder = Recorder()
    recorder.gate.set()
    assert await batches(recorder).place(1, "a") == "placed a"
    assert recorder.calls == [["a"]]


async def test_orders_arriving_while_one_is_placed_are_placed_together_in_arrival_order() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "c", "d")]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await settle([first, *rest]) == ["placed a", "placed b", "placed c", "placed d"]
    assert recorder.calls == [["a"], ["b", "c", "d"]]


async def test_orders_for_other_products_are_not_held_up() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    other = asyncio.create_task(b.place(2, "z"))
    await asyncio.sleep(0)
    assert recorder.calls == [["a"], ["z"]]  # both placed at once, each alone
    recorder.gate.set()
    assert await settle([first, other]) == ["placed a", "placed z"]


async def test_a_refusal_in_a_batch_is_that_orders_alone() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "x1", "c")]
    await asyncio.sleep(0)
    recorder.gate.set()
    answers = await settle([first, *rest])
    assert answers[:2] == ["placed a", "placed b"] and answers[3] == "placed c"
    assert isinstance(answers[2], Refusal) and answers[2].code == "short_stock"


async def test_a_failed_batch_is_placed_again_order_by_order() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "boom")]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await settle([first, *rest]) == ["placed a", "placed b", "placed boom"]
    assert recorder.calls == [["a"], ["b", "boom"], ["b"], ["boom"]]


async def test_an_outage_fails_the_whole_batch_without_retrying() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "down")]
    await asyncio.sleep(0)
    recorder.gate.set()
    answers = await settle([first, *rest])
    assert answers[0] == "placed a"
    assert all(isinstance(answer, asyncpg.CannotConnectNowError) for answer in answers[1:])
    assert recorder.calls == [["a"], ["b", "down"]]


async def test_a_batch_takes_at_most_max_batch_orders() -> None:
    recorder = Recorder()
    b = batches(recorder, max_batch=2)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "c", "d", "e", "f")]
    await asyncio.sleep(0)
    recorder.gate.set()
    await settle([first, *rest])
    assert recorder.calls == [["a"], ["b", "c"], ["d", "e"], ["f"]]


async def test_an_order_that_waited_past_the_timeout_is_never_placed() -> None:
    recorder = Recorder()
    b = batches(recorder, timeout=0.0)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    late = asyncio.create_task(b.place(1, "b"))
    await asyncio.sleep(0)
    recorder.gate.set()
    answers = await settle([first, late])
    assert answers[0] == "placed a" and isinstance(answers[1], TimeoutError)
    assert recorder.calls == [["a"]]


async def test_new_orders_are_shed_at_once_while_the_oldest_waiting_has_waited_shed_after() -> None:
    recorder = Recorder()
    b = batches(recorder, shed_after=0.05)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(b.place(1, "b"))
    await asyncio.sleep(0.1)  # "b" has now waited longer than shed_after
    with pytest.raises(Overloaded):
        await b.place(1, "c")
    other = asyncio.create_task(b.place(2, "z"))  # another product's queue is its own
    recorder.gate.set()
    assert await settle([first, waiting, other]) == ["placed a", "placed b", "placed z"]
    assert recorder.calls == [["a"], ["z"], ["b"]]


async def test_no_order_is_shed_while_the_queue_is_younger_than_shed_after() -> None:
    recorder = Recorder()
    b = batches(recorder, shed_after=60.0)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.place(1, order)) for order in ("b", "c")]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await settle([first, *rest]) == ["placed a", "placed b", "placed c"]


async def test_a_cancelled_waiter_leaves_the_batch() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    gone, kept = asyncio.create_task(b.place(1, "b")), asyncio.create_task(b.place(1, "c"))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.gate.set()
    assert await settle([first, kept]) == ["placed a", "placed c"]
    assert recorder.calls == [["a"], ["c"]]


async def test_the_product_is_free_again_once_its_queue_is_empty() -> None:
    recorder = Recorder()
    recorder.gate.set()
    b = batches(recorder)
    await b.place(1, "a")
    assert b.waiting_count == 0
    assert await b.place(1, "b") == "placed b"
    assert recorder.calls == [["a"], ["b"]]


async def test_close_waits_for_the_batches_under_way() -> None:
    recorder = Recorder()
    b = batches(recorder)
    first = asyncio.create_task(b.place(1, "a"))
    await asyncio.sleep(0)
    queued = asyncio.create_task(b.place(1, "slow b"))
    await asyncio.sleep(0)
    recorder.gate.set()
    await first  # "slow b" is now being placed in a batch of its own
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    recorder.slow.set()
    await closing
    assert queued.done() and queued.result() == "placed slow b"


@pytest.mark.parametrize("count", [1, 3])
async def test_every_order_gets_exactly_one_answer(count: int) -> None:
    recorder = Recorder()
    b = batches(recorder, max_batch=2)
    tasks = [asyncio.create_task(b.place(1, f"o{n}")) for n in range(count * 4)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await settle(tasks) == [f"placed o{n}" for n in range(count * 4)]
    assert sorted(order for call in recorder.calls for order in call) == sorted(f"o{n}" for n in range(count * 4))
