"""Order actors: one command at a time per order, bounded, supervised."""

from __future__ import annotations

import asyncio
from typing import Any

import aiojobs
import pytest
from aiohttp import web

from db import orders as orders_db
from db.refusals import Refusal
from handlers.refusals import problem_for
from handlers.routing import CONTEXT
from server.domain.order_actors import OrderActor, OrderSupervisor
from server.runtime.metrics import Metrics
from tests.helpers import Api


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Wait for `condition()` to hold (a generous deadline, for a busy machine): tests
    wait for what they check, never for a while."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def make_supervisor(**overrides: Any) -> OrderSupervisor:
    async def expire(order_id: int) -> None:
        return None

    settings: dict[str, Any] = {"max_live": 100, "mailbox_size": 10, "idle_seconds": 0.2, **overrides}
    return OrderSupervisor(scheduler=aiojobs.Scheduler(limit=None), metrics=Metrics(), expire=expire, **settings)


async def test_commands_for_one_order_run_one_at_a_time_in_order() -> None:
    supervisor = make_supervisor()
    running, log = 0, []

    async def command(tag: int) -> int:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(0.01)
        log.append(tag)
        running -= 1
        return tag

    async def asking(tag: int) -> int:
        answer: int = await supervisor.ask(7, lambda actor: command(tag))
        return answer

    results = await asyncio.gather(*(asking(i) for i in range(5)))
    assert results == log == [0, 1, 2, 3, 4]
    await supervisor.drain(1)


async def test_different_orders_run_concurrently() -> None:
    supervisor = make_supervisor()
    started = asyncio.Event()

    release = asyncio.Event()

    async def slow(actor: OrderActor) -> str:
        started.set()
        await release.wait()  # until the other order's command has run
        return "slow"

    async def quick(actor: OrderActor) -> str:
        return "quick"

    slow_task = asyncio.create_task(supervisor.ask(1, slow))
    await started.wait()
    # Were orders served one after another, this would wait for `slow`, which waits for it.
    assert await asyncio.wait_for(supervisor.ask(2, quick), 30) == "quick"
    release.set()
    assert await slow_task == "slow"
    await supervisor.drain(1)


async def test_an_idle_actor_stops_and_leaves_nothing_behind() -> None:
    supervisor = make_supervisor(idle_seconds=0.05)
    release, running = asyncio.Event(), [0]

    async def hold(actor: OrderActor) -> None:
        running[0] += 1
        await release.wait()  # every actor stays busy until all 50 are alive

    asks = [asyncio.create_task(supervisor.ask(order_id, hold)) for order_id in range(50)]
    await until(lambda: running[0] == 50)
    assert supervisor.live_count == 50
    release.set()
    await asyncio.gather(*asks)
    # Each stops once idle for 0.05 s: its entry goes, then its job ends.
    await until(lambda: supervisor.live_count == 0 and len(supervisor.scheduler) == 0)
    await supervisor.drain(1)


async def test_a_crashed_actor_is_replaced_and_queued_commands_still_run() -> None:
    supervisor = make_supervisor()
    actors: list[OrderActor] = []

    async def crash(actor: OrderActor) -> None:
        actors.append(actor)
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    async def record(actor: OrderActor) -> str:
        actors.append(actor)
        return "ok"

    crashed = asyncio.create_task(supervisor.ask(3, crash))
    await asyncio.sleep(0)
    queued = asyncio.create_task(supervisor.ask(3, record))
    with pytest.raises(RuntimeError):
        await crashed
    assert await queued == "ok"
    assert actors[0] is not actors[1]  # a fresh actor took over the mailbox
    assert supervisor.metrics.actor_crashes._value.get() == 1
    assert await supervisor.ask(3, record) == "ok"
    await supervisor.drain(1)


async def test_a_full_mailbox_refuses_with_503() -> None:
    supervisor = make_supervisor(mailbox_size=1)
    release, started = asyncio.Event(), asyncio.Event()

    async def block(actor: OrderActor) -> None:
        started.set()
        await release.wait()

    busy = asyncio.create_task(supervisor.ask(1, block))
    await started.wait()  # running: the mailbox is empty
    queued = asyncio.create_task(supervisor.ask(1, block))
    await until(lambda: supervisor.queued_count == 1)
    with pytest.raises(Refusal) as refused:
        await supervisor.ask(1, block)
    assert problem_for(refused.value).headers["Retry-After"]
    release.set()
    await asyncio.gather(busy, queued)
    await supervisor.drain(1)


async def test_a_command_that_waits_past_the_queue_timeout_gets_503_and_never_runs() -> None:
    supervisor = make_supervisor(queue_timeout=0.3)
    release = asyncio.Event()
    ran: list[str] = []

    async def block(actor: OrderActor) -> None:
        await release.wait()

    async def late(actor: OrderActor) -> None:
        ran.append("late")

    busy = asyncio.create_task(supervisor.ask(1, block))
    await asyncio.sleep(0.01)
    with pytest.raises(Refusal) as refused:
        await supervisor.ask(1, late)
    assert problem_for(refused.value).headers["Retry-After"]
    release.set()
    await busy
    await supervisor.ask(1, lambda actor: asyncio.sleep(0))  # the mailbox has been worked through
    assert ran == []
    await supervisor.drain(1)


async def test_a_running_command_is_not_cut_short_by_the_queue_timeout() -> None:
    supervisor = make_supervisor(queue_timeout=0.1)

    async def slow(actor: OrderActor) -> str:
        await asyncio.sleep(0.3)
        return "done"

    assert await supervisor.ask(1, slow) == "done"
    await supervisor.drain(1)


async def test_the_number_of_live_actors_is_bounded() -> None:
    supervisor = make_supervisor(max_live=2)
    release = asyncio.Event()

    async def block(actor: OrderActor) -> None:
        await release.wait()

    tasks = [asyncio.create_task(supervisor.ask(i, block)) for i in (1, 2)]
    await until(lambda: supervisor.live_count == 2)
    with pytest.raises(Refusal):
        await supervisor.ask(3, block)
    release.set()
    await asyncio.gather(*tasks)
    await supervisor.drain(1)


async def test_drain_finishes_queued_commands_then_refuses_new_ones() -> None:
    supervisor = make_supervisor(idle_seconds=30)
    done: list[int] = []

    async def work(actor: OrderActor, n: int) -> None:
        await asyncio.sleep(0.05)
        done.append(n)

    async def asking(n: int) -> None:
        await supervisor.ask(1, lambda actor: work(actor, n))

    tasks = [asyncio.create_task(asking(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    await supervisor.drain(5)
    await asyncio.gather(*tasks)
    assert done == [0, 1, 2]
    with pytest.raises(Refusal):
        await supervisor.ask(1, lambda a: work(a, 9))


async def test_a_command_cut_short_by_a_drain_past_its_grace_answers_503() -> None:
    supervisor = make_supervisor(idle_seconds=30)

    async def endless(actor: OrderActor) -> None:
        await asyncio.sleep(60)

    caller = asyncio.create_task(supervisor.ask(1, endless))
    await asyncio.sleep(0.05)
    await supervisor.drain(0.2)  # the grace runs out: the actor is cancelled mid-command
    with pytest.raises(Refusal):
        await asyncio.wait_for(caller, 2)


# --- through HTTP ---------------------------------------------------------------------------


async def test_an_actor_that_raises_answers_500_and_the_next_command_gets_a_fresh_actor(
    api: Api, app: web.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await api.customer()
    product = await api.product(stock=3)
    order = (await api.order(user, (product["id"], 1))).json
    real_cancel = orders_db.cancel

    async def broken(*args: Any) -> Any:
        raise RuntimeError("bug in a command")

    monkeypatch.setattr(orders_db, "cancel", broken)
    crashed = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert crashed.status == 500
    supervisor = app[CONTEXT].supervisor
    assert supervisor.metrics.actor_crashes._value.get() == 1
    assert order["id"] not in supervisor._actors  # the crashed actor is gone
    monkeypatch.setattr(orders_db, "cancel", real_cancel)
    again = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert again.status == 200
    assert again.json["status"] == "cancelled"
    assert await api.stock(product["id"]) == 3


@pytest.mark.parametrize("config_overrides", [{"actor_mailbox_size": 1}])
async def test_a_full_mailbox_gives_503_with_retry_after(
    api: Api, app: web.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = app[CONTEXT]
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    charging, release, charge = asyncio.Event(), asyncio.Event(), ctx.provider.charge

    async def held_charge(request: Any) -> Any:
        charging.set()
        await release.wait()  # the payment occupies the actor until the test says
        return await charge(request)

    monkeypatch.setattr(ctx.provider, "charge", held_charge)
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await asyncio.wait_for(charging.wait(), 30)
    queued = asyncio.create_task(api.call("DELETE", f"/api/orders/{order['id']}", token=user.token))
    await until(lambda: ctx.supervisor.queued_count == 1)
    refused = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    release.set()
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.content_type == "application/problem+json"
    assert (await paying).status == 201
    assert (await queued).status == 409
