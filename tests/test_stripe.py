"""The Stripe section of the Payments contract, against Stripe's stand-in as a real
HTTP server (tests/stripe_standin.py): what is sent to Stripe, how its answers map,
3-D Secure, the inbound webhook, refunds Stripe refuses or fails later, and faults."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from handlers.routing import CONTEXT
from server.app import Options, create_app
from server.domain.payments import service as payments
from tests.conftest import JWT_SECRET, make_config
from tests.helpers import ROOT, Api, Reply, ServerProcess, User, eventually, scrape, session
from tests.stripe_standin import WEBHOOK_PATH, WEBHOOK_SECRET, Gateway


@pytest.fixture
def payment_provider() -> str:
    return "stripe"


async def _pending_order(api: Api, price: int = 1250, quantity: int = 2) -> tuple[User, dict[str, Any]]:
    user = await api.customer()
    product = await api.product(price=price, stock=100)
    order: dict[str, Any] = (await api.order(user, (product["id"], quantity))).json
    return user, order


async def _get(api: Api, user: User, path: str) -> dict[str, Any]:
    reply = await api.call("GET", path, token=user.token)
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json
    return body


def _intents(gateway: Gateway) -> list[dict[str, Any]]:
    intents: list[dict[str, Any]] = gateway.ledger()["payment_intents"]
    return intents


async def _refund(api: Api, payment_id: int, **body: Any) -> Reply:
    admin = await api.admin_user()
    return await api.call("POST", f"/api/payments/{payment_id}/refunds", json=body, token=admin.token)


def _signed(body: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={timestamp},v1={mac}", "Content-Type": "application/json"}


def _succeeded_event(event_id: str, order: dict[str, Any], payment: dict[str, Any], **intent: Any) -> bytes:
    """The body of Stripe's `payment_intent.succeeded` for this payment (its PaymentIntent
    with our metadata, and any more of the intent's fields), as a test posts it."""
    event = {
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": payment["provider_ref"],
                "object": "payment_intent",
                "status": "succeeded",
                "metadata": {"payment_id": str(payment["id"]), "order_id": str(order["id"])},
                **intent,
            }
        },
    }
    return json.dumps(event).encode()


# --- what is sent ---------------------------------------------------------------------------


async def test_a_payment_is_one_payment_intent_under_the_payments_own_key(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], card="pm_card_visa")
    assert reply.status == 201
    payment = reply.json
    assert (payment["provider"], payment["status"]) == ("stripe", "succeeded")
    (intent,) = _intents(gateway)
    assert payment["provider_ref"] == intent["id"]
    assert (intent["amount"], intent["currency"], intent["status"]) == (2500, "usd", "succeeded")
    assert intent["metadata"] == {"order_id": str(order["id"]), "payment_id": str(payment["id"])}
    assert intent["automatic_payment_methods"] == {"enabled": True, "allow_redirects": "never"}
    key = await db.fetchval("SELECT provider_key FROM payments WHERE id = $1", payment["id"])
    (sent,) = [r for r in gateway.standin.requests() if r["path"] == "/v1/payment_intents"]  # type: ignore[union-attr]
    assert sent["idempotency_key"] == key
    assert "payment_method_types" not in sent["params"]
    assert sent["stripe_version"] == "2026-10-28.endive"


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        ("tok_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("tok_chargeDeclinedIncorrectCvc", "incorrect_cvc"),
        ("pm_card_doesNotExist", "invalid_token"),
        ("tok_doesNotExist", "invalid_token"),
    ],
)
async def test_declines_are_402_with_stripes_code_and_the_order_stays_pending(
    api: Api, gateway: Gateway, card: str, reason: str
) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], card=card)
    assert reply.status == 402, reply
    assert (reply.json["status"], reply.json["failure_reason"]) == ("failed", reason)
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "pending"
    assert gateway.ledger()["summary"]["succeeded_charges"] == 0
    assert (await api.pay(user, order["id"], card="tok_visa")).status == 201


async def test_a_total_below_stripes_minimum_is_422_and_nothing_is_sent(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api, price=20, quantity=2)  # 0.40 USD, below 0.50
    reply = await api.pay(user, order["id"])
    assert reply.status == 422, reply
    assert "minimum" in reply.json["errors"][0]["message"]
    assert _intents(gateway) == []
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


# --- 3-D Secure -------------------------------------------------------------------------------


async def _awaiting_action(api: Api) -> tuple[User, dict[str, Any], dict[str, Any]]:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], card="tok_threeDSecure2Required")
    assert reply.status == 202, reply
    payment: dict[str, Any] = reply.json
    assert payment["status"] == "requires_action"
    assert payment["client_secret"].startswith(payment["provider_ref"] + "_secret_")
    assert payment["next_action"]["type"] == "use_stripe_sdk"
    assert reply.headers["Location"] == f"/api/payments/{payment['id']}"
    return user, order, payment


async def test_a_payment_needing_3ds_is_202_requires_action_and_the_order_stays_pending(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order, payment = await _awaiting_action(api)
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "pending"
    assert await _get(api, user, f"/api/payments/{payment['id']}") == payment
    # It waits for the customer, not for us: nothing for the reconciler to do.
    await db.execute("UPDATE payments SET lease_until = now() - interval '1 hour'")
    await asyncio.sleep(1.2)
    assert (await _get(api, user, f"/api/payments/{payment['id']}"))["status"] == "requires_action"
    # The items it was made for stay as they are.
    product_id = order["items"][0]["product_id"]
    change = {"items": [{"product_id": product_id, "quantity": 1}]}
    assert (await api.call("PUT", f"/api/orders/{order['id']}", json=change, token=user.token)).status == 409


async def test_once_the_customer_authenticates_stripes_event_pays_the_order(
    api: Api, gateway: Gateway, db: asyncpg.Connection, clean_db: str
) -> None:
    user, order, payment = await _awaiting_action(api)
    gateway.standin.authenticate(payment["provider_ref"], "succeed")  # type: ignore[union-attr]

    async def paid() -> bool:
        return bool((await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "paid")

    await eventually(paid)
    settled = await _get(api, user, f"/api/payments/{payment['id']}")
    assert (settled["status"], settled["client_secret"], settled["next_action"]) == ("succeeded", None, None)
    events = [r["type"] for r in await db.fetch("SELECT type FROM events ORDER BY id")]
    assert events[-2:] == ["payment.succeeded", "order.paid"]
    assert gateway.ledger()["summary"]["succeeded_charges"] == 1
    assert await gateway.violations(clean_db) == []


async def test_a_failed_authentication_fails_the_payment_and_the_order_can_be_paid_again(
    api: Api, gateway: Gateway
) -> None:
    user, order, payment = await _awaiting_action(api)
    gateway.standin.authenticate(payment["provider_ref"], "fail")  # type: ignore[union-attr]

    async def failed() -> dict[str, Any] | None:
        current = await _get(api, user, f"/api/payments/{payment['id']}")
        return current if current["status"] == "failed" else None

    settled = await eventually(failed)
    assert settled["failure_reason"] == "payment_intent_authentication_failure"
    assert (await api.pay(user, order["id"])).status == 201


async def test_a_new_payment_first_cancels_the_waiting_payment_intent(api: Api, gateway: Gateway) -> None:
    user, order, waiting = await _awaiting_action(api)
    reply = await api.pay(user, order["id"], card="tok_visa")
    assert reply.status == 201
    cancelled = await _get(api, user, f"/api/payments/{waiting['id']}")
    assert (cancelled["status"], cancelled["failure_reason"]) == ("failed", "canceled")
    statuses = {i["id"]: i["status"] for i in _intents(gateway)}
    assert statuses == {waiting["provider_ref"]: "canceled", reply.json["provider_ref"]: "succeeded"}


async def test_a_waiting_payment_that_succeeded_meanwhile_is_recorded_and_the_new_request_is_409(
    api: Api, gateway: Gateway
) -> None:
    user, order, waiting = await _awaiting_action(api)
    gateway.standin.configure(webhook_url=None)  # type: ignore[union-attr]  # its event does not arrive
    gateway.standin.authenticate(waiting["provider_ref"], "succeed")  # type: ignore[union-attr]
    reply = await api.pay(user, order["id"], card="tok_visa")
    assert reply.status == 409, reply
    assert (await _get(api, user, f"/api/payments/{waiting['id']}"))["status"] == "succeeded"
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "paid"
    assert gateway.ledger()["summary"]["succeeded_charges"] == 1


@pytest.mark.parametrize("ending", ["cancel", "expire"])
async def test_an_order_that_ends_cancels_its_waiting_payment_intent(
    api: Api, gateway: Gateway, db: asyncpg.Connection, ending: str
) -> None:
    user, order, waiting = await _awaiting_action(api)
    if ending == "cancel":
        reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
        assert reply.status == 200, reply
    else:
        await db.execute("UPDATE orders SET expires_at = now() WHERE id = $1", order["id"])

        async def expired() -> bool:
            return bool((await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "expired")

        await eventually(expired)

    async def cancelled() -> dict[str, Any] | None:
        current = await _get(api, user, f"/api/payments/{waiting['id']}")
        return current if current["status"] == "failed" else None

    payment = await eventually(cancelled)
    assert payment["failure_reason"] == "canceled"
    assert {i["status"] for i in _intents(gateway)} == {"canceled"}


# --- the inbound webhook --------------------------------------------------------------------


async def test_a_forged_stale_or_unsigned_event_is_400_and_changes_nothing(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order, waiting = await _awaiting_action(api)
    body = _succeeded_event("evt_forged_1", order, waiting)
    for headers in (
        {"Content-Type": "application/json"},  # unsigned
        _signed(body, secret="whsec_someoneelse0000000000000"),  # forged
        _signed(body, at=int(time.time()) - 301),  # stale: older than 5 minutes
        {"Stripe-Signature": "garbage", "Content-Type": "application/json"},
    ):
        reply = await api.call("POST", WEBHOOK_PATH, data=body, headers=headers)
        assert reply.status == 400, reply
        assert reply.content_type == "application/problem+json"
    tampered = body.replace(b"succeeded", b"succeedes")
    signed = _signed(body)
    assert (await api.call("POST", WEBHOOK_PATH, data=tampered, headers=signed)).status == 400
    assert (await _get(api, user, f"/api/payments/{waiting['id']}"))["status"] == "requires_action"
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "pending"
    assert await db.fetchval("SELECT count(*) FROM provider_events WHERE id = 'evt_forged_1'") == 0
    assert (await scrape(api)).value("payment_provider_events_total", outcome="rejected") == 5


async def test_a_redelivered_event_changes_nothing_the_second_time(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user = await api.customer()
    product = await api.product(price=500, stock=10)
    order = (await api.order(user, (product["id"], 2))).json
    payment = (await api.pay(user, order["id"], card="tok_refundFail")).json
    first = await _refund(api, payment["id"], amount=400)
    assert first.status == 201

    async def undoing_event() -> str | None:
        # The event that undid the refund (refund.updated or refund.failed, whichever came
        # first; the other found it undone already).
        found: str | None = await db.fetchval("SELECT id FROM provider_events WHERE type LIKE 'refund.%'")
        return found

    event_id = await eventually(undoing_event)
    # The amount is refunded again; then Stripe delivers the old failure once more.
    again = await _refund(api, payment["id"], amount=400)
    assert again.status == 201
    # (the second refund's own failure follows later: wait for it to be handled first)
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM refunds WHERE status = 'failed'"))

    async def every_event_answered() -> bool:
        ledger = gateway.ledger()
        deliveries = ledger["webhook_deliveries"]
        return all(any(d.get("status") == 200 for d in deliveries.get(e["id"], [])) for e in ledger["events"])

    await eventually(every_event_answered)  # its other events too
    before = await db.fetch("SELECT id, status, amount_refunded FROM payments UNION ALL "
                            "SELECT id, status, 0 FROM refunds ORDER BY 1, 2")  # fmt: skip
    events_before = await db.fetchval("SELECT count(*) FROM events")
    recorded_before = await db.fetchval("SELECT count(*) FROM provider_events")
    gateway.standin.redeliver(event_id)  # type: ignore[union-attr]

    async def answered_again() -> bool:
        deliveries = gateway.ledger()["webhook_deliveries"][event_id]
        return len([d for d in deliveries if d.get("status") == 200]) >= 2

    await eventually(answered_again)
    after = await db.fetch("SELECT id, status, amount_refunded FROM payments UNION ALL "
                           "SELECT id, status, 0 FROM refunds ORDER BY 1, 2")  # fmt: skip
    assert after == before
    assert await db.fetchval("SELECT count(*) FROM events") == events_before
    assert await db.fetchval("SELECT count(*) FROM provider_events") == recorded_before


async def test_the_same_event_posted_twice_pays_the_order_once(api: Api, db: asyncpg.Connection) -> None:
    user, order, waiting = await _awaiting_action(api)
    body = _succeeded_event("evt_twice_1", order, waiting)
    first = await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body))
    assert first.json == {"received": True, "outcome": "handled"}
    events = await db.fetchval("SELECT count(*) FROM events")
    second = await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body))
    assert (second.status, second.json["outcome"]) == (200, "unchanged")
    assert await db.fetchval("SELECT count(*) FROM events") == events
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "paid"
    assert await db.fetchval("SELECT count(*) FROM provider_events WHERE id = 'evt_twice_1'") == 1


async def test_a_signed_event_for_another_amount_or_currency_changes_nothing(api: Api, db: asyncpg.Connection) -> None:
    user, order, waiting = await _awaiting_action(api)
    for number, (amount, currency) in enumerate([(waiting["amount"] + 1, "usd"), (waiting["amount"], "eur")]):
        body = _succeeded_event(f"evt_mismatched_{number}", order, waiting, amount=amount, currency=currency)
        reply = await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body))
        assert (reply.status, reply.json["outcome"]) == (200, "mismatched")
    assert (await _get(api, user, f"/api/orders/{order['id']}"))["status"] == "pending"
    assert await db.fetchval("SELECT status FROM payments WHERE id = $1", waiting["id"]) == "requires_action"
    assert await db.fetchval("SELECT count(*) FROM provider_events") == 0
    metrics = (await api.call("GET", "/metrics")).body.decode()
    assert 'payment_provider_events_total{outcome="mismatched"} 2.0' in metrics


async def test_an_event_of_a_type_not_used_is_200_and_ignored(api: Api, db: asyncpg.Connection) -> None:
    body = json.dumps({"id": "evt_other_1", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}).encode()
    reply = await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body))
    assert reply.status == 200
    assert reply.json == {"received": True, "outcome": "ignored"}
    again = await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body))
    assert again.json == {"received": True, "outcome": "ignored"}
    assert await db.fetchval("SELECT count(*) FROM provider_events") == 0  # nothing written for it


# --- refunds ------------------------------------------------------------------------------


async def test_a_refund_stripe_refuses_for_its_amount_is_409(api: Api, gateway: Gateway) -> None:
    user, order = await _pending_order(api)
    payment = (await api.pay(user, order["id"])).json
    # Refunded outside the service (Stripe's dashboard): Stripe has nothing left.
    import stripe

    assert gateway.standin is not None
    client = stripe.StripeClient(gateway.api_key or "", base_addresses={"api": gateway.standin.url})
    await client.v1.refunds.create_async({"payment_intent": payment["provider_ref"], "amount": 2000})
    reply = await _refund(api, payment["id"], amount=1000)
    assert reply.status == 409, reply
    assert "amount_too_large" in reply.json["detail"]
    assert (await _get(api, await api.admin_user(), f"/api/payments/{payment['id']}"))["amount_refunded"] == 0


async def test_each_refund_is_a_stripe_refund_of_the_payment_intent_under_its_own_key(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    payment = (await api.pay(user, order["id"])).json
    first = (await _refund(api, payment["id"], amount=1000)).json
    second = (await _refund(api, payment["id"])).json
    refunds = sorted(gateway.ledger()["refunds"], key=lambda r: r["amount"])
    assert [(r["amount"], r["payment_intent"], r["metadata"]["refund_id"]) for r in refunds] == [
        (1000, payment["provider_ref"], str(first["id"])),
        (1500, payment["provider_ref"], str(second["id"])),
    ]
    keys = {r["idempotency_key"] for r in gateway.standin.requests() if r["path"] == "/v1/refunds"}  # type: ignore[union-attr]
    assert keys == set(await db.fetchval("SELECT array_agg(provider_key) FROM refunds"))


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"payment_provider_timeout_ms": 500}])
async def test_failed_and_unanswered_calls_are_retried_with_the_same_key(
    api: Api, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    gateway.standin.configure(fail_next=1, hang_next=1)  # type: ignore[union-attr]
    reply = await api.pay(user, order["id"])
    assert reply.status == 201
    sent = [r for r in gateway.standin.requests() if r["path"] == "/v1/payment_intents"]  # type: ignore[union-attr]
    assert len(sent) == 3
    assert len({r["idempotency_key"] for r in sent}) == 1
    assert gateway.ledger()["summary"] == {**gateway.ledger()["summary"], "payment_intents": 1, "succeeded_charges": 1}
    metrics = (await api.call("GET", "/metrics")).body.decode()
    for outcome in ("server_error", "timeout", "ok"):
        line = (
            f'payment_provider_calls_total{{operation="create_payment_intent",outcome="{outcome}",provider="stripe"}}'
        )
        assert line in metrics, outcome


# Only the reconciliation the test runs: the workers' own rounds wait an hour.
@pytest.mark.parametrize(
    "config_overrides", [{"payment_provider_timeout_ms": 300, "payment_reconcile_interval_seconds": 3600}]
)
async def test_a_reconciliation_stripe_leaves_unanswered_is_due_again_in_seconds_not_a_lease(
    api: Api, app: web.Application, gateway: Gateway, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    gateway.standin.configure(fail_rate=1.0)  # type: ignore[union-attr]
    reply = await api.pay(user, order["id"])
    assert reply.status == 202, reply  # the call and its lookup both failed: outcome unknown
    payment_id = reply.json["id"]
    await db.execute("UPDATE payments SET lease_until = now() - interval '1 second' WHERE id = $1", payment_id)
    ctx = app[CONTEXT]
    assert await payments.reconcile(ctx) == 1  # claimed and asked: Stripe still fails
    due_in = await db.fetchval("SELECT extract(epoch FROM lease_until - now()) FROM payments WHERE id = $1", payment_id)
    # Claimed with a lease of a call and a lookup with all their retries (tens of
    # seconds), then given back: due again within the retry's 2 s.
    assert payments.lease_seconds(ctx) > 10
    assert due_in <= 2
    gateway.standin.configure(fail_rate=0.0)  # type: ignore[union-attr]
    await db.execute("UPDATE payments SET lease_until = now() - interval '1 second' WHERE id = $1", payment_id)
    assert await payments.reconcile(ctx) == 1
    assert (await _get(api, user, reply.headers["Location"]))["status"] == "succeeded"


class RateLimitingFront:
    """A real HTTP server in front of the stand-in (which has no rate limit of its own):
    the first `limited` calls to `path` get Stripe's 429 (nothing done, as Stripe's
    rate limiter answers before the API acts), every other call is passed through."""

    # What goes back from the stand-in; the rest (length, encoding, date) is the front's own.
    _ANSWER_HEADERS = ("Content-Type", "Request-Id", "Stripe-Version", "Idempotency-Key", "Idempotent-Replayed")

    def __init__(self, upstream: str, path: str, limited: int) -> None:
        self.upstream, self.path, self.limited = upstream, path, limited
        self.refused_keys: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.app.cleanup_ctx.append(self._session)

    async def _session(self, _app: web.Application) -> Any:
        async with aiohttp.ClientSession() as self.http:
            yield

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == self.path and len(self.refused_keys) < self.limited:
            self.refused_keys.append(request.headers.get("Idempotency-Key"))
            error = {"type": "invalid_request_error", "code": "rate_limit", "message": "Request rate limit exceeded."}
            return web.json_response({"error": error}, status=429)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.http.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            passed = {k: answer.headers[k] for k in self._ANSWER_HEADERS if k in answer.headers}
            return web.Response(status=answer.status, body=await answer.read(), headers=passed)


async def test_rate_limited_calls_are_retried_with_the_same_key_and_charge_once(
    aiohttp_client: Any, aiohttp_server: Any, clean_db: str, gateway: Gateway
) -> None:
    assert gateway.standin is not None
    front = RateLimitingFront(gateway.standin.url, "/v1/payment_intents", limited=2)
    server = await aiohttp_server(front.app)
    config = make_config(clean_db, **{**gateway.settings({}), "stripe_api_base": str(server.make_url("")).rstrip("/")})
    api = Api(await aiohttp_client(create_app(config, Options(dsn=clean_db, jwt_secret=JWT_SECRET))))
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"])
    assert reply.status == 201, reply
    sent = [r for r in gateway.standin.requests() if r["path"] == "/v1/payment_intents"]
    assert len(front.refused_keys) == 2 and len(sent) == 1
    assert {*front.refused_keys, sent[0]["idempotency_key"]} == {sent[0]["idempotency_key"]}
    assert gateway.ledger()["summary"] == {**gateway.ledger()["summary"], "payment_intents": 1, "succeeded_charges": 1}
    metrics = (await api.call("GET", "/metrics")).body.decode()
    assert (
        'payment_provider_calls_total{operation="create_payment_intent",outcome="rate_limited",provider="stripe"} 2.0'
        in metrics
    )


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"])
def test_a_missing_secret_stops_the_start_naming_it(missing: str) -> None:
    env = {
        **os.environ,
        "PAYMENT_PROVIDER": "stripe",
        "STRIPE_API_KEY": "sk_test_notused",
        "STRIPE_WEBHOOK_SECRET": "whsec_notused",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    del env[missing]
    done = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert missing in lines[0]


async def test_the_secrets_are_never_logged(clean_db: str, gateway: Gateway, tmp_path: Any) -> None:
    log = tmp_path / "server.log"
    env = {**gateway.env({}), "LOG_LEVEL": "DEBUG", "ACCESS_LOG": "true", "PAYMENT_PROVIDER_TIMEOUT_MS": "300"}
    server = ServerProcess(clean_db, env=env, log_path=log).start()
    try:
        async with session(server.url) as http:
            api = Api(http)
            user, order = await _pending_order(api)
            gateway.standin.configure(fail_rate=1.0)  # type: ignore[union-attr]  # errors get logged
            assert (await api.pay(user, order["id"])).status == 202
            body = b'{"id": "evt_x", "type": "x", "data": {"object": {}}}'
            await api.call("POST", WEBHOOK_PATH, data=body, headers=_signed(body, secret="whsec_wrong0000000000"))
    finally:
        server.stop()
    text = log.read_text()
    assert "payment" in text  # something was logged
    assert '"logger":"stripe"' in text  # and the SDK's own lines are among what was read
    assert gateway.api_key not in text
    assert WEBHOOK_SECRET not in text


async def test_the_sdks_lines_per_call_are_logged_only_with_the_access_log(
    clean_db: str, gateway: Gateway, tmp_path: Any
) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(clean_db, env={**gateway.env({}), "LOG_LEVEL": "INFO"}, log_path=log).start()
    try:
        async with session(server.url) as http:
            api = Api(http)
            user, order = await _pending_order(api)
            assert (await api.pay(user, order["id"])).status == 201
    finally:
        server.stop()
    text = log.read_text()
    assert '"level":"info"' in text  # INFO lines are logged
    assert '"logger":"stripe"' not in text


async def test_a_payment_of_another_provider_is_not_refunded_through_this_one(api: Api, db: asyncpg.Connection) -> None:
    user, order = await _pending_order(api)
    payment = (await api.pay(user, order["id"])).json
    await db.execute("UPDATE payments SET provider = 'simulated' WHERE id = $1", payment["id"])
    reply = await _refund(api, payment["id"])
    assert reply.status == 409
    assert "simulated" in reply.json["detail"]
