"""Paying an order: exactly one charge, whatever the concurrency, crashes included.

`pay` runs in the order's actor, in three steps, and holds no pooled connection
while the provider is called:

1. one short transaction locks the order, checks it is pending (and the amount),
   and records a `pending` payment with a fresh provider-side idempotency key (and
   claims the request's Idempotency-Key, if any);
2. the provider call, bounded by PAYMENT_PROVIDER_TIMEOUT_MS; when its answer is
   lost, the provider is asked with the idempotency key;
3. one statement (its own transaction) records the outcome, on success marks the
   order paid, and writes the events (payment.succeeded and order.paid, or
   payment.failed).

A payment whose outcome stays unknown keeps its `pending` row until the reconciler
asks the provider and settles it: at once when the process that made it is gone
(its liveness lock is free, see server/runtime/liveness.py), else when its lease
runs out (the provider did not answer, or the process lost its lock). Meanwhile
the pending row blocks any other payment of the order (a partial unique index), as
well as cancelling, changing, deleting and expiring it.

Idempotency-Key handling is shared with refunds (idempotency.py); `pay` answers
with a `Result` (SUCCEEDED: charged, FAILED: declined, UNKNOWN: left to
reconciliation), which the handler maps to a status.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from db import orders as orders_db
from db import payments as payments_db
from db.pool import Executor
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.orders import notify_status
from server.domain.payments.idempotency import InFlight, Resource, Result, replay_known, result_for, start_once
from server.domain.payments.provider import ChargeRequest, ChargeResult, ProviderUnavailable, RefundRequest
from server.runtime.problems import ApiError, Conflict, NotFound, TooManyRequests, ValidationFailed

log = logging.getLogger(__name__)

_RECONCILE_BATCH = 100
R = TypeVar("R")  # what the provider's lookup answers (a charge's or a refund's result)


@dataclass(frozen=True)
class PaymentRequest:
    order_id: int
    token: str
    amount: int | None

    def fingerprint(self) -> bytes:
        """What "the same body" means for Idempotency-Key: the same parsed request."""
        canonical = orjson.dumps(
            {"order_id": self.order_id, "token": self.token, "amount": self.amount}, option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(canonical).digest()


def payment_json(row: asyncpg.Record) -> dict[str, Any]:
    """A payment as the API shows it, from the payments columns by name.
    sql/019_settle_payment.sql's payment_json builds the same in SQL for the
    payment.succeeded and payment.failed events: keep the two in step
    (tests/test_events.py compares them)."""
    return {
        "id": row["id"],
        "order_id": row["order_id"],
        "amount": row["amount"],
        "amount_refunded": row["amount_refunded"],
        "currency": row["currency"],
        "status": row["status"],
        "failure_reason": row["failure_reason"],
        "provider": row["provider"],
        "provider_ref": row["provider_ref"],
        "created_at": row["created_at"],
    }


PAYMENT = Resource("payment", payment_json)


def lease_seconds(ctx: Context) -> float:
    """How long a payment's own process may take to settle it (the charge and one
    lookup, each bounded by the provider timeout) before the reconciler may."""
    return 2 * ctx.config.payment_provider_timeout_ms / 1000 + 5


async def get(ctx: Context, payment_id: int, user_id: int, is_admin: bool) -> dict[str, Any]:
    row = await payments_db.get(ctx.db, payment_id, None if is_admin else user_id)
    if row is None:
        raise NotFound("no such payment")
    return payment_json(row)


async def pay(ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None) -> Result:
    """Pay the order once. A refusal raises its ApiError (and stores nothing for an
    Idempotency-Key)."""
    fingerprint = request.fingerprint()
    # Answered without queueing behind the order's actor: a repeat of a request
    # still in flight gets 409 at once, a finished one its first answer.
    replay = await replay_known(ctx, user_id, idempotency_key, fingerprint, PAYMENT)
    if replay is not None:
        return replay
    # Before any key is claimed or the order's actor is asked: someone else's order
    # (or none) is a 404 that stores nothing and waits in no queue.
    if await orders_db.owner(ctx.db, request.order_id) != user_id:
        raise NotFound("no such order")

    async def command(actor: OrderActor) -> Result:
        return await _pay_in_actor(ctx, user_id, request, idempotency_key, fingerprint)

    return await ctx.supervisor.ask(request.order_id, command, user_id=user_id)


async def _pay_in_actor(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> Result:
    started = await _begin(ctx, user_id, request, idempotency_key, fingerprint)
    if isinstance(started, Result):
        return started
    payment = started
    result = await _charge(ctx, payment, request.token)
    if result is None:
        ctx.metrics.payments.labels("unknown").inc()
        log.warning("payment outcome unknown; left to reconciliation", extra={"payment_id": payment["id"]})
        return result_for(payment_json(payment))
    return result_for(await _settle(ctx, payment["id"], result))


async def _begin(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> asyncpg.Record | Result:
    """Step 1. Returns the pending payment, or the result to replay; raises the
    API error when the order cannot be paid (an order found past its expiry is
    expired on the way, once step 1's transaction is over)."""
    config = ctx.config

    async def begin(db: Executor) -> asyncpg.Record:
        # The decline limits are checked under the customer's lock, so that
        # concurrent payments of one customer count each other (one statement).
        return await payments_db.begin(
            db,
            order_id=request.order_id,
            user_id=user_id,
            amount=request.amount,
            provider=ctx.provider.name,
            provider_key=f"pay_{secrets.token_hex(12)}",
            lease_seconds=lease_seconds(ctx),
            owner=ctx.liveness.owner,
            max_declines_per_order=config.payment_max_declines_per_order,
            max_declines_per_user=config.payment_max_declines_per_user,
        )

    try:
        return await start_once(
            ctx, user_id, idempotency_key, fingerprint, PAYMENT, begin, _refusal, one_statement=True
        )
    except ApiError as error:
        if isinstance(error.__cause__, orders_db.Expired) and await orders_db.expire_one(
            ctx.db, request.order_id, notify_status
        ):
            ctx.metrics.order_transition("pending", "expired")
        raise


def _refusal(exc: Exception) -> ApiError:
    """Why an order cannot be paid, as an API error (other exceptions propagate)."""
    if isinstance(exc, orders_db.OrderNotFound):
        return NotFound("no such order")
    if isinstance(exc, orders_db.WrongStatus):
        return Conflict(f"the order is {exc.status}; only pending orders can be paid")
    if isinstance(exc, orders_db.PaymentInFlight):
        return InFlight("a payment for this order is in progress")
    if isinstance(exc, orders_db.Expired):
        return Conflict("the order has expired")
    if isinstance(exc, payments_db.AmountMismatch):
        return ValidationFailed.field("amount", f"must equal the order total ({exc.total})")
    if isinstance(exc, payments_db.TooManyDeclinesForOrder):
        return Conflict(
            f"this order's payments were declined {exc.declines} times (PAYMENT_MAX_DECLINES_PER_ORDER); "
            "it takes no more",
            extra={"limit": "PAYMENT_MAX_DECLINES_PER_ORDER"},
        )
    if isinstance(exc, payments_db.TooManyDeclines):
        return TooManyRequests(
            "too many declined payments in 24 hours (PAYMENT_MAX_DECLINES_PER_USER)", retry_after=exc.retry_after
        )
    raise exc


async def _charge(ctx: Context, payment: asyncpg.Record, token: str) -> ChargeResult | None:
    """Step 2: the provider's answer, or None when it stays unknown for now."""
    timeout = ctx.config.payment_provider_timeout_ms / 1000
    request = ChargeRequest(
        idempotency_key=payment["provider_key"],
        amount=payment["amount"],
        currency=payment["currency"],
        token=token,
        reference=str(payment["id"]),
    )
    try:
        async with asyncio.timeout(timeout):
            return await ctx.provider.charge(request)
    except (TimeoutError, ProviderUnavailable) as exc:
        log.warning(
            "provider call failed; looking the charge up", extra={"payment_id": payment["id"], "error": repr(exc)}
        )
    return await _lookup(ctx, payment["provider_key"], timeout)


async def _lookup(ctx: Context, provider_key: str, timeout: float) -> ChargeResult | None:
    try:
        async with asyncio.timeout(timeout):
            return await ctx.provider.lookup(provider_key)
    except (TimeoutError, ProviderUnavailable):
        return None


async def _settle(ctx: Context, payment_id: int, result: ChargeResult | None) -> dict[str, Any]:
    """Step 3: record the outcome (None: the provider never made the charge)."""
    if result is None:
        status, provider_ref, reason = "failed", None, "not_charged"
    elif result.status == "succeeded":
        status, provider_ref, reason = "succeeded", result.provider_ref, None
    else:
        status, provider_ref, reason = "failed", result.provider_ref, result.failure_reason
    # One statement on the pool, its own transaction: it settles the payment, pays the
    # order and writes the events (sql/019_settle_payment.sql).
    row = await payments_db.finish(ctx.db, payment_id, status=status, provider_ref=provider_ref, failure_reason=reason)
    if row is None:
        # Settled by someone else meanwhile (a reconciler): report what it recorded.
        current = await payments_db.get(ctx.db, payment_id, None)
        assert current is not None
        return payment_json(current)
    outcome = "refunded" if row["refund_due"] else ("succeeded" if row["status"] == "succeeded" else "declined")
    ctx.metrics.payments.labels(outcome).inc()
    if row["status"] == "succeeded":
        ctx.metrics.order_transition("pending", "paid")
    if row["refund_due"]:
        await _refund_unpayable(ctx, row)
    return payment_json(row)


async def _refund_unpayable(ctx: Context, payment: asyncpg.Record) -> None:
    """Give back a charge that succeeded for an order that could no longer be paid."""
    request = RefundRequest(
        idempotency_key=f"refund_{payment['id']}",
        charge_ref=payment["provider_ref"],
        amount=payment["amount"],
        currency=payment["currency"],
        reference=str(payment["id"]),
    )
    try:
        async with asyncio.timeout(ctx.config.payment_provider_timeout_ms / 1000):
            result = await ctx.provider.refund(request)
    except (TimeoutError, ProviderUnavailable):
        log.warning("refund failed; it will be retried", extra={"payment_id": payment["id"]})
        return
    if result.status != "succeeded":
        # The same key gives the same answer: this charge needs an operator.
        log.error("the provider refused to refund a charge kept for no order", extra={"payment_id": payment["id"]})
        return
    await payments_db.set_refunded(ctx.db, payment["id"], result.provider_ref)
    log.warning("charge refunded: the order could no longer be paid", extra={"payment_id": payment["id"]})


async def reconcile(ctx: Context) -> int:
    """Settle pending payments whose process is gone or whose lease ran out, by
    asking the provider; retry refunds that are due. Returns how many payments
    were settled."""
    settled = 0
    claimed = await payments_db.claim_stale(
        ctx.db, batch=_RECONCILE_BATCH, lease_seconds=lease_seconds(ctx), owner=ctx.liveness.owner
    )
    for payment in claimed:
        settled += await _reconcile_one(ctx, payment)
    for due in await payments_db.refunds_due(ctx.db, _RECONCILE_BATCH):
        await _refund_unpayable(ctx, due)
    return settled


async def _reconcile_one(ctx: Context, payment: asyncpg.Record) -> int:
    return await reconcile_in_actor(ctx, "payment", payment, ctx.provider.lookup, _settle)


async def reconcile_in_actor(
    ctx: Context,
    kind: str,
    row: asyncpg.Record,
    lookup: Callable[[str], Awaitable[R]],
    settle: Callable[[Context, int, R], Awaitable[dict[str, Any]]],
) -> int:
    """Ask the provider what became of one pending payment or refund (`kind`, its
    claimed `row`) and settle it, in its order's actor. Returns 1 once the command ran
    (a provider still unreachable leaves the row for a later round), 0 when the actor
    could not take it (busy, or shutting down: the lease brings the row back)."""
    timeout = ctx.config.payment_provider_timeout_ms / 1000
    ids = {f"{kind}_id": row["id"], "order_id": row["order_id"]}

    async def command(actor: OrderActor) -> None:
        try:
            async with asyncio.timeout(timeout):
                result = await lookup(row["provider_key"])
        except (TimeoutError, ProviderUnavailable):
            log.warning("provider unreachable; reconciliation retried later", extra=ids)
            return
        settled = await settle(ctx, row["id"], result)
        log.info(f"{kind} reconciled", extra={**ids, "status": settled["status"]})

    try:
        await ctx.supervisor.ask(row["order_id"], command)
    except ApiError:
        return 0
    return 1
