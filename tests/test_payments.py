"""The Payments section of the contract, through HTTP on a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from db import idempotency as idempotency_db
from handlers.routing import CONTEXT
from server.app import Options, create_app
from tests.conftest import JWT_SECRET, make_config
from tests.helpers import Api, User, eventually, hold_provider, watch_provider
from tests.stripe_standin import Gateway, both_providers  # noqa: F401 (runs every test with both providers)

PAYMENT_FIELDS = {
    "id",
    "order_id",
    "amount",
    "amount_refunded",
    "currency",
    "status",
    "failure_reason",
    "provider",
    "provider_ref",
    "client_secret",
    "next_action",
    "created_at",
}


async def _pending_order(
    api: Api, user: User | None = None, price: int = 1250, quantity: int = 2
) -> tuple[User, dict[str, Any]]:
    user = user or await api.customer()
    product = await api.product(price=price, stock=100)
    reply = await api.order(user, (product["id"], quantity))
    assert reply.status == 201
    order: dict[str, Any] = reply.json
    return user, order


async def _order_status(api: Api, user: User, order_id: int) -> str:
    status: str = (await api.call("GET", f"/api/orders/{order_id}", token=user.token)).json["status"]
    return status


async def _charges(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM simulated_provider_charges WHERE status = 'succeeded'")
    return count


async def test_a_successful_payment_is_201_and_the_order_is_paid(gateway: Gateway, api: Api) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"])
    assert reply.status == 201
    payment = reply.json
    assert set(payment) == PAYMENT_FIELDS
    assert payment["status"] == "succeeded"
    assert (payment["amount"], payment["currency"], payment["order_id"]) == (2500, "USD", order["id"])
    assert payment["provider"] == gateway.name
    assert payment["provider_ref"]
    assert payment["failure_reason"] is None
    assert reply.headers["Location"] == f"/api/payments/{payment['id']}"
    assert await _order_status(api, user, order["id"]) == "paid"
    paid = (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json
    assert paid["expires_at"] is None


async def test_a_declined_card_is_402_with_the_failed_payment_and_the_order_stays_pending(api: Api) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], card="tok_chargeDeclined")
    assert reply.status == 402
    assert reply.content_type == "application/json"
    assert reply.json["status"] == "failed"
    assert reply.json["failure_reason"] == "card_declined"
    assert await _order_status(api, user, order["id"]) == "pending"
    retry = await api.pay(user, order["id"])
    assert retry.status == 201
    assert retry.json["id"] != reply.json["id"]


async def test_an_unknown_token_is_declined_as_invalid_token(api: Api) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], card="tok_whatever")
    assert reply.status == 402
    assert reply.json["failure_reason"] == "invalid_token"


async def test_an_amount_that_differs_from_the_total_is_422(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"], amount=order["total"] - 1)
    assert reply.status == 422
    assert reply.json["errors"][0]["field"] == "amount"
    assert await gateway.succeeded_charges(db) == 0
    assert (await api.pay(user, order["id"], amount=order["total"])).status == 201


async def test_paying_an_order_that_is_not_pending_is_409(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    user, order = await _pending_order(api)
    assert (await api.pay(user, order["id"])).status == 201
    assert (await api.pay(user, order["id"])).status == 409
    _, cancelled = await _pending_order(api, user)
    await api.call("PUT", f"/api/orders/{cancelled['id']}", json={"status": "cancelled"}, token=user.token)
    assert (await api.pay(user, cancelled["id"])).status == 409
    assert await gateway.succeeded_charges(db) == 1


async def test_paying_another_users_order_is_404(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    _, order = await _pending_order(api)
    stranger = await api.customer()
    assert (await api.pay(stranger, order["id"])).status == 404
    admin = await api.admin_user()
    assert (await api.pay(admin, order["id"])).status == 404
    assert (await api.pay(stranger, 999999)).status == 404
    assert await gateway.succeeded_charges(db) == 0


async def test_payment_body_is_validated(api: Api) -> None:
    user, order = await _pending_order(api)
    for body in (
        {"order_id": order["id"]},
        {"order_id": order["id"], "payment_method": {"type": "paypal", "token": "x"}},
        {"order_id": order["id"], "payment_method": {"type": "card", "token": ""}},
        {"order_id": order["id"], "payment_method": {"type": "card", "token": "tok_visa"}, "status": "succeeded"},
    ):
        assert (await api.call("POST", "/api/payments", json=body, token=user.token)).status == 422


async def test_a_payment_is_visible_to_its_owner_and_admins_only(api: Api) -> None:
    user, order = await _pending_order(api)
    payment = (await api.pay(user, order["id"])).json
    path = f"/api/payments/{payment['id']}"
    assert (await api.call("GET", path, token=user.token)).json == payment
    admin = await api.admin_user()
    assert (await api.call("GET", path, token=admin.token)).json == payment
    stranger = await api.customer()
    assert (await api.call("GET", path, token=stranger.token)).status == 404
    assert (await api.call("GET", path)).status == 401
    assert (await api.call("GET", "/api/payments/424242", token=user.token)).status == 404


async def test_the_database_allows_one_succeeded_payment_per_order(api: Api, db: asyncpg.Connection) -> None:
    user, order = await _pending_order(api)
    await api.pay(user, order["id"])
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO payments (order_id, user_id, amount, currency, status, provider, provider_key) "
            "VALUES ($1, $2, 1, 'USD', 'succeeded', 'simulated', 'second')",
            order["id"],
            user.id,
        )


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_first_response_without_charging_again(
    gateway: Gateway, api: Api, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    first = await api.pay(user, order["id"], key="key-1")
    again = await api.pay(user, order["id"], key="key-1")
    assert first.status == again.status == 201
    assert again.json == first.json
    assert await gateway.succeeded_charges(db) == 1


async def test_a_replayed_decline_is_the_same_402(api: Api) -> None:
    user, order = await _pending_order(api)
    first = await api.pay(user, order["id"], card="tok_chargeDeclined", key="decline-1")
    again = await api.pay(user, order["id"], card="tok_chargeDeclined", key="decline-1")
    assert first.status == again.status == 402
    assert again.json["id"] == first.json["id"]


async def test_a_refused_payment_stores_no_key_and_is_judged_again(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    first = await api.pay(user, 999999, key="missing-order")
    again = await api.pay(user, 999999, key="missing-order")
    assert first.status == again.status == 404
    assert again.json == first.json
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_paying_a_paid_order_with_fresh_keys_stores_no_records(api: Api, db: asyncpg.Connection) -> None:
    """The second audit stored 500 records (1.1 KB each) this way in 1.7 s."""
    user, order = await _pending_order(api)
    assert (await api.pay(user, order["id"], key="paid")).status == 201
    for attempt in range(5):
        assert (await api.pay(user, order["id"], key=f"again-{attempt}")).status == 409
    assert [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys")] == ["paid"]


async def test_a_key_refused_once_can_start_the_payment_once_the_refusal_no_longer_holds(api: Api) -> None:
    user, order = await _pending_order(api)
    assert (await api.pay(user, order["id"], amount=order["total"] + 1, key="retry-me")).status == 422
    assert (await api.pay(user, order["id"], key="retry-me")).status == 201


async def test_same_key_with_another_body_is_422(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    user, order = await _pending_order(api)
    _, other = await _pending_order(api, user)
    assert (await api.pay(user, order["id"], key="k")).status == 201
    reply = await api.pay(user, other["id"], key="k")
    assert reply.status == 422
    assert await _order_status(api, user, other["id"]) == "pending"
    assert await gateway.succeeded_charges(db) == 1


async def test_same_key_while_the_first_is_in_flight_is_409(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    hold = hold_provider(app[CONTEXT].provider, "charge")
    first = asyncio.create_task(api.pay(user, order["id"], key="slow"))
    await hold.in_flight()
    assert (await api.pay(user, order["id"], key="slow")).status == 409
    hold.release()
    assert (await first).status == 201
    assert (await api.pay(user, order["id"], key="slow")).status == 201
    assert await gateway.succeeded_charges(db) == 1


async def test_keys_are_scoped_to_the_user(api: Api) -> None:
    alice, order_a = await _pending_order(api)
    bob, order_b = await _pending_order(api)
    assert (await api.pay(alice, order_a["id"], key="shared")).status == 201
    reply = await api.pay(bob, order_b["id"], key="shared")
    assert reply.status == 201
    assert reply.json["order_id"] == order_b["id"]


async def test_an_unusable_key_is_422(api: Api) -> None:
    user, order = await _pending_order(api)
    assert (await api.pay(user, order["id"], key="x" * 300)).status == 422


async def test_old_keys_are_purged(api: Api, db: asyncpg.Connection, app: web.Application) -> None:
    user, order = await _pending_order(api)
    await api.pay(user, order["id"], key="old")
    _, fresh = await _pending_order(api, user)
    await api.pay(user, fresh["id"], key="fresh")
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '49 hours' WHERE key = 'old'")
    purged = await idempotency_db.purge(app[CONTEXT].db, 48 * 3600)
    assert purged == 1
    assert [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys")] == ["fresh"]


# --- the provider's answer lost, and races with the order's life ---------------------------


@pytest.mark.parametrize(
    "config_overrides",
    [{"payment_provider_fault": "timeout", "payment_provider_fault_rate": 1.0, "payment_provider_timeout_ms": 300}],
)
async def test_a_timed_out_charge_is_looked_up_and_settled(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    if gateway.standin is not None:
        # Stripe: the charge is made but its answer never comes; asked again with the
        # same key, Stripe answers from its record of it.
        gateway.standin.configure(hang_rate=0.0, hang_next=1)
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"])
    assert reply.status == 201  # the provider charged; the lookup found it
    assert await _order_status(api, user, order["id"]) == "paid"
    assert await gateway.succeeded_charges(db) == 1


@pytest.mark.parametrize(
    "config_overrides",
    [{"payment_provider_fault": "error", "payment_provider_fault_rate": 1.0, "payment_provider_timeout_ms": 200}],
)
async def test_an_unknown_outcome_is_202_pending_until_reconciled(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    reply = await api.pay(user, order["id"])
    assert reply.status == 202
    assert reply.json["status"] == "pending"
    # Meanwhile the order is blocked for other payments and for cancelling.
    assert (await api.pay(user, order["id"])).status == 409
    cancel = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert cancel.status == 409
    if gateway.standin is not None:
        # Stripe: asking is sending the same request again under the same key; once
        # Stripe answers, it is carried out once, and the payment settles succeeded.
        gateway.standin.configure(fail_rate=0.0)
        await db.execute(
            "UPDATE payments SET lease_until = now() - interval '1 second' WHERE id = $1", reply.json["id"]
        )
        for _ in range(100):
            payment = (await api.call("GET", reply.headers["Location"], token=user.token)).json
            if payment["status"] != "pending":
                break
            await asyncio.sleep(0.1)
        assert payment["status"] == "succeeded"
        assert await _order_status(api, user, order["id"]) == "paid"
        assert await gateway.succeeded_charges(db) == 1
        return
    # Once the lease runs out, the reconciler asks the provider: no charge, so failed.
    await db.execute("UPDATE payments SET lease_until = now() - interval '1 second' WHERE id = $1", reply.json["id"])
    for _ in range(40):
        payment = (await api.call("GET", reply.headers["Location"], token=user.token)).json
        if payment["status"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert payment["status"] == "failed"
    assert payment["failure_reason"] == "not_charged"
    assert await _order_status(api, user, order["id"]) == "pending"
    app[CONTEXT].provider.fault = "none"  # type: ignore[attr-defined]
    assert (await api.pay(user, order["id"])).status == 201


async def test_while_a_payment_is_in_flight_another_process_cannot_change_the_order(
    api: Api, app: web.Application, aiohttp_client: Any, clean_db: str
) -> None:
    other_config = make_config(clean_db)
    other = Api(await aiohttp_client(create_app(other_config, Options(dsn=clean_db, jwt_secret=JWT_SECRET))))
    user, order = await _pending_order(api)
    hold = hold_provider(app[CONTEXT].provider, "charge")
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await hold.in_flight()
    path = f"/api/orders/{order['id']}"
    product_id = order["items"][0]["product_id"]
    for method, body in (
        ("PUT", {"status": "cancelled"}),
        ("PUT", {"items": [{"product_id": product_id, "quantity": 1}]}),
        ("DELETE", None),
    ):
        reply = await other.call(method, path, json=body, token=user.token)
        assert reply.status == 409, (method, body, reply)
        assert "payment" in reply.json["detail"]
    assert (await other.pay(user, order["id"])).status == 409
    hold.release()
    assert (await paying).status == 201


@pytest.mark.parametrize("config_overrides", [{"order_sweep_interval_seconds": 0.2}])
async def test_the_sweeper_skips_an_order_whose_payment_is_in_flight(
    api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    hold = hold_provider(app[CONTEXT].provider, "charge")
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await hold.in_flight()
    # The order passes its expiry while the provider works, and sweeps come and go.
    await db.execute("UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = $1", order["id"])
    await asyncio.sleep(1.0)  # five sweeps (a window for the sweeper to do wrong, not a condition to pass)
    hold.release()
    reply = await paying
    assert reply.status == 201
    assert await _order_status(api, user, order["id"]) == "paid"


async def test_a_charge_for_an_order_that_can_no_longer_be_paid_is_refunded(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    user, order = await _pending_order(api)
    hold = hold_provider(app[CONTEXT].provider, "charge")
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await hold.in_flight()
    # Something outside the rules (an operator, a bug) ends the order mid-payment.
    await db.execute("UPDATE orders SET status = 'cancelled', expires_at = NULL WHERE id = $1", order["id"])
    hold.release()
    reply = await paying
    assert reply.status == 402
    assert reply.json["failure_reason"] == "order_not_payable"
    if gateway.stripe:
        ledger = gateway.ledger()
        (charge,) = ledger["charges"]
        (refund,) = ledger["refunds"]
        assert (charge["status"], refund["status"], refund["amount"]) == ("succeeded", "succeeded", charge["amount"])
        assert refund["payment_intent"] == reply.json["provider_ref"]
        assert await db.fetchval("SELECT refund_ref FROM payments WHERE id = $1", reply.json["id"]) == refund["id"]
        return
    charge = await db.fetchrow("SELECT status, reference, amount FROM simulated_provider_charges")
    assert charge is not None and charge["status"] == "succeeded"
    refund = await db.fetchrow("SELECT reference, amount, status FROM simulated_provider_refunds")
    assert refund is not None
    assert (refund["status"], refund["amount"]) == ("succeeded", charge["amount"])
    assert await db.fetchval("SELECT refund_ref FROM payments WHERE id = $1", reply.json["id"]) == refund["reference"]


@pytest.mark.parametrize(
    "config_overrides", [{"db_pool_max_size": 2, "db_pool_min_size": 2, "payment_provider_latency_ms": 300}]
)
async def test_no_pooled_connection_is_held_while_the_provider_is_called(api: Api, app: web.Application) -> None:
    ctx = app[CONTEXT]
    customers = [await api.customer() for _ in range(4)]
    orders = [(await _pending_order(api, customers[i % 4]))[1] for i in range(40)]
    watch = watch_provider(ctx.provider, "charge", ctx.db.pool)
    replies = await asyncio.gather(*(api.pay(customers[i % 4], order["id"]) for i, order in enumerate(orders)))
    assert [r.status for r in replies] == [201] * 40
    assert watch.holds_no_connection(max_pool=2), watch


async def test_charge_invariants_hold_after_normal_payments(gateway: Gateway, api: Api, clean_db: str) -> None:
    for card in ("tok_visa", "tok_chargeDeclined", "tok_visa"):
        user, order = await _pending_order(api)
        await api.pay(user, order["id"], card=card)
    assert await gateway.violations(clean_db, settled=True) == []


@pytest.mark.parametrize(
    "config_overrides", [{"payment_provider_latency_ms": 3000, "payment_reconcile_interval_seconds": 60}]
)
async def test_a_payment_whose_process_is_gone_is_settled_at_once(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection, aiohttp_client: Any, clean_db: str
) -> None:
    """A pending payment whose owner holds no liveness lock (its process died) is
    settled by another process's reconciler (every 0.5 s here), not after its lease;
    the provider's lookup voids the key, so the charge still on its way (it lands
    1.5 s after it started) charges nothing."""
    other = make_config(clean_db, **gateway.app_settings())
    await aiohttp_client(create_app(other, Options(dsn=clean_db, jwt_secret=JWT_SECRET)))
    user, order = await _pending_order(api)
    hold = hold_provider(app[CONTEXT].provider, "charge")
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await hold.in_flight()
    # Nobody holds liveness lock 1 (ids are random): as if the process had died.
    assert await db.execute("UPDATE payments SET worker = 1 WHERE status = 'pending'") == "UPDATE 1"

    async def settled() -> bool:
        return bool(await db.fetchval("SELECT status FROM payments") != "pending")

    await eventually(settled, timeout=15)  # well within the lease (25 s): settled because its process is gone
    if gateway.stripe:
        # Stripe's lookup replays the request under its key: Stripe carries it out once,
        # so the payment settles as charged, and the charge still on its way finds it done.
        assert await db.fetchval("SELECT status FROM payments") == "succeeded"
        hold.release()
        reply = await paying
        assert reply.status == 201
        assert await gateway.succeeded_charges(db) == 1
        assert await _order_status(api, user, order["id"]) == "paid"
        return
    assert await db.fetchval("SELECT failure_reason FROM payments") == "not_charged"
    hold.release()  # the charge that was on its way reaches the provider now
    reply = await paying
    assert (reply.status, reply.json["failure_reason"]) == (402, "not_charged")
    assert await gateway.succeeded_charges(db) == 0  # the late charge found its key void
    assert await _order_status(api, user, order["id"]) == "pending"
