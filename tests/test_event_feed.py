"""The feed under load: writers on two server processes (and transactions that
commit late, on purpose) while a reader follows next_cursor. The reader must see
every committed event exactly once, in the final order of the table; a webhook
subscribed to everything, served by both processes, must get each event once.

The default run writes for 3 s; `-m slow` runs the 10 s version.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.helpers import Api, ServerProcess, session
from tests.webhook_receiver import Receiver

_ids = itertools.count(1)


@pytest.fixture
def servers(clean_db: str) -> Iterator[list[ServerProcess]]:
    env = {
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "WEBHOOK_POLL_INTERVAL_SECONDS": "0.05",
        "DB_POOL_MAX_SIZE": "10",
    }
    started = [ServerProcess(clean_db, env=env).start() for _ in range(2)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


async def _http_writer(base_url: str, token: str, stop: asyncio.Event) -> None:
    async with session(base_url) as client:
        api = Api(client)
        while not stop.is_set():
            n = next(_ids)
            reply = await api.call("POST", "/api/products", json={"name": f"P{n}", "price": n, "stock": 1}, token=token)
            assert reply.status == 201, reply
            await api.call("PUT", f"/api/products/{reply.json['id']}", json={"price": n + 1}, token=token)


async def _late_committer(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Takes an event id, then commits after others have: the classic way a reader
    asking for "id > last seen" skips an event."""
    while not stop.is_set():
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO events (type, data) VALUES ('product.updated', $1::jsonb)", f'{{"id": {-next(_ids)}}}'
            )
            await asyncio.sleep(random.uniform(0, 0.05))


async def _read(api: Api, token: str, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
    query = "?limit=100" + (f"&after={cursor}" if cursor else "")
    reply = await api.call("GET", f"/api/events{query}", token=token)
    assert reply.status == 200, reply
    return reply.json["items"], reply.json["next_cursor"]


@pytest.mark.parametrize("seconds", [3, pytest.param(10, marks=pytest.mark.slow)])
async def test_a_reader_following_next_cursor_sees_every_event_once_in_order(
    servers: list[ServerProcess], clean_db: str, seconds: float
) -> None:
    receiver = await Receiver().start()
    clients = [session(s.url) for s in servers]
    pool = await asyncpg.create_pool(clean_db, min_size=2, max_size=4)
    try:
        apis = [Api(c) for c in clients]
        admin = await apis[0].admin_user()
        hook = await apis[0].call(
            "POST", "/api/webhooks", json={"url": receiver.url, "events": ["*"]}, token=admin.token
        )
        assert hook.status == 201, hook
        stop = asyncio.Event()
        writers = [
            *(asyncio.create_task(_http_writer(s.url, admin.token, stop)) for s in servers for _ in range(3)),
            *(asyncio.create_task(_late_committer(pool, stop)) for _ in range(2)),
        ]
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        deadline = time.monotonic() + seconds
        reads = 0
        while time.monotonic() < deadline:
            items, cursor = await _read(apis[reads % 2], admin.token, cursor)  # both processes answer
            reads += 1
            seen += items
            if len(items) < 100:
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*writers)
        total = await pool.fetchval("SELECT count(*) FROM events")
        for _ in range(500):
            if len(seen) >= total:
                break
            items, cursor = await _read(apis[reads % 2], admin.token, cursor)
            reads += 1
            seen += items
            if not items:
                await asyncio.sleep(0.02)
        final = [r["id"] for r in await pool.fetch("SELECT id FROM events ORDER BY txid, id")]
        ids = [e["id"] for e in seen]
        print(f"\n{len(final)} events written in {seconds} s, read in {reads} pages")
        assert len(ids) == len(set(ids)), "an event was shown twice"
        assert ids == final, "the reader missed events or saw them out of the final order"

        # The webhook: every event once (the claims keep the two processes from
        # sending the same delivery), each product's events in their order.
        await receiver.wait_for(lambda: len(receiver.received) >= len(final), timeout=60)
        delivered = Counter(int(r.headers["webhook-id"]) for r in receiver.received)
        assert set(delivered) == set(final) and max(delivered.values()) == 1
        position = {event_id: i for i, event_id in enumerate(final)}
        per_product: dict[int, list[int]] = defaultdict(list)
        for got in receiver.received:
            event = got.event
            per_product[event["data"]["id"]].append(position[event["id"]])
        assert all(order == sorted(order) for order in per_product.values())
    finally:
        for client in clients:
            await client.close()
        await pool.close()
        with contextlib.suppress(Exception):
            await receiver.stop()
