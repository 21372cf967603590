"""The fault suite: real traffic at real server processes on real PostgreSQL, with
faults injected, and the invariants checked afterwards.

Run on its own with `python3 dev.py test -m faults` (`.ci/run` runs it after the
default suite). Each test prints its figures (requests sent, faults injected,
violations found); docs/reliability.md records the last run.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.runtime.embedded_pg import EmbeddedPostgres
from tests.helpers import ROOT, Api, ServerProcess, User, invariant_violations, session
from tests.stripe_standin import Gateway, StandIn

pytestmark = pytest.mark.faults

_CLIENT_REQUEST_ID = re.compile(r"^c\d+-\d+$")


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


async def wait_for_settled_payments(dsn: str, timeout: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'") == 0:
                return
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def shopper(base_url: str, user: User, product_ids: list[int], tally: Tally, until: float, seed: int) -> None:
    """Orders, pays (some declines), sometimes cancels, until `until`."""
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=15)
    async with session(base_url, timeout=timeout) as http:
        api = Api(http)
        while time.monotonic() < until:
            try:
                lines = [(pid, rng.randint(1, 2)) for pid in rng.sample(product_ids, rng.randint(1, 3))]
                created = await api.order(user, *lines)
                tally.statuses[created.status] += 1
                if created.status != 201:
                    continue
                order_id = created.json["id"]
                if rng.random() < 0.2:
                    reply = await api.call(
                        "PUT", f"/api/orders/{order_id}", json={"status": "cancelled"}, token=user.token
                    )
                else:
                    card = "tok_chargeDeclined" if rng.random() < 0.15 else "tok_visa"
                    reply = await api.pay(user, order_id, card=card, key=f"{seed}-{order_id}")
                tally.statuses[reply.status] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                tally.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)


async def _setup_shop(url: str, customers: int, products: int) -> tuple[list[User], list[int]]:
    async with session(url) as http:
        api = Api(http)
        users = [await api.customer() for _ in range(customers)]
        product_ids = [(await api.product(name=f"Fault {i}", stock=100_000))["id"] for i in range(products)]
    return users, product_ids


def _report(name: str, **figures: Any) -> None:
    print(f"\nFAULT-SUITE {name}: " + json.dumps(figures, default=str))


async def test_killing_one_of_two_servers_mid_load_loses_nothing(clean_db: str) -> None:
    env = {
        "PAYMENT_PROVIDER_LATENCY_MS": "300",
        "PAYMENT_PROVIDER_TIMEOUT_MS": "1000",
        "PAYMENT_RECONCILE_INTERVAL_SECONDS": "0.5",
    }
    a, b = ServerProcess(clean_db, env=env).start(), ServerProcess(clean_db, env=env).start()
    try:
        users, product_ids = await _setup_shop(a.url, 20, 8)
        tally = Tally()
        until = time.monotonic() + 10
        load = [
            asyncio.create_task(shopper((a, b)[i % 2].url, users[i], product_ids, tally, until, i))
            for i in range(len(users))
        ]
        await asyncio.sleep(3)
        a.kill()  # kill -9, payments in flight
        await asyncio.sleep(2)
        a = ServerProcess(clean_db, env=env, port=a.port)  # the same address: its clients carry on
        await asyncio.to_thread(a.start)
        await asyncio.gather(*load)
        await wait_for_settled_payments(clean_db, timeout=30)
        problems = await invariant_violations(clean_db, settled=True)
        _report("kill -9", requests=tally.sent, statuses=dict(tally.statuses), errors=dict(tally.errors),
                faults=1, violations=len(problems))  # fmt: skip
        assert problems == []
        assert tally.statuses[201] > 50
        assert not any(500 <= status < 600 and status != 503 for status in tally.statuses)
    finally:
        a.stop()
        b.stop()


async def _paid_orders(api: Api, users: list[User], product_ids: list[int], count: int) -> list[dict[str, Any]]:
    """`count` paid orders (their payments), paid at once."""

    async def one(i: int) -> dict[str, Any]:
        user = users[i % len(users)]
        order = (await api.order(user, (product_ids[i % len(product_ids)], 1 + i % 3))).json
        paid = await api.pay(user, order["id"])
        assert paid.status == 201, paid
        payment: dict[str, Any] = paid.json
        return payment

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _check_invariants(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "check-invariants", "--settled"],
        cwd=ROOT, env={"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


async def test_kill_9_with_charges_and_refunds_in_flight_settles_them_within_5_seconds(clean_db: str) -> None:
    """The killed process's liveness lock goes with it: the other process's
    reconciler (default interval, 1 s) settles its payments and refunds as the
    provider says, long before their lease (2 x 3 s + 5 s here) would run out."""
    # One admin sends the 20 refunds: all of them in flight at once (the per-user bound
    # on commands in flight is 16 by default).
    env = {"PAYMENT_PROVIDER_LATENCY_MS": "1200", "PAYMENT_PROVIDER_TIMEOUT_MS": "3000", "MAX_COMMANDS_PER_USER": "64"}
    a, b = ServerProcess(clean_db, env=env).start(), ServerProcess(clean_db, env=env).start()
    conn = await asyncpg.connect(clean_db)
    try:
        users, product_ids = await _setup_shop(b.url, 8, 4)
        async with session(b.url, connector=aiohttp.TCPConnector(limit=100)) as http:
            to_refund = await _paid_orders(Api(http), users, product_ids, 20)
            pending_orders = [(await Api(http).order(users[i % 8], (product_ids[i % 4], 1))).json for i in range(20)]
        errors: Counter[str] = Counter()
        async with session(a.url, connector=aiohttp.TCPConnector(limit=100)) as http:
            api = Api(http)
            admin = await api.admin_user()

            async def pay(i: int) -> None:
                await asyncio.sleep(i * 0.06)  # spread: some calls reach the provider before the kill, some not
                try:
                    await api.pay(users[i % 8], pending_orders[i]["id"])
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

            async def refund(i: int) -> None:
                await asyncio.sleep(i * 0.06)
                payment = to_refund[i]
                body = {"amount": payment["amount"] // 2} if i % 2 else {}
                try:
                    await api.call("POST", f"/api/payments/{payment['id']}/refunds", json=body, token=admin.token)
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

            calls = [asyncio.create_task(pay(i)) for i in range(20)]
            calls += [asyncio.create_task(refund(i)) for i in range(20)]
            await asyncio.sleep(1.3)
            a.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.gather(*calls)
        a.wait()
        pending_payments = await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'")
        pending_refunds = await conn.fetchval("SELECT count(*) FROM refunds WHERE status = 'pending'")
        # What the provider made of the killed process's calls (it cannot change now).
        provider_made = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM simulated_provider_charges c JOIN payments p ON p.provider_key = "
            "c.idempotency_key WHERE c.status = 'succeeded' AND p.order_id = ANY($1::bigint[])) AS charges, "
            "(SELECT count(*) FROM simulated_provider_refunds WHERE status = 'succeeded') AS refunds",
            [o["id"] for o in pending_orders],
        )
        settled_after = None
        while time.monotonic() - killed_at < 10:
            left = await conn.fetchval(
                "SELECT (SELECT count(*) FROM payments WHERE status = 'pending') "
                "+ (SELECT count(*) FROM refunds WHERE status = 'pending')"
            )
            if left == 0:
                settled_after = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.1)

        # Each payment and refund ended as the provider says.
        payments = await conn.fetch(
            """
            SELECT p.id, p.status, o.status AS order_status, c.status AS charge
            FROM payments p JOIN orders o ON o.id = p.order_id
            LEFT JOIN simulated_provider_charges c ON c.idempotency_key = p.provider_key
            WHERE p.order_id = ANY($1::bigint[])
            """,
            [o["id"] for o in pending_orders],
        )
        payment_mismatches = [
            dict(r)
            for r in payments
            if (r["status"], r["order_status"])
            != (("succeeded", "paid") if r["charge"] == "succeeded" else ("failed", "pending"))
        ]
        refunds = await conn.fetch(
            """
            SELECT r.id, r.status, l.status AS provider
            FROM refunds r LEFT JOIN simulated_provider_refunds l ON l.idempotency_key = r.provider_key
            """
        )
        refund_mismatches = [
            dict(r) for r in refunds if r["status"] != ("succeeded" if r["provider"] == "succeeded" else "failed")
        ]
        checked = await asyncio.to_thread(_check_invariants, clean_db)
        # The surviving process carries on: a refund through it works.
        async with session(b.url) as http:
            api = Api(http)
            admin = await api.admin_user()
            left = await conn.fetchval(
                "SELECT min(id) FROM payments WHERE status = 'succeeded' AND amount_refunded < amount"
            )
            after = await api.call("POST", f"/api/payments/{left}/refunds", json={}, token=admin.token)
        _report("kill -9 with charges and refunds in flight", payments=len(payments), refunds=len(refunds),
                provider_made=dict(provider_made or {}), pending_at_kill={"payments": pending_payments,
                "refunds": pending_refunds}, settled_after_s=settled_after and round(settled_after, 2),
                succeeded={"payments": sum(r["status"] == "succeeded" for r in payments),
                           "refunds": sum(r["status"] == "succeeded" for r in refunds)},
                client_errors=dict(errors), mismatches=len(payment_mismatches) + len(refund_mismatches),
                check_invariants=checked.stdout.strip().splitlines()[-1], faults=1)  # fmt: skip
        assert pending_payments > 0 and pending_refunds > 0  # the kill did leave work in flight
        assert settled_after is not None and settled_after <= 5
        assert payment_mismatches == [] and refund_mismatches == []
        assert checked.returncode == 0, checked.stdout
        assert after.status == 201, after
    finally:
        await conn.close()
        a.stop()
        b.stop()


async def test_kill_9_with_stripe_under_fail_and_hang_faults_settles_everything_as_the_ledger_says(
    clean_db: str, stripe_standin: StandIn
) -> None:
    """Stripe's stand-in failing 10% of calls before acting and carrying out 5% without
    answering, 300 ms each: a worker is killed with charges and refunds in flight, and
    started again. Every one is settled within 5 s of the restart as Stripe's ledger
    says, none charged or refunded twice (the reconcilers replay the requests under
    their keys), and check-invariants is clean."""
    stripe_standin.reset()
    gateway = Gateway("stripe", stripe_standin)
    env = {
        "PAYMENT_PROVIDER_TIMEOUT_MS": "1000",
        "MAX_COMMANDS_PER_USER": "64",
        **gateway.env({"PAYMENT_PROVIDER_LATENCY_MS": "300"}),
    }
    a, b = ServerProcess(clean_db, env=env).start(), ServerProcess(clean_db, env=env).start()
    gateway.send_events_to(b.url)
    conn = await asyncpg.connect(clean_db)
    try:
        users, product_ids = await _setup_shop(b.url, 8, 4)
        async with session(b.url, connector=aiohttp.TCPConnector(limit=100)) as http:
            to_refund = await _paid_orders(Api(http), users, product_ids, 20)
            pending_orders = [(await Api(http).order(users[i % 8], (product_ids[i % 4], 1))).json for i in range(20)]
        # 10% fail, 5% hang, and the first calls surely: one fails, the next two hang.
        stripe_standin.configure(fail_rate=0.1, hang_rate=0.05, fail_next=1, hang_next=2)
        errors: Counter[str] = Counter()
        async with session(a.url, connector=aiohttp.TCPConnector(limit=100)) as http:
            api = Api(http)
            admin = await api.admin_user()

            async def pay(i: int) -> None:
                await asyncio.sleep(i * 0.03)
                try:
                    await api.pay(
                        users[i % 8], pending_orders[i]["id"], card="tok_visa" if i % 5 else "tok_chargeDeclined"
                    )
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

            async def refund(i: int) -> None:
                await asyncio.sleep(i * 0.03)
                payment = to_refund[i]
                body = {"amount": payment["amount"] // 2} if i % 2 else {}
                try:
                    await api.call("POST", f"/api/payments/{payment['id']}/refunds", json=body, token=admin.token)
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

            calls = [asyncio.create_task(pay(i)) for i in range(20)]
            calls += [asyncio.create_task(refund(i)) for i in range(20)]
            await asyncio.sleep(0.5)
            a.kill()
            killed_at = time.monotonic()
            await asyncio.gather(*calls)
        pending_payments = await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'")
        pending_refunds = await conn.fetchval("SELECT count(*) FROM refunds WHERE status = 'pending'")
        a = ServerProcess(clean_db, env=env, port=a.port)
        restarting = asyncio.create_task(asyncio.to_thread(a.start))  # the other worker reconciles meanwhile
        settled_at = None
        while time.monotonic() - killed_at < 20:
            left = await conn.fetchval(
                "SELECT (SELECT count(*) FROM payments WHERE status = 'pending') "
                "+ (SELECT count(*) FROM refunds WHERE status = 'pending')"
            )
            if left == 0:
                settled_at = time.monotonic()
                break
            await asyncio.sleep(0.1)
        await restarting
        restarted_at = time.monotonic()
        settled_after = None if settled_at is None else max(0.0, settled_at - restarted_at)
        stripe_standin.configure(fail_rate=0.0, hang_rate=0.0)
        await asyncio.sleep(1.5)  # Stripe's last events (none may change anything now)
        ledger = gateway.ledger()
        intents: Counter[str] = Counter(i["metadata"].get("payment_id", "") for i in ledger["payment_intents"])
        made_refunds: Counter[str] = Counter(r["metadata"].get("refund_id", "") for r in ledger["refunds"])
        doubled = sum(n - 1 for n in intents.values() if n > 1) + sum(n - 1 for n in made_refunds.values() if n > 1)
        succeeded_at_stripe = {
            i["metadata"]["payment_id"] for i in ledger["payment_intents"] if i["status"] == "succeeded"
        }
        refunded_at_stripe = {r["metadata"].get("refund_id") for r in ledger["refunds"] if r["status"] == "succeeded"}
        payments = await conn.fetch("SELECT id, status FROM payments")
        refunds = await conn.fetch("SELECT id, status FROM refunds")
        mismatches = [
            ("payment", r["id"], r["status"])
            for r in payments
            if (r["status"] == "succeeded") != (str(r["id"]) in succeeded_at_stripe)
        ] + [
            ("refund", r["id"], r["status"])
            for r in refunds
            if (r["status"] == "succeeded") != (str(r["id"]) in refunded_at_stripe)
        ]
        problems = await gateway.violations(clean_db, settled=True)
        checked = await asyncio.to_thread(_check_invariants, clean_db)
        faults = [r for r in stripe_standin.requests() if r.get("fault")]
        _report("kill -9 with Stripe (10% fail, 5% hang) and charges and refunds in flight", payments=len(payments),
                refunds=len(refunds), pending_at_kill={"payments": pending_payments, "refunds": pending_refunds},
                settled_after_kill_s=settled_at and round(settled_at - killed_at, 2),
                settled_after_restart_s=settled_after and round(settled_after, 2),
                stripe_faults=dict(Counter(r["fault"] for r in faults)), doubled=doubled,
                mismatches=len(mismatches), ledger_violations=len(problems), client_errors=dict(errors),
                check_invariants=checked.stdout.strip().splitlines()[-1], faults=1 + len(faults))  # fmt: skip
        assert pending_payments + pending_refunds > 0  # the kill did leave work in flight
        assert settled_after is not None and settled_after <= 5
        assert doubled == 0
        assert mismatches == []
        assert problems == []
        assert checked.returncode == 0, checked.stdout
    finally:
        await conn.close()
        a.stop()
        b.stop()


async def test_paying_under_stripes_faults_charges_exactly_once(clean_db: str, stripe_standin: StandIn) -> None:
    """The short version of loadtests/stripe_faults.py (2,000 orders, 50 clients there):
    200 orders paid by 20 clients on two processes through the stand-in failing 10% and
    hanging 5% of calls; the ledger shows one succeeded charge per paid order and none
    for an order reported failed, refunds never above the charge, invariants clean."""
    from loadtests.stripe_faults import run

    report = await run(
        clean_db, stripe_standin, orders=200, clients=20, fail_rate=0.1, hang_rate=0.05, latency_ms=100,
        timeout_ms=1000, settle_seconds=60,
    )  # fmt: skip
    _report("Stripe 10% fail, 5% hang, 200 orders", **report)
    assert report["violations"] == []
    assert report["check_invariants_exit"] == 0, report["check_invariants"]
    assert report["pending_left"] == 0
    assert report["paid_orders"] > 100
    assert report["stripe_faults"].get("fail", 0) > 0 and report["stripe_faults"].get("hang", 0) > 0


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL this test may stop (never the machine's shared one)."""
    folder = Path(tempfile.mkdtemp(prefix="storefront-fault-pg-"))
    pg = EmbeddedPostgres(folder / "data")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_database_outage_gives_503s_and_the_service_recovers_by_itself(own_postgres: EmbeddedPostgres) -> None:
    env = {"DB_CONNECT_TIMEOUT": "1", "DB_COMMAND_TIMEOUT": "2", "DB_POOL_ACQUIRE_TIMEOUT": "1"}
    server = ServerProcess(own_postgres.dsn, env=env).start()
    try:
        users, product_ids = await _setup_shop(server.url, 4, 4)
        outage = {"start": 0.0, "end": 0.0}
        during: Counter[int] = Counter()
        retry_after_missing = 0
        slowest = 0.0
        ready_during: set[int] = set()
        stop_at = time.monotonic() + 22

        async def client(i: int) -> None:
            nonlocal retry_after_missing, slowest
            async with session(server.url, timeout=aiohttp.ClientTimeout(total=8)) as http:
                api = Api(http)
                while time.monotonic() < stop_at:
                    started = time.monotonic()
                    if i % 2:
                        reply = await api.call("GET", f"/api/products/{product_ids[i % 4]}")
                    else:
                        reply = await api.order(users[i % 4], (product_ids[i % 4], 1))
                    slowest = max(slowest, time.monotonic() - started)
                    if outage["start"] and not outage["end"] and started > outage["start"]:
                        during[reply.status] += 1
                        if reply.status == 503 and "Retry-After" not in reply.headers:
                            retry_after_missing += 1
                    assert reply.status < 500 or reply.status == 503, reply
                    await asyncio.sleep(0.02)

        async def probe_ready() -> None:
            async with session(server.url) as http:
                while time.monotonic() < stop_at:
                    if outage["start"] and not outage["end"]:
                        async with http.get("/readyz") as response:
                            ready_during.add(response.status)
                    await asyncio.sleep(0.5)

        load = [asyncio.create_task(client(i)) for i in range(8)] + [asyncio.create_task(probe_ready())]
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.stop)
        outage["start"] = time.monotonic()  # the database is down from here
        await asyncio.sleep(10)
        outage["end"] = time.monotonic()
        await asyncio.to_thread(own_postgres.start)  # same data folder, same port
        await asyncio.gather(*load)

        async with session(server.url) as http:
            after = [(await Api(http).call("GET", f"/api/products/{product_ids[0]}")).status for _ in range(5)]
        _report("postgres stopped 10 s", statuses_during_outage=dict(during), slowest_request_s=round(slowest, 2),
                readyz_during_outage=sorted(ready_during), after_recovery=after, faults=1)  # fmt: skip
        assert during and set(during) == {503}
        assert retry_after_missing == 0
        assert ready_during == {503}
        assert slowest < 5  # nothing hung
        assert after == [200] * 5  # recovered without a restart
    finally:
        server.stop()


async def test_sigterm_under_load_fails_no_request_the_server_had_started(clean_db: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(
        clean_db, env={"ACCESS_LOG": "true", "LOG_LEVEL": "INFO", "PAYMENT_PROVIDER_LATENCY_MS": "800"}, log_path=log
    ).start()
    try:
        users, product_ids = await _setup_shop(server.url, 10, 4)
        answered: dict[str, int] = {}
        failed: dict[str, str] = {}
        stop_at = time.monotonic() + 6

        async def client(i: int) -> None:
            rng = random.Random(i)
            connector = aiohttp.TCPConnector(force_close=True)  # one connection per request
            async with session(server.url, connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
                api = Api(http)
                n = 0
                while time.monotonic() < stop_at:
                    n += 1
                    request_id = f"c{i}-{n}"
                    headers = {"X-Request-ID": request_id}
                    try:
                        if rng.random() < 0.5:
                            reply = await api.call("GET", f"/api/products/{rng.choice(product_ids)}", headers=headers)
                        else:
                            created = await api.order(users[i], (rng.choice(product_ids), 1))
                            reply = created
                            if created.status == 201:
                                body = {
                                    "order_id": created.json["id"],
                                    "payment_method": {"type": "card", "token": "tok_visa"},
                                }
                                reply = await api.call(
                                    "POST", "/api/payments", json=body, token=users[i].token, headers=headers
                                )
                        answered[request_id] = reply.status
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        failed[request_id] = type(exc).__name__
                        await asyncio.sleep(0.05)

        load = [asyncio.create_task(client(i)) for i in range(10)]
        await asyncio.sleep(2)
        server.signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.wait)
        await asyncio.gather(*load)

        handled = {}
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            # Only the ids the clients sent: one the server made up may start with "c" too.
            if entry.get("msg") == "request" and _CLIENT_REQUEST_ID.match(entry.get("request_id", "")):
                handled[entry["request_id"]] = entry["status"]
        lost = sorted(set(handled) - set(answered))
        bad = {rid: status for rid, status in answered.items() if status >= 500}
        _report("SIGTERM under load", sent=len(answered) + len(failed), answered=len(answered),
                refused_after_stop=len(failed), handled_by_server=len(handled), lost=len(lost), failed_5xx=len(bad), faults=1)  # fmt: skip
        assert exit_code == 0
        assert lost == []  # every request the server handled reached its client
        assert bad == {}
        assert sum(1 for status in answered.values() if status == 201) > 0
    finally:
        server.stop()


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def patient_server(clean_db: str, many_files: None) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(clean_db, env={"KEEPALIVE_TIMEOUT_SECONDS": "2", "CLIENT_BODY_TIMEOUT_SECONDS": "2"}).start()
    try:
        yield server
    finally:
        server.stop()


def _open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    return s


async def _closed_within(sock: socket.socket, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), seconds)
        return data == b"" or b"HTTP/1.1" in data
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_slow_clients_are_cut_off_and_do_not_hold_the_server(patient_server: ServerProcess) -> None:
    port = patient_server.port
    loop = asyncio.get_running_loop()

    # Headers sent a byte at a time: closed by the header timeout.
    slowloris = [_open(port) for _ in range(50)]
    for s in slowloris:
        await loop.sock_sendall(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def dribble(s: socket.socket) -> None:
        for _ in range(20):
            try:
                await loop.sock_sendall(s, b"a")
            except OSError:
                return
            await asyncio.sleep(0.5)

    dribbling = [asyncio.create_task(dribble(s)) for s in slowloris]
    # A body sent a byte at a time: 408 after the body timeout.
    slow_body = _open(port)
    await loop.sock_sendall(
        slow_body,
        b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    # A thousand idle connections.
    idle = [_open(port) for _ in range(1000)]

    started = time.monotonic()
    async with session(patient_server.url) as http:
        served = [(await Api(http).call("GET", "/healthz")).status for _ in range(20)]
    served_in = time.monotonic() - started

    slow_body_reply = await asyncio.wait_for(loop.sock_recv(slow_body, 65536), 6)
    cut_off = await asyncio.gather(*(_closed_within(s, 6) for s in slowloris))
    for task in dribbling:
        task.cancel()
    idle_closed = sum(await asyncio.gather(*(_closed_within(s, 6) for s in idle[:50])))
    for s in [*slowloris, *idle, slow_body]:
        s.close()
    _report("slow clients", slowloris=len(slowloris), slowloris_cut_off=sum(cut_off), idle_connections=len(idle),
            idle_sample_closed=idle_closed, normal_requests=len(served), normal_served_in_s=round(served_in, 2),
            slow_body_answer=slow_body_reply.split(b"\r\n")[0].decode(), faults=3)  # fmt: skip
    assert served == [200] * 20
    assert served_in < 3
    assert slow_body_reply.startswith(b"HTTP/1.1 408")
    assert all(cut_off)
    assert idle_closed == 50  # idle connections do not stay open forever either
