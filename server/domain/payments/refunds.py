"""Refunding a payment: money goes back at most once, never more than was charged,
whatever the concurrency and crashes.

`refund` runs in the order's actor, in the same three steps as a charge
(service.py), and holds no pooled connection while the provider is called:

1. one short transaction locks the payment, decides the amount (`decide`: what is
   left is the amount minus what succeeded and what is in flight), reserves it on
   the payment row (whose CHECK constraint is the ceiling's last guard) and records
   a `pending` refund with a fresh provider-side idempotency key (and claims the
   request's Idempotency-Key, if any);
2. the provider call, bounded by PAYMENT_PROVIDER_TIMEOUT_MS; when its answer is
   lost, the provider is asked with the idempotency key;
3. one short transaction records the outcome, moves the reservation to
   amount_refunded (or gives it back), marks the order refunded when the whole
   amount is back (restocking, if asked), and emits the events.

A refund whose outcome stays unknown is settled by the reconciler, as charges are.

Idempotency-Key handling is shared with payments (idempotency.py); `refund` answers
with a `Result` (SUCCEEDED: refunded, FAILED: refused by the provider, UNKNOWN: left
to reconciliation), which the handler maps to a status.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any, TypeGuard

import asyncpg
import orjson

from db import payments as payments_db
from db import refunds as refunds_db
from db.pool import Executor
from server.domain import order_status
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.events import emit
from server.domain.order_actors import OrderActor
from server.domain.orders import notify_status
from server.domain.payments.idempotency import InFlight, Resource, Result, replay_known, result_for, start_once
from server.domain.payments.provider import ProviderUnavailable, RefundRequest, RefundResult
from server.domain.payments.service import lease_seconds, reconcile_in_actor
from server.runtime.problems import ApiError, Conflict, NotFound, ValidationFailed

log = logging.getLogger(__name__)

_RECONCILE_BATCH = 100


@dataclass(frozen=True)
class NewRefund:
    payment_id: int
    amount: int | None
    reason: str | None
    restock: bool

    def fingerprint(self) -> bytes:
        """What "the same body" means for Idempotency-Key (never equal to a payment's)."""
        canonical = orjson.dumps(
            {
                "refund_of": self.payment_id,
                "amount": self.amount,
                "reason": self.reason,
                "restock": self.restock,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).digest()


def refund_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "payment_id": row["payment_id"],
        "order_id": row["order_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "reason": row["reason"],
        "restock": row["restock"],
        "failure_reason": row["failure_reason"],
        "provider_ref": row["provider_ref"],
        "created_at": row["created_at"],
    }


REFUND = Resource("refund", refund_json)


def decide(payment: asyncpg.Record, requested: int | None, restock: bool) -> int:
    """The rules of a refund, on the locked payment: the amount to refund, or the
    API error that refuses it. What is left is the amount minus what succeeded and
    what is in flight; `restock` goes only with the refund that completes the whole
    amount."""
    if payment["status"] == "pending":
        # Transient: the payment may yet succeed, so the key must stay free for a retry.
        raise InFlight("the payment is still pending; retry once it has settled")
    if payment["status"] != "succeeded":
        raise Conflict(f"the payment is {payment['status']}; only a succeeded payment can be refunded")
    in_flight = payment["amount_refund_pending"]
    left = payment["amount"] - payment["amount_refunded"] - in_flight
    amount = left if requested is None else requested
    if amount > left or left == 0:
        if in_flight:
            # Transient: what is in flight may fail and come back.
            raise InFlight(f"{left} is left to refund while {in_flight} is being refunded; retry when it is settled")
        raise Conflict(f"only {left} is left to refund" if left else "nothing is left to refund")
    if restock and in_flight:
        raise InFlight("restock goes with the refund that completes the whole amount; another refund is in flight")
    if restock and amount < left:
        raise ValidationFailed.field(
            "restock", f"only the refund that completes the whole amount ({left} left) can restock"
        )
    return amount


async def refund(ctx: Context, admin_id: int, request: NewRefund, idempotency_key: str | None) -> Result:
    """Refund the payment (admins only: the route says so). A refusal raises its
    ApiError (and stores nothing for an Idempotency-Key)."""
    fingerprint = request.fingerprint()
    # Answered without queueing behind the order's actor, as for payments.
    replay = await replay_known(ctx, admin_id, idempotency_key, fingerprint, REFUND)
    if replay is not None:
        return replay
    # Before any key is claimed or the order's actor is asked: no such payment is a
    # 404 that stores nothing and waits in no queue.
    payment = await payments_db.get(ctx.db, request.payment_id, None)
    if payment is None:
        raise NotFound("no such payment")

    async def command(actor: OrderActor) -> Result:
        return await _refund_in_actor(ctx, admin_id, request, idempotency_key, fingerprint)

    return await ctx.supervisor.ask(payment["order_id"], command, user_id=admin_id)


async def list_page(
    ctx: Context, principal: Principal, payment_id: int, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A payment's refunds, oldest first (owner or admin; others 404)."""
    owner = None if principal.is_admin else principal.id
    if await payments_db.get(ctx.db, payment_id, owner) is None:
        raise NotFound("no such payment")
    scope = f"refunds:{payment_id}"
    after_id = 0
    if cursor is not None:
        (after_id,) = ctx.cursors.decode(scope, cursor)
    rows = await refunds_db.list_page(ctx.db, payment_id, after_id=after_id, limit=limit)
    next_cursor = ctx.cursors.encode(scope, [rows[limit - 1]["id"]]) if len(rows) > limit else None
    return [refund_json(r) for r in rows[:limit]], next_cursor


async def _refund_in_actor(
    ctx: Context, admin_id: int, request: NewRefund, idempotency_key: str | None, fingerprint: bytes
) -> Result:
    begin = functools.partial(_begin, ctx, admin_id, request)
    started = await start_once(ctx, admin_id, idempotency_key, fingerprint, REFUND, begin, _refusal)
    if isinstance(started, Result):
        return started
    result = await _call_provider(ctx, started)
    if result is None:
        ctx.metrics.refunds.labels("unknown").inc()
        log.warning("refund outcome unknown; left to reconciliation", extra={"refund_id": started["id"]})
        return result_for(refund_json(started))
    return result_for(await _settle(ctx, started["id"], result))


async def _begin(ctx: Context, admin_id: int, request: NewRefund, conn: Executor) -> asyncpg.Record:
    """Step 1, inside the transaction `start_once` opened."""
    payment = await refunds_db.lock_payment(conn, request.payment_id)
    if payment is None:
        raise NotFound("no such payment")
    amount = decide(payment, request.amount, request.restock)
    return await refunds_db.begin(
        conn,
        payment_id=payment["id"],
        amount=amount,
        requested_by=admin_id,
        reason=request.reason,
        restock=request.restock,
        provider_key=f"re_{secrets.token_hex(12)}",
        owner=ctx.liveness.owner,
        lease_seconds=lease_seconds(ctx),
    )


def _refusal(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    raise exc


async def _call_provider(ctx: Context, refund: asyncpg.Record) -> RefundResult | None:
    """Step 2: the provider's answer, or None when it stays unknown for now."""
    timeout = ctx.config.payment_provider_timeout_ms / 1000
    payment = await payments_db.get(ctx.db, refund["payment_id"], None)
    assert payment is not None
    request = RefundRequest(
        idempotency_key=refund["provider_key"],
        charge_ref=payment["provider_ref"],
        amount=refund["amount"],
        currency=refund["currency"],
        reference=str(refund["id"]),
    )
    try:
        async with asyncio.timeout(timeout):
            return await ctx.provider.refund(request)
    except (TimeoutError, ProviderUnavailable) as exc:
        log.warning(
            "provider call failed; looking the refund up", extra={"refund_id": refund["id"], "error": repr(exc)}
        )
    try:
        async with asyncio.timeout(timeout):
            return await ctx.provider.lookup_refund(refund["provider_key"])
    except (TimeoutError, ProviderUnavailable):
        return None


async def _settle(ctx: Context, refund_id: int, result: RefundResult | None) -> dict[str, Any]:
    """Step 3: record the outcome (None: the provider never made the refund), with
    its events, in one transaction."""
    status: str = "failed" if result is None else result.status
    provider_ref = None if result is None else result.provider_ref
    reason = "not_refunded" if result is None else result.failure_reason
    async with ctx.db.transaction() as conn:
        settled = await refunds_db.finish(
            conn,
            refund_id,
            status=status,
            provider_ref=provider_ref,
            failure_reason=reason,
            refundable_statuses=order_status.REFUNDABLE,
        )
        if settled is not None:
            await emit(conn, f"refund.{status}", refund_json(settled.refund))
            if _became_refunded(settled.order):
                await notify_status(conn, settled.order)  # order.refunded
    if settled is None:
        # Settled by someone else meanwhile (a reconciler): report what it recorded.
        row = await refunds_db.get(ctx.db, refund_id)
        assert row is not None
        return refund_json(row)
    ctx.metrics.refunds.labels(status).inc()
    if _became_refunded(settled.order):
        ctx.metrics.order_transition(settled.order["previous_status"], "refunded")
    return refund_json(settled.refund)


def _became_refunded(order: asyncpg.Record | None) -> TypeGuard[asyncpg.Record]:
    return order is not None and order["status"] == "refunded" and order["previous_status"] != "refunded"


async def reconcile(ctx: Context) -> int:
    """Settle pending refunds whose process is gone or whose lease ran out, by
    asking the provider. Returns how many were settled."""
    settled = 0
    claimed = await refunds_db.claim_stale(
        ctx.db, batch=_RECONCILE_BATCH, lease_seconds=lease_seconds(ctx), owner=ctx.liveness.owner
    )
    for refund_row in claimed:
        settled += await _reconcile_one(ctx, refund_row)
    return settled


async def _reconcile_one(ctx: Context, refund_row: asyncpg.Record) -> int:
    return await reconcile_in_actor(ctx, "refund", refund_row, ctx.provider.lookup_refund, _settle)
