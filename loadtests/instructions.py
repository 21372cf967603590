"""Instructions per request, counted by valgrind's callgrind: a figure that does not move
with the machine's noise, for comparing two servers (or two versions of one) where
wrk's req/s moves by 15% between runs.

    python3 dev.py tools python -m loadtests.instructions --path '/api/products?limit=20' \\
        --env DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<seeded db> --env WORKERS=1 \\
        -- .venv/bin/python -m server
    python3 dev.py tools python -m loadtests.instructions --pay --requests 500 \\
        --env DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<empty db> --env WORKERS=1 \\
        -- .venv/bin/python -m server                   # a payment (POST /api/payments)
    python3 dev.py tools python -m loadtests.instructions --pay --requests 500 \\
        --orders-by '.venv/bin/python -m server' \\
        --env DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<empty db> --env WORKERS=1 \\
        -- .venv/bin/python -m loadtests.pay_floor      # a payment on the payment floor

The server runs under callgrind with instrumentation off while it starts and serves
--warmup requests; instrumentation is on for exactly --requests requests (sent by
--concurrency keep-alive clients), then the counts are dumped and summed, in all and
for the main thread (the event loop) alone: the other threads (the span exporter's,
the catalog watch's) work on their own schedule. Only user-space instructions of the
server process count: not the kernel, not PostgreSQL, and not cache misses, so it
ranks the work a request costs, not its latency. The server must stay one process
(WORKERS=1 for this one). Needs valgrind (Debian package).

With --pay the requests are payments of fresh pending orders with the simulated
provider answering at once: the tool makes an admin (ADMIN_EMAIL and ADMIN_PASSWORD
of its own), 50 products and 20 customers, and their orders, before it counts; the
order and decline limits are lifted so that one address may place them all (each of
these settings can be given again with --env). With --orders-by, another server makes
them (the service, not counted) and stops, and the counted one only pays them: the
payment floor (loadtests/pay_floor.py), which serves nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

_ADMIN = {"email": "instructions-admin@example.com", "password": "instructions-admin-password"}
_PAY_ENV = {
    "ADMIN_EMAIL": _ADMIN["email"],
    "ADMIN_PASSWORD": _ADMIN["password"],
    "PAYMENT_PROVIDER_LATENCY_MS": "0",
    "PAYMENT_MAX_DECLINES_PER_IP": "0",
    "ORDER_MAX_PENDING_PER_USER": "1000000",
    "ORDER_MAX_HELD_UNITS_PER_PRODUCT": "1000000",
    "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP": "0",
}
_PRODUCTS, _CUSTOMERS = 50, 20

# Sends `count` requests with `concurrency` keep-alive clients.
Load = Callable[[int, int], Awaitable[None]]


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with session.request(method, url, **kwargs) as response:
        body = await response.read()
        if response.status >= 400:
            raise SystemExit(f"{method} {url} answered {response.status}: {body[:200]!r}")
        return await response.json() if body else None


async def _in_parallel(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """`one(i)` for i below count // concurrency * concurrency, by `concurrency` clients."""

    async def client(first: int) -> None:
        for i in range(first, count // concurrency * concurrency, concurrency):
            await one(i)

    await asyncio.gather(*(client(k) for k in range(concurrency)))


def _gets(session: aiohttp.ClientSession, url: str) -> Load:
    async def load(count: int, concurrency: int) -> None:
        async def one(_i: int) -> None:
            await _call(session, "GET", url)

        await _in_parallel(count, concurrency, one)

    return load


# A pending order to pay: its owner's Authorization header and its id.
Order = tuple[dict[str, str], int]


async def _pending_orders(session: aiohttp.ClientSession, base: str, orders_needed: int) -> list[Order]:
    """Makes the catalog, the customers and `orders_needed` pending orders."""
    admin = await _call(session, "POST", f"{base}/api/users/login", json=_ADMIN)
    as_admin = {"Authorization": f"Bearer {admin['access_token']}"}
    products = []
    for n in range(_PRODUCTS):
        product = {"name": f"Counted {n}", "description": "-", "price": 1000, "currency": "EUR", "stock": 10**6}
        products.append((await _call(session, "POST", f"{base}/api/products", json=product, headers=as_admin))["id"])
    customers = []
    for n in range(_CUSTOMERS):
        login = {"email": f"counted-{n}-{time.time_ns()}@example.com", "password": "counted-password-1"}
        await _call(session, "POST", f"{base}/api/users/register", json={**login, "name": f"Counted {n}"})
        grant = await _call(session, "POST", f"{base}/api/users/login", json=login)
        customers.append({"Authorization": f"Bearer {grant['access_token']}"})
    orders = []
    for n in range(orders_needed):
        owner = customers[n % _CUSTOMERS]
        lines = {"items": [{"product_id": products[n % _PRODUCTS], "quantity": 1}]}
        orders.append((owner, (await _call(session, "POST", f"{base}/api/orders", json=lines, headers=owner))["id"]))
    return orders


def _payments(session: aiohttp.ClientSession, base: str, orders: list[Order]) -> Load:
    """The load that pays the next of `orders`."""
    paid = 0

    async def load(count: int, concurrency: int) -> None:
        nonlocal paid
        start, paid = paid, paid + count

        async def one(i: int) -> None:
            owner, order_id = orders[start + i]
            body = {"order_id": order_id, "payment_method": {"type": "card", "token": "tok_visa"}}
            await _call(session, "POST", f"{base}/api/payments", json=body, headers=owner)

        await _in_parallel(count, concurrency, one)

    return load


def _wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited while starting (see its log)")
        try:
            asyncio.run(_ping(base + "/healthz"))
            return
        except (aiohttp.ClientError, OSError):
            time.sleep(1)
    raise SystemExit(f"the server did not answer /healthz within {timeout:.0f} s")


async def _ping(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await response.read()


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _instructions(out_dir: Path) -> tuple[int, int]:
    """All threads' instructions and the main thread's (the dumps of thread 1)."""
    total = main_thread = 0
    for dump in out_dir.glob("callgrind.out*"):
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                count = int(line.split()[1])
                total += count
                main_thread += count if dump.name.endswith("-01") else 0
    return total, main_thread


async def _drive(base: str, pid: int, args: argparse.Namespace, orders: list[Order] | None) -> None:
    async with aiohttp.ClientSession() as session:
        if args.pay:
            if orders is None:
                orders = await _pending_orders(session, base, args.warmup + args.requests)
            load = _payments(session, base, orders)
        else:
            load = _gets(session, base + args.path)
        await load(args.warmup, args.concurrency)
        _callgrind_control("--instr=on", pid)
        await load(args.requests, args.concurrency)
        _callgrind_control("--instr=off", pid)
        _callgrind_control("--dump", pid)


def _orders_made_by(command: list[str], env: dict[str, str], args: argparse.Namespace) -> list[Order]:
    """The pending orders to pay, made through the server `command` (not counted),
    which is then stopped."""
    base = f"http://127.0.0.1:{args.port}"

    async def make() -> list[Order]:
        async with aiohttp.ClientSession() as session:
            return await _pending_orders(session, base, args.warmup + args.requests)

    # Its warnings and errors on this terminal: a server that cannot start says why here.
    process = subprocess.Popen(
        command, env={**os.environ, "PORT": str(args.port), "LOG_LEVEL": "WARNING", **_PAY_ENV, **env}
    )
    try:
        _wait_healthy(base, process, args.start_timeout)
        return asyncio.run(make())
    finally:
        process.terminate()
        process.wait(timeout=120)


def measure(command: list[str], env: dict[str, str], args: argparse.Namespace) -> tuple[float, float]:
    """Instructions per request of `command` (all threads, the main thread)."""
    orders = _orders_made_by(shlex.split(args.orders_by), env, args) if args.orders_by else None
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp, (Path(tmp) / "server.log").open("wb") as log:
        out_dir = Path(tmp)
        callgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out_dir}/callgrind.out",
        ]
        process = subprocess.Popen(
            [*callgrind, *command],
            env={**os.environ, "PORT": str(args.port), **(_PAY_ENV if args.pay else {}), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(base, process, args.start_timeout)
            asyncio.run(_drive(base, process.pid, args, orders))
        finally:
            process.terminate()
            process.wait(timeout=120)
        counted: int = args.requests // args.concurrency * args.concurrency
        total, main_thread = _instructions(out_dir)
        return total / counted, main_thread / counted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="/api/products?limit=20", help="the request to count (GET)")
    p.add_argument("--pay", action="store_true", help="count payments instead (POST /api/payments)")
    p.add_argument(
        "--orders-by",
        metavar="COMMAND",
        help="with --pay: make the orders through this server (not counted, stopped before the counted one "
        "starts), for a counted server that only pays (loadtests/pay_floor.py)",
    )
    p.add_argument("--requests", type=int, default=2000, help="requests counted (default 2000)")
    p.add_argument("--warmup", type=int, default=400, help="requests before counting (default 400)")
    p.add_argument("--concurrency", type=int, default=8, help="keep-alive clients (default 8)")
    p.add_argument("--port", type=int, default=8190)
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /healthz")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    p.add_argument("command", nargs="+", help="the server command, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    options = parser()
    args = options.parse_args(argv)
    if args.orders_by and not args.pay:
        options.error("--orders-by makes orders to pay: it goes with --pay")
    env = dict(item.split("=", 1) for item in args.env)
    total, main_thread = measure(args.command, env, args)
    what = "POST /api/payments" if args.pay else f"GET {args.path}"
    print(f"{total:,.0f} instructions per request, {main_thread:,.0f} in the main thread ({args.requests} x {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
