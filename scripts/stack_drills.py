"""Failure drills on scripts/stack.sh's stack, under a bounded load through nginx.

    python3 dev.py python scripts/stack_drills.py [--window 12] [--clients 16] [--json out.json]

Brings a stack up in its own folder (API_REPLICAS=2, WORKERS=1 unless set), then, each
while shoppers order, pay (some cards declined) and read products through nginx:

  kill-replica       kill -9 of one API replica (its restart loop starts it again)
  restart-pgbouncer  PgBouncer stopped at once and started again
  standby-outage     the streaming standby stopped for 3 s, then started
  restart-primary    the PostgreSQL primary restarted (fast shutdown)

Before the drills, with no other load, the read routing is checked (`read-routing`):
a change made through nginx is visible to anonymous reads through nginx within 1 s
(the standby in the path), anonymous reads that miss the cache go to the standby, go
to the primary while the standby is stopped (all still answered), and come back to
the standby once it has caught up again.

After each: pending payments are left to settle, `python -m server check-invariants
--settled` runs against the primary, and every order and payment the clients were told
succeeded is looked up there (none may be lost, none charged twice). Printed per drill:
requests, the share that failed (transport errors and 5xx; a 402 decline is an answer),
and the time from the fault to the last failed request (the time to recover). The stack
is taken down at the end. Exit 0 when every check passed, 1 when one failed, 4 when the
stack's packages cannot be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "stack.sh"
ADMIN_EMAIL = "drill-admin@example.com"
ADMIN_PASSWORD = "drill-admin-password"
CANNOT_INSTALL = 4


class StackError(RuntimeError):
    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


@dataclass
class Stack:
    folder: Path
    env: dict[str, str]
    settings: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str) -> str:
        done = subprocess.run([str(STACK), *args], env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            # Its own lines say what failed; the logs it prints after them, what led there.
            said = "\n".join(line for line in done.stderr.splitlines() if line.startswith("stack: "))
            message = f"stack.sh {' '.join(args)} failed ({done.returncode}):\n{said}\n...\n{done.stderr[-2000:]}"
            raise StackError(message, done.returncode)
        return done.stdout

    def up(self) -> None:
        self.run("up")
        for line in (self.folder / "stack.env").read_text().splitlines():
            key, _, value = line.partition("=")
            self.settings[key] = value

    @property
    def url(self) -> str:
        return self.settings["STACK_URL"]

    @property
    def primary(self) -> str:
        return self.settings["PRIMARY_URL"]

    def replica_pid(self, n: int) -> int:
        return int((self.folder / "run" / f"api-{n}.pid").read_text())


@dataclass
class Load:
    """What the clients saw: (time, failed) per request, and what they were told succeeded."""

    events: list[tuple[float, bool]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # "503 POST /api/orders: <detail>" -> count
    orders_created: set[int] = field(default_factory=set)
    orders_paid: set[int] = field(default_factory=set)

    def note(self, outcome: int | str) -> bool:
        failed = isinstance(outcome, str) or outcome >= 500
        self.events.append((time.monotonic(), failed))
        self.statuses[str(outcome)] += 1
        return not failed


@dataclass
class Drill:
    name: str
    requests: int
    failed: int
    failed_share: float
    recovery_s: float
    failures_by_second: dict[int, int]  # whole seconds after the fault began -> failed requests
    statuses: dict[str, int]
    failures: dict[str, int]
    invariants: str
    lost: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.invariants == "0 invariant violation(s)" and not self.lost


async def _call(http: aiohttp.ClientSession, load: Load, method: str, path: str, **kwargs: Any) -> Any:
    """One request; returns the JSON body of a 2xx answer, else None."""
    route = f"{method} {path.rsplit('/', 1)[0] + '/{id}' if path.startswith('/api/products/') else path}"
    try:
        async with http.request(method, path, **kwargs) as response:
            body = await response.read()
            if not load.note(response.status):
                detail = json.loads(body).get("detail", "") if response.content_type.endswith("json") else ""
                load.failures[f"{response.status} {route}: {detail}"[:160]] += 1
            return json.loads(body) if 200 <= response.status < 300 and body else None
    except (TimeoutError, aiohttp.ClientError) as exc:
        load.note(type(exc).__name__)
        load.failures[f"{type(exc).__name__} {route}"] += 1
        return None


async def shopper(url: str, token: str, product_ids: list[int], load: Load, until: float, seed: int) -> None:
    """Half catalog reads, half an order then its payment (15% declined cards)."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=15)) as http:
        while time.monotonic() < until:
            if rng.random() < 0.5:
                await _call(http, load, "GET", f"/api/products/{rng.choice(product_ids)}")
                continue
            items = [{"product_id": pid, "quantity": 1} for pid in rng.sample(product_ids, 2)]
            order = await _call(http, load, "POST", "/api/orders", json={"items": items}, headers=headers)
            if order is None:
                await asyncio.sleep(0.05)
                continue
            load.orders_created.add(order["id"])
            card = "tok_chargeDeclined" if rng.random() < 0.15 else "tok_visa"
            body = {"order_id": order["id"], "payment_method": {"type": "card", "token": card}}
            key = {"Idempotency-Key": secrets.token_hex(8)}
            if await _call(http, load, "POST", "/api/payments", json=body, headers=headers | key) is not None:
                load.orders_paid.add(order["id"])


async def setup_shop(url: str, clients: int) -> tuple[list[str], list[int]]:
    async with aiohttp.ClientSession(base_url=url) as http:

        async def post(path: str, body: dict[str, Any], token: str | None = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            while True:
                async with http.post(path, json=body, headers=headers) as response:
                    if response.status == 429:  # nginx's sign-up limit (deploy/nginx.conf): as asked
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                        continue
                    assert response.status in (200, 201), (path, response.status, await response.text())
                    return await response.json()

        admin = (await post("/api/users/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))["access_token"]
        products = [
            (await post("/api/products", {"name": f"Drill {i}", "price": 500, "stock": 1_000_000}, admin))["id"]
            for i in range(8)
        ]
        tokens = []
        for i in range(clients):
            email = f"drill{i}-{secrets.token_hex(4)}@example.com"
            await post("/api/users/register", {"email": email, "password": "drill-password", "name": "Drill"})
            login = await post("/api/users/login", {"email": email, "password": "drill-password"})
            tokens.append(login["access_token"])
    return tokens, products


async def settle_and_check(stack: Stack, load: Load) -> tuple[str, list[str]]:
    """Wait for pending payments to be reconciled, run check-invariants, and look up every
    order and payment the clients were told about."""
    conn = await asyncpg.connect(stack.primary)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'") == 0:
                break
            await asyncio.sleep(0.25)
        stored = await conn.fetch("SELECT id FROM orders WHERE id = ANY($1)", list(load.orders_created))
        found = {r["id"] for r in stored}
        paid = await conn.fetch(
            "SELECT o.id, count(p.id) AS charges FROM orders o LEFT JOIN payments p"
            " ON p.order_id = o.id AND p.status = 'succeeded' WHERE o.id = ANY($1) GROUP BY o.id",
            list(load.orders_paid),
        )
    finally:
        await conn.close()
    lost = [f"order {i} answered 201 but not stored" for i in sorted(load.orders_created - found)]
    lost += [f"order {r['id']} paid (201) with {r['charges']} charges" for r in paid if r["charges"] != 1]
    lost += [f"paid order {i} not stored" for i in sorted(load.orders_paid - {r["id"] for r in paid})]
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server", "check-invariants", "--settled"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": stack.primary, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = check.stdout.strip().splitlines()
    return (lines[-1] if lines else f"check-invariants failed: {check.stderr[-500:]}"), lost


async def wait_ready(url: str, timeout: float) -> float:
    """Seconds until /readyz through nginx answers 200."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() - started < timeout:
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


async def drill(
    stack: Stack,
    name: str,
    fault: Callable[[], Awaitable[dict[str, Any]]],
    shop: tuple[list[str], list[int]],
    window: float,
) -> Drill:
    """Load for 2 s, the fault, load until `window` seconds after the fault began."""
    tokens, products = shop
    load = Load()
    until = time.monotonic() + 2 + window
    clients = [
        asyncio.create_task(shopper(stack.url, token, products, load, until, seed)) for seed, token in enumerate(tokens)
    ]
    await asyncio.sleep(2)
    fault_at = time.monotonic()
    extra = await fault()
    await asyncio.gather(*clients)
    extra["ready_after_window_s"] = round(await wait_ready(stack.url, 60), 2)
    after = [(t, failed) for t, failed in load.events if t >= fault_at]
    failures = [t for t, failed in after if failed]
    invariants, lost = await settle_and_check(stack, load)
    return Drill(
        name=name,
        requests=len(load.events),
        failed=sum(failed for _, failed in load.events),
        failed_share=round(sum(failed for _, failed in load.events) / max(1, len(load.events)), 4),
        recovery_s=round(max(failures) - fault_at, 2) if failures else 0.0,
        failures_by_second=dict(sorted(Counter(int(t - fault_at) for t in failures).items())),
        statuses=dict(load.statuses),
        failures=dict(load.failures.most_common()),
        invariants=invariants,
        lost=lost,
        extra=extra,
    )


async def streaming_caught_up(stack: Stack, timeout: float) -> float:
    """Seconds until the standby streams again and has replayed everything the primary wrote."""
    started = time.monotonic()
    conn = await asyncpg.connect(stack.primary)
    try:
        while time.monotonic() - started < timeout:
            caught_up = await conn.fetchval(
                "SELECT bool_and(state = 'streaming' AND replay_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication"
            )
            if caught_up:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise RuntimeError("the standby did not catch up")


async def counter_totals(stack: Stack, name: str, label: str) -> dict[str, float]:
    """The samples `name` of a counter summed over the API replicas (each replica's
    /metrics adds up its workers), by the value of their label `label`."""
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for key, port in stack.settings.items():
            if not key.startswith("API_PORT_"):
                continue
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                for family in text_string_to_metric_families(await response.text()):
                    for sample in family.samples:
                        if sample.name == name:
                            by = sample.labels[label]
                            totals[by] = totals.get(by, 0.0) + sample.value
    return totals


async def catalog_reads(stack: Stack) -> dict[str, float]:
    """Catalog reads made on each database so far, by target (primary, standby)."""
    return await counter_totals(stack, "catalog_reads_total", "target")


async def read_routing(stack: Stack, rounds: int) -> dict[str, Any]:
    """Freshness through nginx with the standby in the path, then where reads go while
    the standby is up, stopped, and back."""
    async with aiohttp.ClientSession(base_url=stack.url, timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.request(method, path, json=body, headers=headers) as response:
                assert response.status < 300, (method, path, response.status, await response.text())
                return await response.json()

        login = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        admin = (await call("POST", "/api/users/login", login))["access_token"]

        async def new_products(count: int) -> list[int]:
            made = [
                await call("POST", "/api/products", {"name": "Read", "price": 100, "stock": 5}, admin)
                for _ in range(count)
            ]
            await asyncio.sleep(1.2)  # past every bound: the standby has them, no process remembers the change
            return [p["id"] for p in made]

        async def read_each(product_ids: list[int]) -> dict[str, float]:
            """Each product once, then one search naming them: anonymous, and misses."""
            before = await catalog_reads(stack)
            for product_id in product_ids:
                await call("GET", f"/api/products/{product_id}")
            await call("GET", f"/api/products?q=Read&min_price=100&limit={len(product_ids)}")
            after = await catalog_reads(stack)
            return {target: after.get(target, 0) - before.get(target, 0) for target in ("primary", "standby")}

        async def prices(product_id: int) -> set[int]:
            """The price as 8 anonymous reads at once through nginx see it (spread over the
            replicas and their workers)."""
            reads = [call("GET", f"/api/products/{product_id}") for _ in range(8)]
            return {product["price"] for product in await asyncio.gather(*reads)}

        # A change through nginx, then anonymous reads through nginx until all show it.
        # Every worker's cache holds the old version when the change is made.
        (product_id,) = await new_products(1)
        delays = []
        for price in range(200, 200 + rounds):
            for _ in range(4):
                await prices(product_id)
            await call("PUT", f"/api/products/{product_id}", {"price": price}, admin)
            changed = time.monotonic()
            while await prices(product_id) != {price}:
                assert time.monotonic() - changed < 5, "a change was not visible through nginx after 5 s"
                await asyncio.sleep(0.01)
            delays.append(time.monotonic() - changed)
        standby_up = await read_each(await new_products(20))
        fresh = await new_products(40)
        await asyncio.to_thread(stack.run, "stop", "standby")
        standby_down = await read_each(fresh[:20])
        await asyncio.to_thread(stack.run, "start", "standby")
        caught_up = await streaming_caught_up(stack, 60)
        await asyncio.sleep(1.0)  # the monitors sample again
        standby_back = await read_each(fresh[20:])
    return {
        "change_visible_max_s": round(max(delays), 3),
        "change_visible_median_s": round(sorted(delays)[len(delays) // 2], 3),
        "changes": rounds,
        "reads_standby_up": standby_up,
        "reads_standby_stopped": standby_down,
        "reads_standby_back": standby_back,
        "standby_caught_up_s": round(caught_up, 2),
    }


async def run(args: argparse.Namespace, stack: Stack) -> tuple[dict[str, Any], list[Drill]]:
    routing = await read_routing(stack, args.freshness_rounds)
    print(json.dumps({"read-routing": routing}), flush=True)
    shop = await setup_shop(stack.url, args.clients)

    async def kill_replica() -> dict[str, Any]:
        pid = stack.replica_pid(1)
        os.kill(pid, signal.SIGKILL)
        return {"killed_pid": pid}

    async def timed(*command: str) -> dict[str, Any]:
        started = time.monotonic()
        await asyncio.to_thread(stack.run, *command)
        return {f"{command[0]}_s": round(time.monotonic() - started, 2)}

    async def standby_outage() -> dict[str, Any]:
        await asyncio.to_thread(stack.run, "stop", "standby")
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.run, "start", "standby")
        return {"standby_caught_up_s": round(await streaming_caught_up(stack, 60), 2)}

    faults: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "kill-replica": kill_replica,
        "restart-pgbouncer": lambda: timed("restart", "pgbouncer"),
        "standby-outage": standby_outage,
        "restart-primary": lambda: timed("restart", "primary"),
    }
    results = []
    for name in args.drills:
        result = await drill(stack, name, faults[name], shop, args.window)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    return routing, results


# A handful of shoppers on one machine, all behind nginx's one address, stand for many:
# the per-customer and per-address abuse limits (pending orders, held units, declines)
# would otherwise stop them ordering or paying before the last drill (each limit has
# its own tests in tests/test_abuse.py). Every drill of the stack runs with these.
SHOPPERS_STAND_FOR_MANY = {
    "ORDER_MAX_PENDING_PER_USER": "1000000",
    "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP": "0",
    "PAYMENT_MAX_DECLINES_PER_ORDER": "1000000",
    "PAYMENT_MAX_DECLINES_PER_USER": "1000000",
    "PAYMENT_MAX_DECLINES_PER_IP": "0",
}


def temporary_stack(prefix: str, settings: dict[str, str]) -> Stack:
    """A stack (not yet up) in a new temporary folder, whose replicas get `settings`
    besides the environment: two replicas of one worker unless API_REPLICAS and
    WORKERS say otherwise, and the drills' admin."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)  # PostgreSQL and PgBouncer run as `postgres` when this runs as root
    env = {
        **os.environ,
        "STACK_DIR": str(folder / "stack"),
        "API_REPLICAS": os.environ.get("API_REPLICAS", "2"),
        "WORKERS": os.environ.get("WORKERS", "1"),
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        **settings,
    }
    return Stack(folder / "stack", env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=12.0, help="seconds of load after each fault begins")
    parser.add_argument("--clients", type=int, default=16, help="concurrent shoppers")
    parser.add_argument(
        "--drills", nargs="+", default=["kill-replica", "restart-pgbouncer", "standby-outage", "restart-primary"]
    )
    parser.add_argument("--freshness-rounds", type=int, default=10, help="changes timed through nginx")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--logs", type=Path, help="copy the stack's logs (replicas, PgBouncer, PostgreSQL) here")
    args = parser.parse_args(argv)
    stack = temporary_stack(
        "storefront-drills-",
        {
            # These drills stop and restart the primary and the standby by hand: the
            # simple layout (the highly available one has its own: scripts/stack_failover.py).
            "STACK_HA": "0",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            # Payments cut by a fault are settled within the drill, not minutes later.
            "PAYMENT_RECONCILE_INTERVAL_SECONDS": "1",
            "PAYMENT_PROVIDER_LATENCY_MS": os.environ.get("PAYMENT_PROVIDER_LATENCY_MS", "50"),
            **SHOPPERS_STAND_FOR_MANY,
        },
    )
    folder = stack.folder.parent
    try:
        stack.up()
    except StackError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        print(exc, file=sys.stderr)
        return CANNOT_INSTALL if exc.returncode == CANNOT_INSTALL else 1
    try:
        routing, results = asyncio.run(run(args, stack))
    finally:
        if args.logs:
            shutil.copytree(stack.folder / "log", args.logs, dirs_exist_ok=True)
        stack.run("down")
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"read_routing": routing, "drills": [asdict(r) for r in results]}, indent=2))
    print(f"{'read-routing':18} {routing}")
    for r in results:
        print(
            f"{r.name:18} requests {r.requests:6}  failed {r.failed:5} ({r.failed_share:.2%})  "
            f"recovered in {r.recovery_s:5.2f} s  {r.invariants}  lost {len(r.lost)}  {r.extra}"
        )
    return 0 if all(r.passed for r in results) and read_routing_passed(routing) else 1


def read_routing_passed(routing: dict[str, Any]) -> bool:
    """Changes visible within 1 s; reads on the standby while it is up, none while it
    is stopped, and on it again once it is back."""
    return bool(
        routing["change_visible_max_s"] < 1.0
        and routing["reads_standby_up"]["standby"] > 0
        and routing["reads_standby_stopped"]["standby"] == 0
        and routing["reads_standby_stopped"]["primary"] > 0
        and routing["reads_standby_back"]["standby"] > 0
    )


if __name__ == "__main__":
    sys.exit(main())
