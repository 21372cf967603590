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
from typing import Any

import asyncpg
import orjson

from db import idempotency as idempotency_db
from db import orders as orders_db
from db import payments as payments_db
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.payments.provider import ChargeRequest, ChargeResult, ProviderUnavailable
from server.runtime.jsonio import dumps
from server.runtime.problems import ApiError, Conflict, NotFound, ValidationFailed

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


@dataclass(frozen=True)
class PaymentResponse:
    status: int
    body: dict[str, Any]
    # A replayed refusal (a problem document) rather than a payment.
    is_problem: bool = False


def payment_json(row: asyncpg.Record, prefix: str = "") -> dict[str, Any]:
    return {
        "id": row[prefix + "id"],
        "order_id": row[prefix + "order_id"],
        "amount": row[prefix + "amount"],
        "currency": row[prefix + "currency"],
        "status": row[prefix + "status"],
        "failure_reason": row[prefix + "failure_reason"],
        "provider": row[prefix + "provider"],
        "provider_ref": row[prefix + "provider_ref"],
        "created_at": row[prefix + "created_at"],
    }


def _response_for(payment: dict[str, Any]) -> PaymentResponse:
    """201 for a success, 402 for a decline (the failed payment in the body), 202
    while the outcome is still unknown."""
    status = {"succeeded": 201, "failed": 402}.get(payment["status"], 202)
    return PaymentResponse(status, payment)


def lease_seconds(ctx: Context) -> float:
    """How long a payment's own process may take to settle it (the charge and one
    lookup, each bounded by the provider timeout) before the reconciler may."""
    return 2 * ctx.config.payment_provider_timeout_ms / 1000 + 5


async def get(ctx: Context, payment_id: int, user_id: int, is_admin: bool) -> dict[str, Any]:
    row = await payments_db.get(ctx.db, payment_id, None if is_admin else user_id)
    if row is None:
        raise NotFound("no such payment")
    return payment_json(row)


async def pay(ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None) -> PaymentResponse:
    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        # Answered here without queueing behind the order's actor: a repeat of a
        # request still in flight gets 409 at once, a finished one its first answer.
        record = await idempotency_db.find(ctx.db, user_id, idempotency_key)
        if record is not None:
            return _replay(record, fingerprint)

    async def command(actor: OrderActor) -> PaymentResponse:
        return await _pay_in_actor(ctx, user_id, request, idempotency_key, fingerprint)

    return await ctx.supervisor.ask(request.order_id, command)


def _replay(record: asyncpg.Record, fingerprint: bytes) -> PaymentResponse:
    if record["request_hash"] != fingerprint:
        raise ValidationFailed.field("Idempotency-Key", "this key was used with a different request body")
    if record["payment_id"] is None:
        return PaymentResponse(record["response_status"], orjson.loads(record["response_body"]), is_problem=True)
    if record["payment_status"] == "pending":
        raise Conflict("a request with this Idempotency-Key is still in flight")
    return _response_for(payment_json(record, prefix="payment_"))


async def _pay_in_actor(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> PaymentResponse:
    started = await _begin(ctx, user_id, request, idempotency_key, fingerprint)
    if isinstance(started, PaymentResponse):
        return started
    payment = started
    result = await _charge(ctx, payment, request.token)
    if result is None:
        ctx.metrics.payments.labels("unknown").inc()
        log.warning("payment outcome unknown; left to reconciliation", extra={"payment_id": payment["id"]})
        return _response_for(payment_json(payment))
    return _response_for(await _settle(ctx, payment["id"], result))


class _InFlight(Conflict):
    """Another payment of the order is in flight: transient, so never stored as the
    answer to an Idempotency-Key (the key stays free for a retry)."""


async def _begin(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes
) -> asyncpg.Record | PaymentResponse:
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
    if idempotency_key is None:
        try:
            return await begin(ctx.db)
        except Exception as exc:
            raise await _refused(ctx, request, exc) from None
    refusal: Exception | None = None
    async with ctx.db.transaction() as conn:
        if not await idempotency_db.claim(conn, user_id, idempotency_key, fingerprint):
            record = await idempotency_db.find(conn, user_id, idempotency_key)
            assert record is not None
            return _replay(record, fingerprint)
        try:
            payment = await begin(conn)
        except Exception as exc:
            refusal = exc
            error = _refusal(exc)
            if isinstance(error, _InFlight):
                raise error from None  # rolls the claim back: the key stays free
            await idempotency_db.store_response(conn, user_id, idempotency_key, error.status, dumps(error.body()))
        else:
            await idempotency_db.attach_payment(conn, user_id, idempotency_key, payment["id"])
    if refusal is not None:
        raise await _refused(ctx, request, refusal)
    return payment


async def _refused(ctx: Context, request: PaymentRequest, exc: Exception) -> ApiError:
    """The API error for a refused step 1, once its transaction is over; an order
    found past its expiry is expired on the way."""
    if isinstance(exc, orders_db.Expired) and await orders_db.expire_one(ctx.db, request.order_id):
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
        await _refund(ctx, payment_id, row["provider_ref"])
    return payment_json(row)


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
