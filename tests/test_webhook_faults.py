"""Webhook deliveries across a crash: kill -9 a server with deliveries pending while
the receiver is down; after a restart and the receiver's return, every event is
delivered at least once, none is lost, and each order's events arrive in order."""

from __future__ import annotations

from collections import defaultdict

import asyncpg
import pytest

from server.runtime.ports import free_port
from tests.helpers import Api, ServerProcess, eventually, session
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.faults

ENV = {
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    "WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "WEBHOOK_MAX_ATTEMPTS": "100",
}


async def test_deliveries_pending_at_a_kill_9_are_all_delivered_after_restart(
    clean_db: str, db: asyncpg.Connection
) -> None:
    receiver = Receiver(port=free_port())  # down: connections are refused
    first = ServerProcess(clean_db, env=ENV).start()
    second: ServerProcess | None = None
    try:
        async with session(first.url) as client:
            api = Api(client)
            admin = await api.admin_user()
            reply = await api.call(
                "POST", "/api/webhooks", json={"url": receiver.url, "events": ["*"]}, token=admin.token
            )
            assert reply.status == 201, reply
            product = await api.product(stock=1000)
            user = await api.customer()
            for _ in range(10):
                order = (await api.order(user, (product["id"], 1))).json
                assert (await api.pay(user, order["id"])).status == 201
            for i in range(10):
                await api.product(name=f"P{i}")

        async def twenty_failed_attempts() -> int:
            failed: int = await db.fetchval("SELECT count(*) FROM webhook_attempts")
            return failed if failed >= 20 else 0

        attempts = await eventually(twenty_failed_attempts)
        first.kill()
        pending = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
        events = [r["id"] for r in await db.fetch("SELECT id FROM events ORDER BY txid, id")]
        print(f"\nkilled with {pending} deliveries pending after {attempts} failed attempts; {len(events)} events")
        assert pending > 0

        await receiver.start()
        second = ServerProcess(clean_db, env=ENV).start()
        await receiver.wait_for(lambda: {int(r.headers["webhook-id"]) for r in receiver.received} >= set(events), 60)
        # Each delivery is recorded as succeeded just after the receiver answers it: wait
        # for the last records rather than read them at the moment of the last answer.

        async def all_recorded_succeeded() -> bool:
            return bool(await db.fetchval("SELECT count(*) = 0 FROM webhook_deliveries WHERE status <> 'succeeded'"))

        await eventually(all_recorded_succeeded)
        position = {event_id: i for i, event_id in enumerate(events)}
        per_order: dict[int, list[int]] = defaultdict(list)
        for got in receiver.received:
            event = got.event
            if event["type"].startswith(("order.", "payment.")):
                per_order[event["data"].get("order_id", event["data"]["id"])].append(position[event["id"]])
        first_seen = {k: list(dict.fromkeys(v)) for k, v in per_order.items()}
        assert all(seq == sorted(seq) for seq in first_seen.values()), first_seen
        print(f"delivered {len(receiver.received)} requests for {len(events)} events after the restart")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await receiver.stop()
