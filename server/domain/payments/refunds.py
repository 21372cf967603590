"""Refunding a payment: money goes back at most once, never more than was charged,
whatever the concurrency and crashes.

`refund` runs in the order's actor, in the three steps of a charge (service.py), and
holds no pooled connection while the provider is called:

1. `begin_refund` (one statement) locks the payment, applies the refund rules (what
   is left is the amount minus what succeeded and what is in flight; `restock` only on
   the refund that completes it: sql/functions/refunds.sql), reserves the amount on the
   payment row (whose CHECK constraint is the ceiling's last guard) and records a
   `pending` refund with a fresh provider-side idempotency key (claiming the request's
   Idempotency-Key in the same statement, if any: `begin_refund_once`);
2. the provider call, bounded by PAYMENT_PROVIDER_TIMEOUT_MS, looked up when its
   answer is lost (provider.call_or_look_up);
3. `settle_refund` (one statement) records the outcome, moves the reservation to
   amount_refunded (or gives it back), marks the order refunded when the whole amount
   is back (restocking, if asked), and writes the events.

A refund whose outcome stays unknown is settled by the reconciler, as charges are.
A provider refusing a refund for its amount (the charge has less left than asked, as
when it was refunded outside the service) is a refusal (409), its failed refund kept.
A refund the provider reports failed after it had succeeded (an event) is undone
(`undo`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

import asyncpg
import orjson

from db import payments as payments_db
from db import refunds as refunds_db
from db.idempotency import Claim
from db.refusals import Refusal
from server.domain import order_status
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.pages import keyset_page
from server.domain.payments.idempotency import Outcome, Result, begin_once, replay_known, result_for
from server.domain.payments.provider import RefundRequest, RefundResult, call_or_look_up
from server.domain.payments.service import each_at_once, lease_seconds, provider_timeout, reconcile_in_actor

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


async def refund(ctx: Context, admin_id: int, request: NewRefund, idempotency_key: str | None) -> Result:
    """Refund the payment (admins only: the route says so). A refusal is raised (and
    stores nothing for an Idempotency-Key)."""
    fingerprint = request.fingerprint()
    # Answered without queueing behind the order's actor, as for payments.
    replay = await replay_known(ctx, admin_id, idempotency_key, fingerprint, "refund")
    if replay is not None:
        return _refused_for_amount(replay)
    # Before any key is claimed or the order's actor is asked: no such payment is
    # refused, stores nothing and waits in no queue.
    payment = await payments_db.get(ctx.db, request.payment_id, None)
    if payment is None:
        raise Refusal("payment_not_found")
    if payment["provider"] != ctx.provider.name:
        # Made through another provider than the one configured now: only that one
        # can give its money back.
        raise Refusal("payment_of_another_provider", provider=payment["provider"])

    async def command(actor: OrderActor) -> Result:
        return await _refund_in_actor(ctx, admin_id, request, idempotency_key, fingerprint, payment["provider_ref"])

    return _refused_for_amount(await ctx.supervisor.ask(payment["order_id"], command, user_id=admin_id))


# The provider's codes for a refund refused because the charge has less left than asked.
REFUSED_FOR_AMOUNT = frozenset({"amount_too_large", "charge_already_refunded"})


def _refused_for_amount(result: Result) -> Result:
    row = result.row
    if result.outcome is Outcome.FAILED and row["failure_reason"] in REFUSED_FOR_AMOUNT:
        raise Refusal("provider_refused_amount", reason=row["failure_reason"], refund_id=row["id"])
    return result


async def page(
    ctx: Context, principal: Principal, payment_id: int, *, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """A payment's refunds, oldest first (its owner or an admin; others: not found)."""
    if await payments_db.get(ctx.db, payment_id, principal.scope) is None:
        raise Refusal("payment_not_found")

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await refunds_db.page(ctx.db, payment_id, after_id=None if after is None else after[0], limit=limit)

    return await keyset_page(ctx, f"refunds:{payment_id}", cursor, limit, fetch)


async def _refund_in_actor(
    ctx: Context, admin_id: int, request: NewRefund, idempotency_key: str | None, fingerprint: bytes, charge_ref: str
) -> Result:
    worker, lease = ctx.liveness.worker, lease_seconds(ctx)
    provider_key = f"re_{secrets.token_hex(12)}"

    async def begin(claim: Claim | None) -> asyncpg.Record | None:
        return await refunds_db.begin(
            ctx.db,
            payment_id=request.payment_id,
            requested_by=admin_id,
            amount=request.amount,
            reason=request.reason,
            restock=request.restock,
            provider_key=provider_key,
            worker=worker,
            lease_seconds=lease,
            claim=claim,
        )

    started = await begin_once(ctx, admin_id, idempotency_key, fingerprint, "refund", begin)
    if isinstance(started, Result):
        return started
    refund_request = _request(started, charge_ref)
    result = await call_or_look_up(
        provider_timeout(ctx),
        lambda: ctx.provider.refund(refund_request),
        lambda: ctx.provider.lookup_refund(refund_request),
        {"refund_id": started["id"], "order_id": started["order_id"]},
    )
    if result is None:
        ctx.metrics.refunds.labels("unknown").inc()
        log.warning("refund outcome unknown; left to reconciliation", extra={"refund_id": started["id"]})
        return result_for(started)
    return result_for(await settle(ctx, started["id"], result))


def _request(refund: asyncpg.Record, charge_ref: str) -> RefundRequest:
    """The refund a refunds row sends (and a lookup sends again)."""
    return RefundRequest(
        idempotency_key=refund["provider_key"],
        charge_ref=charge_ref,
        amount=refund["amount"],
        currency=refund["currency"],
        reference=str(refund["id"]),
        metadata=(("refund_id", str(refund["id"])), ("order_id", str(refund["order_id"]))),
    )


async def _look_up(ctx: Context, refund: asyncpg.Record) -> RefundResult | None:
    payment = await payments_db.get(ctx.db, refund["payment_id"], None)
    assert payment is not None
    return await ctx.provider.lookup_refund(_request(refund, payment["provider_ref"]))


async def undo(ctx: Context, refund_id: int, failure_reason: str | None) -> asyncpg.Record | None:
    """A succeeded refund the provider reports failed afterwards: undone on the payment
    and the order (an order that became refunded goes back to its status before), with
    refund.failed. None when it was not succeeded (nothing changed)."""
    undone = await refunds_db.fail(ctx.db, refund_id, failure_reason=failure_reason)
    if undone is None:
        return None
    ctx.metrics.refunds.labels("failed_later").inc()
    if undone["restored_status"] is not None:
        ctx.metrics.order_transition("refunded", undone["restored_status"])
    log.warning(
        "a refund failed at the provider after it had succeeded; undone",
        extra={"refund_id": refund_id, "order_id": undone["order_id"], "reason": failure_reason},
    )
    return undone


async def settle(ctx: Context, refund_id: int, result: RefundResult | None) -> asyncpg.Record:
    """Step 3, in the order's actor: record the outcome (None: the provider never made
    the refund), with its events, in one statement."""
    status: str = "failed" if result is None else result.status
    settled = await refunds_db.settle(
        ctx.db,
        refund_id,
        status=status,
        provider_ref=None if result is None else result.provider_ref,
        failure_reason="not_refunded" if result is None else result.failure_reason,
        refundable_statuses=order_status.REFUNDABLE,
    )
    if settled is None:
        # Settled by someone else meanwhile (a reconciler): report what it recorded.
        row = await refunds_db.get(ctx.db, refund_id)
        assert row is not None
        return row
    ctx.metrics.refunds.labels(status).inc()
    if settled["became_refunded"]:
        ctx.metrics.order_transition(settled["previous_status"], "refunded")
    return settled


async def reconcile(ctx: Context) -> int:
    """Settle pending refunds whose worker is gone or whose lease ran out, by asking the
    provider. Returns how many were settled."""
    settled = 0
    claimed = await refunds_db.claim_stale(
        ctx.db,
        batch=_RECONCILE_BATCH,
        lease_seconds=lease_seconds(ctx),
        worker=ctx.liveness.worker,
        provider=ctx.provider.name,
    )
    settled += await each_at_once(
        claimed, lambda row: reconcile_in_actor(ctx, "refund", row, _look_up, settle, refunds_db.release_claim)
    )
    return settled
