"""Paying an order: exactly one charge, whatever the concurrency, crashes included.

`pay` runs in the order's actor, in three steps, and holds no pooled connection
while the provider is called:

1. one short transaction locks the order, checks it is pending (and the amount),
   and records a `pending` payment with a fresh provider-side idempotency key (and
   claims the request's Idempotency-Key, if any);
2. the provider call, bounded by PAYMENT_PROVIDER_TIMEOUT_MS; when its answer is
   lost, the provider is asked with the idempotency key;
3. one short transaction records the outcome and, on success, marks the order paid.

A payment whose outcome stays unknown (the process died, or the provider did not
answer) keeps its `pending` row until its lease runs out; then the reconciler asks
the provider and settles it. Meanwhile the pending row blocks any other payment of
the order (a partial unique index), as well as cancelling, changing, deleting and
expiring it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncpg
import orjson

from db import idempotency as idempotency_db
from db import orders as orders_db
from db import payments as payments_db
from db import users as users_db
from server.domain.context import Context
from server.domain.events import emit
from server.domain.order_actors import OrderActor
from server.domain.orders import notify_status, order_json
from server.domain.payments.provider import ChargeRequest, ChargeResult, ProviderUnavailable
from server.runtime.jsonio import dumps
from server.runtime.problems import ApiError, Conflict, NotFound, ReplayedProblem, TooManyRequests, ValidationFailed

log = logging.getLogger(__name__)

_RECONCILE_BATCH = 100


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


class Outcome(Enum):
    """How a payment request ended, as far as this request knows."""

    CHARGED = "charged"
    DECLINED = "declined"
    # The provider's answer was lost: the payment stays pending until reconciled.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PaymentResult:
    outcome: Outcome
    payment: dict[str, Any]


def payment_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "order_id": row["order_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "failure_reason": row["failure_reason"],
        "provider": row["provider"],
        "provider_ref": row["provider_ref"],
        "created_at": row["created_at"],
    }


_OUTCOMES = {"succeeded": Outcome.CHARGED, "failed": Outcome.DECLINED, "pending": Outcome.UNKNOWN}


def _result_for(payment: dict[str, Any]) -> PaymentResult:
    return PaymentResult(_OUTCOMES[payment["status"]], payment)


def lease_seconds(ctx: Context) -> float:
    """How long a payment's own process may take to settle it (the charge and one
    lookup, each bounded by the provider timeout) before the reconciler may."""
    return 2 * ctx.config.payment_provider_timeout_ms / 1000 + 5


async def get(ctx: Context, payment_id: int, user_id: int, is_admin: bool) -> dict[str, Any]:
    row = await payments_db.get(ctx.db, payment_id, None if is_admin else user_id)
    if row is None:
        raise NotFound("no such payment")
    return payment_json(row)


async def pay(ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None) -> PaymentResult:
    """Pay the order once. A refusal raises its ApiError (a stored one, for a
    repeated Idempotency-Key, is raised again as ReplayedProblem)."""
    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        # Answered here without queueing behind the order's actor: a repeat of a
        # request still in flight gets 409 at once, a finished one its first answer.
        record = await idempotency_db.find(ctx.db, user_id, idempotency_key)
        if record is not None:
            return _replay(record, fingerprint)
    # Before any key is claimed or the order's actor is asked: someone else's order
    # (or none) is a 404 that stores nothing and waits in no queue.
    if await orders_db.owner(ctx.db, request.order_id) != user_id:
        raise NotFound("no such order")

    async def command(actor: OrderActor) -> PaymentResult:
        return await _pay_in_actor(ctx, user_id, request, idempotency_key, fingerprint)

    return await ctx.supervisor.ask(request.order_id, command, user_id=user_id)


def _replay(record: asyncpg.Record, fingerprint: bytes) -> PaymentResult:
    if record["request_hash"] != fingerprint:
        raise ValidationFailed.field("Idempotency-Key", "this key was used with a different request body")
    payment = record["payment"]
    if payment is None:
        raise ReplayedProblem(orjson.loads(record["response_body"]))
    if payment["status"] == "pending":
        raise Conflict("a request with this Idempotency-Key is still in flight")
    return _result_for(payment_json(payment))


async def _pay_in_actor(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> PaymentResult:
    started = await _begin(ctx, user_id, request, idempotency_key, fingerprint)
    if isinstance(started, PaymentResult):
        return started
    payment = started
    result = await _charge(ctx, payment, request.token)
    if result is None:
        ctx.metrics.payments.labels("unknown").inc()
        log.warning("payment outcome unknown; left to reconciliation", extra={"payment_id": payment["id"]})
        return _result_for(payment_json(payment))
    return _result_for(await _settle(ctx, payment["id"], result))


class _InFlight(Conflict):
    """Another payment of the order is in flight: transient, so never stored as the
    answer to an Idempotency-Key (the key stays free for a retry)."""


async def _begin(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> asyncpg.Record | PaymentResult:
    """Step 1. Returns the pending payment, or the response to replay; raises the
    API error when the order cannot be paid."""
    begin = functools.partial(
        payments_db.begin,
        order_id=request.order_id,
        user_id=user_id,
        amount=request.amount,
        provider=ctx.provider.name,
        provider_key=f"pay_{secrets.token_hex(12)}",
        lease_seconds=lease_seconds(ctx),
    )
    config = ctx.config
    if idempotency_key is None:
        try:
            async with ctx.db.transaction() as conn:
                await users_db.lock(conn, user_id)
                await payments_db.check_declines(
                    conn,
                    request.order_id,
                    user_id,
                    config.payment_max_declines_per_order,
                    config.payment_max_declines_per_user,
                )
                return await begin(conn)
        except Exception as exc:
            raise await _refused(ctx, request, exc) from None
    refusal: Exception | None = None
    async with ctx.db.transaction() as conn:
        await users_db.lock(conn, user_id)
        if not await idempotency_db.claim(conn, user_id, idempotency_key, fingerprint):
            record = await idempotency_db.find(conn, user_id, idempotency_key)
            assert record is not None
            return _replay(record, fingerprint)
        try:
            await payments_db.check_declines(
                conn,
                request.order_id,
                user_id,
                config.payment_max_declines_per_order,
                config.payment_max_declines_per_user,
            )
            payment = await begin(conn)
        except Exception as exc:
            refusal = exc
            error = _refusal(exc)
            if isinstance(error, _InFlight | TooManyRequests):
                raise error from None  # transient: rolls the claim back, the key stays free
            body = error.body()
            await idempotency_db.store_response(conn, user_id, idempotency_key, body["status"], dumps(body))
        else:
            await idempotency_db.attach_payment(conn, user_id, idempotency_key, payment["id"])
    if refusal is not None:
        raise await _refused(ctx, request, refusal)
    return payment


async def _refused(ctx: Context, request: PaymentRequest, exc: Exception) -> ApiError:
    """The API error for a refused step 1, once its transaction is over; an order
    found past its expiry is expired on the way."""
    if isinstance(exc, orders_db.Expired) and await orders_db.expire_one(ctx.db, request.order_id, notify_status):
        ctx.metrics.order_transition("pending", "expired")
    return _refusal(exc)


def _refusal(exc: Exception) -> ApiError:
    """Why an order cannot be paid, as an API error (other exceptions propagate)."""
    if isinstance(exc, orders_db.OrderNotFound):
        return NotFound("no such order")
    if isinstance(exc, orders_db.WrongStatus):
        return Conflict(f"the order is {exc.status}; only pending orders can be paid")
    if isinstance(exc, orders_db.PaymentInFlight):
        return _InFlight("a payment for this order is in progress")
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
    async with ctx.db.transaction() as conn:
        row = await payments_db.finish(
            conn, payment_id, status=status, provider_ref=provider_ref, failure_reason=reason
        )
        if row is not None:
            await _emit_outcome(conn, row)
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
        await _refund(ctx, payment_id, row["provider_ref"])
    return payment_json(row)


async def _emit_outcome(conn: asyncpg.Connection, payment: asyncpg.Record) -> None:
    """payment.succeeded (with order.paid: the same statement paid the order) or
    payment.failed, in the transaction that settled the payment."""
    await emit(conn, f"payment.{payment['status']}", payment_json(payment))
    if payment["status"] == "succeeded":
        order = await orders_db.get(conn, payment["order_id"], None)
        assert order is not None
        await emit(conn, "order.paid", order_json(order))


async def _refund(ctx: Context, payment_id: int, provider_ref: str) -> None:
    try:
        refund_ref = await ctx.provider.refund(provider_ref, idempotency_key=f"refund_{payment_id}")
    except (TimeoutError, ProviderUnavailable):
        log.warning("refund failed; it will be retried", extra={"payment_id": payment_id})
        return
    await payments_db.set_refunded(ctx.db, payment_id, refund_ref)
    log.warning("charge refunded: the order could no longer be paid", extra={"payment_id": payment_id})


async def reconcile(ctx: Context) -> int:
    """Settle pending payments whose lease ran out, by asking the provider; retry
    refunds that are due. Returns how many payments were settled."""
    settled = 0
    for payment in await payments_db.claim_stale(ctx.db, batch=_RECONCILE_BATCH, lease_seconds=lease_seconds(ctx)):
        settled += await _reconcile_one(ctx, payment)
    for due in await payments_db.refunds_due(ctx.db, _RECONCILE_BATCH):
        await _refund(ctx, due["id"], due["provider_ref"])
    return settled


async def _reconcile_one(ctx: Context, payment: asyncpg.Record) -> int:
    timeout = ctx.config.payment_provider_timeout_ms / 1000

    async def command(actor: OrderActor) -> None:
        try:
            async with asyncio.timeout(timeout):
                result = await ctx.provider.lookup(payment["provider_key"])
        except (TimeoutError, ProviderUnavailable):
            log.warning("provider unreachable; reconciliation retried later", extra={"payment_id": payment["id"]})
            return
        settled = await _settle(ctx, payment["id"], result)
        log.info(
            "payment reconciled",
            extra={"payment_id": payment["id"], "order_id": payment["order_id"], "status": settled["status"]},
        )

    try:
        await ctx.supervisor.ask(payment["order_id"], command)
    except ApiError:
        return 0  # the actor is busy or we are shutting down: the lease brings it back
    return 1
