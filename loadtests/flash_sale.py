"""The busiest minute: a flash sale of one product with --stock units, --buyers distinct
customers ordering one unit each at the same moment, on a service of --workers worker
processes; repeated --rounds times (a fresh product each round).

    python3 dev.py tools python -m loadtests.flash_sale --stock 500 --buyers 1024 --workers 2 --rounds 2

Every buyer has its own account and connection, and all send their order together
(after a barrier): exactly --stock must be answered 201 and the rest 409 (or 503 with
Retry-After), the product's stock must end at 0, and the service's own invariant
checker must find nothing. Latencies are what the buyers saw, from the barrier to the
answer. Exit status 1 when any of that does not hold. Needs a PostgreSQL where
databases may be created (--pg-url).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from db.pool import Database
from loadtests import bench
from server.domain import invariants


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _buyers(http: aiohttp.ClientSession, count: int) -> list[str]:
    """`count` new customers' access tokens."""
    semaphore = asyncio.Semaphore(32)

    async def buyer(n: int) -> str:
        email = f"flash-{n}-{secrets.token_hex(4)}@example.com"
        body = {"email": email, "password": "flash-sale-password-1", "name": "Buyer"}
        async with semaphore:
            async with http.post("/api/users/register", json=body) as reply:
                assert reply.status == 201, await reply.text()
            async with http.post("/api/users/login", json={"email": email, "password": body["password"]}) as reply:
                token: str = (await reply.json())["access_token"]
        return token

    return list(await asyncio.gather(*(buyer(n) for n in range(count))))


async def _round(url: str, admin: str, tokens: list[str], stock: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url=url) as http:
        headers = {"Authorization": f"Bearer {admin}"}
        body = {"name": f"Flash {secrets.token_hex(3)}", "price": 1999, "stock": stock}
        async with http.post("/api/products", json=body, headers=headers) as reply:
            product = await reply.json()
    # One connection per buyer, opened before the sale (as browsers already are).
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as http:
        await asyncio.gather(*(http.get("/healthz") for _ in tokens))
        go = asyncio.Event()
        order = {"items": [{"product_id": product["id"], "quantity": 1}]}

        async def buy(token: str) -> tuple[int, float, bool]:
            await go.wait()
            started = time.monotonic()
            async with http.post("/api/orders", json=order, headers={"Authorization": f"Bearer {token}"}) as reply:
                await reply.read()
                return reply.status, time.monotonic() - started, "Retry-After" in reply.headers

        buyers = [asyncio.create_task(buy(token)) for token in tokens]
        await asyncio.sleep(0.5)  # every buyer is waiting at the barrier
        began = time.monotonic()
        go.set()
        answers = await asyncio.gather(*buyers)
        elapsed = time.monotonic() - began
        async with http.get(f"/api/products/{product['id']}", headers={"Cache-Control": "no-cache"}) as reply:
            left = (await reply.json())["stock"]
    statuses = collections.Counter(status for status, _, _ in answers)
    latencies = [latency for _, latency, _ in answers]
    shed_without_retry_after = sum(1 for status, _, retry in answers if status == 503 and not retry)
    return {
        "statuses": dict(sorted(statuses.items())),
        "stock_left": left,
        "done_in_s": round(elapsed, 3),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(_quantile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
        "sold_exactly": statuses[201] == stock and left == 0,
        "refusals_ok": set(statuses) <= {201, 409, 503} and shed_without_retry_after == 0,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    options = bench.parse(["--pg-url", args.pg_url, "--server-cpus", args.server_cpus])
    db = f"loadbench_flash_{secrets.token_hex(3)}"
    await bench._admin_sql(args.pg_url, f'CREATE DATABASE "{db}"')
    # Cheap hashing: the buyers' sign-ups are the preparation, not the sale.
    env = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "1024", "PASSWORD_HASH_PARALLELISM": "1"}
    server = bench.Server(options, pool=20, workers=args.workers, env=env, db=db, checkout=bench.ROOT)
    rounds: list[dict[str, Any]] = []
    try:
        server.start()
        await server.ready()
        async with aiohttp.ClientSession(base_url=server.url) as http:
            login = {"email": bench.ADMIN[0], "password": bench.ADMIN[1]}
            async with http.post("/api/users/login", json=login) as reply:
                admin = (await reply.json())["access_token"]
            for _ in range(args.rounds):
                tokens = await _buyers(http, args.buyers)  # fresh buyers: each holds no order yet
                rounds.append(await _round(server.url, admin, tokens, args.stock))
        violations = await _violations(f"{args.pg_url.rsplit('/', 1)[0]}/{db}")
    finally:
        server.stop()
        await bench._admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return {"stock": args.stock, "buyers": args.buyers, "workers": args.workers, "rounds": rounds,
            "invariant_violations": violations}  # fmt: skip


async def _violations(dsn: str) -> list[str]:
    """What the service's own invariant checker finds (as `check-invariants` runs it)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        return await invariants.violations(Database(pool, 10), settled=False)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stock", type=int, default=500)
    parser.add_argument("--buyers", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-cpus", default="0,1")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    good = all(r["sold_exactly"] and r["refusals_ok"] for r in result["rounds"])
    return 0 if good and not result["invariant_violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
