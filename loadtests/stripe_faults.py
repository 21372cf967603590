"""Exactly one charge under Stripe's faults: ORDERS orders paid by CLIENTS clients on two
server processes through Stripe's stand-in failing a share of calls before acting
(--fail-rate) and carrying out a share without answering (--hang-rate); some paid orders
are refunded (in part or in full). Then the stand-in's ledger is compared with what the
API answered and recorded:

- exactly one succeeded charge per paid order, none for an order whose payment the API
  reported failed (402), and at most one PaymentIntent per payment;
- refunds never above their charge, and Stripe refunded what we recorded;
- `check-invariants --settled` clean.

    python3 dev.py python -m loadtests.stripe_faults --pg-url postgresql://postgres@127.0.0.1:5432/postgres

It makes a database of its own on that server (dropped at the end), starts the stand-in
(../shared/stripe-standin, or STRIPE_STANDIN) and two `python -m server` processes on
this machine. The fault suite runs a short version (tests/test_faults.py); the figures
of the full one are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg

from tests.helpers import ROOT, Api, ServerProcess, User, dsn_with_database, session
from tests.stripe_standin import Gateway, StandIn, standin_path


async def _shop(url: str, customers: int) -> tuple[User, list[User], list[int]]:
    async with session(url) as http:
        api = Api(http)
        gate = asyncio.Semaphore(8)  # sign-ups within the password hasher's queue

        async def customer() -> User:
            async with gate:
                return await api.customer()

        users = list(await asyncio.gather(*(customer() for _ in range(customers))))
        products = [(await api.product(name=f"Load {i}", price=500 + 100 * i, stock=1_000_000))["id"] for i in range(8)]
        admin = await api.admin_user()
    return admin, users, products


async def _client(
    url: str, admin: User, user: User, products: list[int], orders: Any, refund_share: float, seed: int,
    answers: dict[str, Any],
) -> None:  # fmt: skip
    rng = random.Random(seed)
    async with session(url, timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http)
        for n in orders:
            try:
                created = await api.order(user, (rng.choice(products), rng.randint(1, 3)))
                if created.status != 201:
                    answers["order_errors"][created.status] += 1
                    continue
                order_id = created.json["id"]
                card = "tok_chargeDeclined" if rng.random() < 0.1 else "tok_visa"
                reply = await api.pay(user, order_id, card=card, key=f"pay-{n}")
                for _ in range(20):  # the same request again while its first is in flight
                    if reply.status != 409 or "Idempotency-Key" not in reply.json.get("detail", ""):
                        break
                    await asyncio.sleep(0.5)
                    reply = await api.pay(user, order_id, card=card, key=f"pay-{n}")
                answers["pay"][reply.status] += 1
                if reply.status == 402:
                    answers["reported_failed"].append(order_id)
                if reply.status == 201 and rng.random() < refund_share:
                    payment = reply.json
                    halves = [payment["amount"] // 2, None] if rng.random() < 0.5 else [None]
                    for i, amount in enumerate(halves):
                        body = {} if amount is None else {"amount": amount}
                        refund = await api.call(
                            "POST", f"/api/payments/{payment['id']}/refunds", json=body, token=admin.token,
                            headers={"Idempotency-Key": f"refund-{n}-{i}"},
                        )  # fmt: skip
                        answers["refund"][refund.status] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                answers["client_errors"][type(exc).__name__] += 1


async def run(
    dsn: str, standin: StandIn, *, orders: int, clients: int, fail_rate: float, hang_rate: float,
    latency_ms: int, timeout_ms: int, refund_share: float = 0.2, settle_seconds: float = 120.0,
) -> dict[str, Any]:  # fmt: skip
    """The whole measurement on database `dsn` (empty, or migrated by the servers);
    returns its figures, `violations` listing every breach found."""
    standin.reset()
    gateway = Gateway("stripe", standin)
    env = {
        "PAYMENT_PROVIDER_TIMEOUT_MS": str(timeout_ms),
        "MAX_COMMANDS_PER_USER": "64",
        "LOG_LEVEL": "ERROR",
        **gateway.env({"PAYMENT_PROVIDER_LATENCY_MS": str(latency_ms)}),
    }
    servers = [ServerProcess(dsn, env=env).start(), ServerProcess(dsn, env=env).start()]
    gateway.send_events_to(servers[0].url)
    try:
        admin, users, products = await _shop(servers[0].url, clients)
        standin.configure(fail_rate=fail_rate, hang_rate=hang_rate)
        answers: dict[str, Any] = {
            "pay": Counter(), "refund": Counter(), "order_errors": Counter(), "client_errors": Counter(),
            "reported_failed": [],
        }  # fmt: skip
        numbers = iter(range(orders))
        started = time.monotonic()
        await asyncio.gather(
            *(
                _client(servers[i % 2].url, admin, users[i], products, numbers, refund_share, i, answers)
                for i in range(clients)
            )
        )
        load_seconds = time.monotonic() - started
        conn = await asyncpg.connect(dsn)
        try:
            pending = None
            deadline = time.monotonic() + settle_seconds
            while time.monotonic() < deadline:
                pending = await conn.fetchval(
                    "SELECT (SELECT count(*) FROM payments WHERE status = 'pending') "
                    "+ (SELECT count(*) FROM refunds WHERE status = 'pending')"
                )
                if pending == 0:
                    break
                await asyncio.sleep(0.5)
            settled_seconds = time.monotonic() - started - load_seconds
            standin.configure(fail_rate=0.0, hang_rate=0.0)
            await asyncio.sleep(2)  # the last events
            ledger = gateway.ledger()
            payments = [dict(r) for r in await conn.fetch("SELECT * FROM payments")]
            paid_orders = {
                r["id"] for r in await conn.fetch("SELECT id FROM orders WHERE status IN ('paid', 'refunded')")
            }
        finally:
            await conn.close()
        violations = await gateway.violations(dsn, settled=True)
        # The ledger by order: succeeded charges of each order's PaymentIntents.
        order_of_intent = {i["id"]: int(i["metadata"]["order_id"]) for i in ledger["payment_intents"]}
        charges: Counter[int] = Counter(
            order_of_intent[c["payment_intent"]] for c in ledger["charges"] if c["status"] == "succeeded"
        )
        refunded_of_intent: Counter[str] = Counter()
        for refund in ledger["refunds"]:
            if refund["status"] in ("succeeded", "pending"):
                refunded_of_intent[refund["payment_intent"]] += refund["amount"]
        for order_id in paid_orders:
            if charges[order_id] != 1:
                violations.append(f"paid order {order_id}: {charges[order_id]} succeeded charges at Stripe")
        for order_id in answers["reported_failed"]:
            if charges[order_id] and order_id not in paid_orders:
                violations.append(f"order {order_id} reported failed, charged at Stripe")
        charged_unpaid = [o for o in charges if o not in paid_orders]
        for order_id in charged_unpaid:  # charged for an order not paid: it must have been given back
            intents = [i for i in ledger["payment_intents"] if order_of_intent[i["id"]] == order_id]
            kept = sum(i["amount_received"] - refunded_of_intent[i["id"]] for i in intents)
            if kept:
                violations.append(f"order {order_id} not paid, Stripe kept {kept}")
        for intent in ledger["payment_intents"]:
            if refunded_of_intent[intent["id"]] > intent["amount"]:
                violations.append(f"{intent['id']}: refunded {refunded_of_intent[intent['id']]} of {intent['amount']}")
        per_payment = Counter(i["metadata"]["payment_id"] for i in ledger["payment_intents"])
        violations += [f"payment {p}: {n} PaymentIntents" for p, n in per_payment.items() if n > 1]
        checked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "server", "check-invariants", "--settled"],
            cwd=ROOT, env={"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        requests = standin.requests()
        return {
            "orders": orders,
            "clients": clients,
            "processes": 2,
            "stripe": {"latency_ms": latency_ms, "fail_rate": fail_rate, "hang_rate": hang_rate},
            "load_seconds": round(load_seconds, 1),
            "settled_after_load_seconds": round(settled_seconds, 1),
            "pending_left": pending,
            "pay_answers": dict(answers["pay"]),
            "refund_answers": dict(answers["refund"]),
            "client_errors": dict(answers["client_errors"]),
            "stripe_calls": len(requests),
            "stripe_faults": dict(Counter(r["fault"] for r in requests if r.get("fault"))),
            "paid_orders": len(paid_orders),
            "payments": len(payments),
            "payment_intents": len(ledger["payment_intents"]),
            "succeeded_charges": ledger["summary"]["succeeded_charges"],
            "refunds_at_stripe": ledger["summary"]["refunds"],
            "reported_failed": len(answers["reported_failed"]),
            "check_invariants": checked.stdout.strip().splitlines()[-1] if checked.stdout.strip() else checked.stderr,
            "check_invariants_exit": checked.returncode,
            "violations": violations,
        }
    finally:
        for server in servers:
            server.stop()


async def _main(args: argparse.Namespace) -> int:
    path = standin_path()
    if path is None:
        print("the Stripe stand-in (shared/stripe-standin/standin.py) was not found; set STRIPE_STANDIN")
        return 2
    name = f"storefront_stripe_faults_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    standin = StandIn(path).start()
    try:
        report = await run(
            dsn_with_database(args.pg_url, name), standin, orders=args.orders, clients=args.clients,
            fail_rate=args.fail_rate, hang_rate=args.hang_rate, latency_ms=args.latency_ms,
            timeout_ms=args.timeout_ms, refund_share=args.refund_share,
        )  # fmt: skip
    finally:
        standin.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["violations"] or report["check_invariants_exit"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.stripe_faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", required=True, help="a PostgreSQL server where a database may be created")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--hang-rate", type=float, default=0.05)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--timeout-ms", type=int, default=1000, help="PAYMENT_PROVIDER_TIMEOUT_MS")
    parser.add_argument("--refund-share", type=float, default=0.2, help="share of paid orders refunded")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
