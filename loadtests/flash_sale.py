"""The busiest minute: a flash sale of one product with --stock units, --buyers distinct
customers ordering one unit each at the same moment, on a service of --workers worker
processes; repeated --rounds times (a fresh product each round), after --warmup-rounds
whose figures are reported apart (a shop's service has been serving before its sale:
its pools have grown to their size and each connection has planned the statements).

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
import uvloop

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


class _Buyer:
    """One buyer's own keep-alive connection, opened before the sale, and its order as
    bytes encoded in advance: the sale's 1,024 requests are sent and read by this one
    client process, on the cores the workers use, so each costs it a write and a read
    instead of a client library's request machinery (which made the drill measure its
    own client: wrk's approach, in Python)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> _Buyer:
        buyer = cls(*await asyncio.open_connection(host, port))
        buyer.writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        status, _ = await buyer.answer()
        assert status == 200, status
        return buyer

    async def answer(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the next response; its body read and dropped."""
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = (line.split(": ", 1) for line in head[1:] if line)
        headers = {name.lower(): value for name, value in fields}
        await self.reader.readexactly(int(headers["content-length"]))
        return int(head[0].split(" ", 2)[1]), headers

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _order_request(host: str, port: int, token: str, product_id: int) -> bytes:
    body = json.dumps({"items": [{"product_id": product_id, "quantity": 1}]}).encode()
    head = (
        f"POST /api/orders HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _sale(url: str, tokens: list[str], product_id: int) -> tuple[list[tuple[int, float, bool]], float]:
    """Every buyer orders one unit at once: per buyer, the status, the latency and
    whether a Retry-After came; and the time until the last answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    # One connection per buyer, opened before the sale (as browsers already are).
    buyers = await asyncio.gather(*(_Buyer.connect(host, int(port)) for _ in tokens))
    requests = [_order_request(host, int(port), token, product_id) for token in tokens]
    go = asyncio.Event()

    async def buy(buyer: _Buyer, request: bytes) -> tuple[int, float, bool]:
        await go.wait()
        started = time.monotonic()
        buyer.writer.write(request)
        status, headers = await buyer.answer()
        return status, time.monotonic() - started, "retry-after" in headers

    sales = [asyncio.create_task(buy(buyer, request)) for buyer, request in zip(buyers, requests, strict=True)]
    await asyncio.sleep(0.5)  # every buyer is waiting at the barrier
    began = time.monotonic()
    go.set()
    answers = await asyncio.gather(*sales)
    elapsed = time.monotonic() - began
    await asyncio.gather(*(buyer.close() for buyer in buyers))
    return answers, elapsed


async def _round(url: str, admin: str, tokens: list[str], stock: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url=url) as http:
        headers = {"Authorization": f"Bearer {admin}"}
        body = {"name": f"Flash {secrets.token_hex(3)}", "price": 1999, "stock": stock}
        async with http.post("/api/products", json=body, headers=headers) as reply:
            product = await reply.json()
        answers, elapsed = await _sale(url, tokens, product["id"])
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
    warmup: list[dict[str, Any]] = []
    try:
        server.start()
        await server.ready()
        async with aiohttp.ClientSession(base_url=server.url) as http:
            login = {"email": bench.ADMIN[0], "password": bench.ADMIN[1]}
            async with http.post("/api/users/login", json=login) as reply:
                admin = (await reply.json())["access_token"]
            for kept in [warmup] * args.warmup_rounds + [rounds] * args.rounds:
                tokens = await _buyers(http, args.buyers)  # fresh buyers: each holds no order yet
                kept.append(await _round(server.url, admin, tokens, args.stock))
        violations = await invariants.violations_at(f"{args.pg_url.rsplit('/', 1)[0]}/{db}")
    finally:
        server.stop()
        await bench._admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return {"stock": args.stock, "buyers": args.buyers, "workers": args.workers, "warmup": warmup,
            "rounds": rounds, "invariant_violations": violations}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stock", type=int, default=500)
    parser.add_argument("--buyers", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--server-cpus", default="0,1")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = uvloop.run(run(args))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    good = all(r["sold_exactly"] and r["refusals_ok"] for r in result["warmup"] + result["rounds"])
    return 0 if good and not result["invariant_violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
