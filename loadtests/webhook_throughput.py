"""Webhook delivery against the write path: one webhook subscribed to order.created
(and order.paid), a local receiver that answers 204 at once, and orders made as fast as
the service takes them; how long after the last order its event arrives, how many
deliveries a second, and whether each order's events arrived in order.

    python3 dev.py tools python -m loadtests.webhook_throughput --orders 1000 --workers 2
    python3 dev.py tools python -m loadtests.webhook_throughput --orders 1000 --backlog

The service runs with --workers workers on a fresh database (pinned to --server-cpus),
the receiver and the clients in this process. Deliveries per second are counted from
the first order's answer to the last event's arrival. Needs a PostgreSQL where
databases may be created (--pg-url).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from loadtests import bench


class Receiver:
    """Answers every delivery 204 at once, noting when each event arrived; while
    `refusing`, answers 503 instead (a backlog builds up, retried soon)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.refusing = False
        self.expected = 1 << 62  # set once the orders are made
        self.all_in = asyncio.Event()
        self._seen: set[int] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        event = await request.json()
        if self.refusing:
            return web.Response(status=503)
        self.arrivals.append((time.monotonic(), event))
        self._seen.add(event["id"])
        if len(self._seen) >= self.expected:
            self.all_in.set()
        return web.Response(status=204)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    options = bench.parse(["--pg-url", args.pg_url, "--server-cpus", args.server_cpus, "--payment-latency-ms", "0"])
    db = f"loadbench_webhooks_{secrets.token_hex(3)}"
    await bench._admin_sql(args.pg_url, f'CREATE DATABASE "{db}"')
    env = {"WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "WEBHOOK_RETRY_BASE_SECONDS": "0.5"}
    server = bench.Server(options, pool=20, workers=args.workers, env=env, db=db, checkout=bench.ROOT)
    receiver = Receiver()
    await receiver.start()
    try:
        server.start()
        await server.ready()
        async with aiohttp.ClientSession(base_url=server.url) as http:

            async def post(path: str, body: Any, token: str | None = None) -> Any:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.post(path, json=body, headers=headers) as response:
                    assert response.status in (200, 201), (path, response.status, await response.text())
                    return await response.json()

            admin = (await post("/api/users/login", {"email": bench.ADMIN[0], "password": bench.ADMIN[1]}))[
                "access_token"
            ]
            await post("/api/webhooks", {"url": receiver.url, "events": ["order.created", "order.paid"]}, admin)
            products = [
                (await post("/api/products", {"name": f"Hook {i}", "price": 100, "stock": 10**9}, admin))["id"]
                for i in range(20)
            ]
            tokens = []
            for i in range(args.clients):
                email = f"hooks-{i}-{time.time_ns()}@example.com"
                await post("/api/users/register", {"email": email, "password": "hooks-password-1", "name": "H"})
                login = await post("/api/users/login", {"email": email, "password": "hooks-password-1"})
                tokens.append(login["access_token"])

            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(args.orders):
                queue.put_nowait(n)
            paid: list[int] = []

            async def client(token: str) -> None:
                while not queue.empty():
                    n = queue.get_nowait()
                    order = await post(
                        "/api/orders", {"items": [{"product_id": products[n % 20], "quantity": 1}]}, token
                    )
                    if n % args.pay_every == 0:
                        card = {"type": "card", "token": "tok_visa"}
                        await post("/api/payments", {"order_id": order["id"], "payment_method": card}, token)
                        paid.append(order["id"])

            receiver.refusing = args.backlog
            started = time.monotonic()
            await asyncio.gather(*(client(t) for t in tokens))
            last_answer = time.monotonic()
            receiver.refusing = False
            expected = receiver.expected = args.orders + len(paid)
            if len(receiver._seen) >= expected:
                receiver.all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.all_in.wait(), args.wait)
    finally:
        server.stop()
        await receiver.stop()
        await bench._admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    arrivals = receiver.arrivals
    distinct = {e["id"] for _, e in arrivals}
    last_arrival = max((t for t, _ in arrivals), default=last_answer)
    per_order: dict[int, list[str]] = {}
    for _, event in sorted(arrivals, key=lambda a: a[0]):
        per_order.setdefault(event["data"]["id"], []).append(event["type"])
    out_of_order = [
        oid for oid, types in per_order.items() if types != sorted(types, key=["order.created", "order.paid"].index)
    ]
    lags = [t - started for t, _ in arrivals]
    # With a backlog, the rate is counted from when the receiver began to accept.
    counted_from = last_answer if args.backlog else started
    return {
        "backlog": args.backlog,
        "orders": args.orders,
        "paid": len(paid),
        "workers": args.workers,
        "events_expected": expected,
        "events_delivered": len(distinct),
        "deliveries_received": len(arrivals),
        "orders_taken_s": round(last_answer - started, 2),
        "last_delivery_after_last_order_s": round(last_arrival - last_answer, 2),
        "deliveries_per_s": round(len(distinct) / max(last_arrival - counted_from, 1e-9), 1),
        "arrival_median_s": round(statistics.median(lags), 2) if lags else None,
        "orders_out_of_order": len(out_of_order),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--pay-every", type=int, default=10, help="pay one order in this many (order.paid follows)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent customers placing the orders")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="the receiver answers 503 until the last order, so the deliveries wait as a backlog (retried after "
        "0.5 s) that is then drained: the delivery rate itself, not the order rate",
    )
    parser.add_argument("--server-cpus", default="0,1")
    parser.add_argument("--wait", type=float, default=120.0, help="most seconds to wait for the last delivery")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["events_delivered"] == result["events_expected"] and not result["orders_out_of_order"] else 1


if __name__ == "__main__":
    sys.exit(main())
