"""Paying an order: exactly one charge, whatever the concurrency, crashes included.

`pay` runs in the order's actor, in three steps, and holds no pooled connection
while the provider is called:

1. `begin_payment` (one statement) locks the customer and the order, checks the
   decline limits, that the order is pending (and the amount), and records a
   `pending` payment with a fresh provider-side idempotency key (claiming the
   request's Idempotency-Key in the same statement, if any: `begin_payment_once`);
2. the provider call, bounded by PAYMENT_PROVIDER_TIMEOUT_MS; when its answer is
   lost, the provider is asked with the idempotency key (provider.call_or_look_up);
3. `settle_payment` (one statement) records the outcome, on success marks the order
   paid, and writes the events (payment.succeeded and order.paid, or payment.failed).

A payment whose outcome stays unknown keeps its `pending` row until the reconciler
asks the provider and settles it: at once when the worker that made it is gone
(its liveness lock is free, see server/runtime/liveness.py), else when its lease
runs out (the provider did not answer, or the worker lost its lock). Meanwhile
the pending row blocks any other payment of the order (a partial unique index), as
well as cancelling, changing, deleting and expiring it.

A provider may answer that the charge waits for its customer (3-D Secure): step 3
then records the payment as `requires_action` (202, with what the customer's app
needs); it still blocks a second payment of the order, but not the order's end. Its
outcome comes later: a provider event (provider_events.py), or cancelling it, which
answers the outcome it reached if too late. A new payment of the order first cancels
it; the reconciler cancels those of orders that ended (expired, cancelled) meanwhile.

Refunds (refunds.py) take the same three steps; both share the Idempotency-Key
handling (idempotency.py), the provider's call discipline (provider.py) and
reconciliation (`reconcile_in_actor`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import orjson

from db import payments as payments_db
from db.idempotency import Claim
from db.pool import Database, Executor
from db.refusals import Refusal
from server.domain import orders
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.payments.idempotency import Result, begin_once, replay_known, result_for
from server.domain.payments.provider import ChargeRequest, ChargeResult, RefundRequest, bounded, call_or_look_up

log = logging.getLogger(__name__)

_RECONCILE_BATCH = 100
_RECONCILE_AT_ONCE = 16
# How soon a payment or refund whose reconciliation found the provider unreachable is
# asked about again (by any worker's next round after it).
_UNANSWERED_RETRY_SECONDS = 2.0
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


def provider_timeout(ctx: Context) -> float:
    """How long one call of the provider may take, its own retries included (each try
    within PAYMENT_PROVIDER_TIMEOUT_MS)."""
    return ctx.provider.call_seconds(ctx.config.payment_provider_timeout_ms / 1000)


def lease_seconds(ctx: Context) -> float:
    """How long a payment's (or refund's) own worker may take to settle it (the call
    and one lookup, each bounded by the provider timeout) before the reconciler may."""
    return 2 * provider_timeout(ctx) + 5


def charge_request(payment: asyncpg.Record) -> ChargeRequest:
    """The charge a payment sends (and a lookup sends again)."""
    return ChargeRequest(
        idempotency_key=payment["provider_key"],
        amount=payment["amount"],
        currency=payment["currency"],
        token=payment["payment_method"] or "",
        reference=str(payment["id"]),
        order_id=payment["order_id"],
    )


async def get(ctx: Context, principal: Principal, payment_id: int) -> asyncpg.Record:
    """A payment the caller may see (its owner, or an admin)."""
    row = await payments_db.get(ctx.db, payment_id, principal.scope)
    if row is None:
        raise Refusal("payment_not_found")
    return row


async def pay(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, client_ip: str
) -> Result:
    """Pay the order once (a request from `client_ip`). A refusal is raised (and
    stores nothing for an Idempotency-Key)."""
    fingerprint = request.fingerprint()
    # Answered without queueing behind the order's actor: a repeat of a request
    # still in flight is refused at once, a finished one gets its first answer.
    replay = await replay_known(ctx, user_id, idempotency_key, fingerprint, "payment")
    if replay is not None:
        return replay
    # Before any key is claimed or the order's actor is asked: someone else's order
    # (or none) is refused, stores nothing and waits in no queue; so is a total below
    # the provider's smallest charge (nothing is sent).
    order = await payments_db.payable(ctx.db, request.order_id)
    if order is None or order["user_id"] != user_id:
        raise Refusal("order_not_found")
    minimum = ctx.provider.minimum_amounts.get(order["currency"].lower())
    if order["status"] == "pending" and minimum is not None and order["total"] < minimum:
        raise Refusal("amount_below_minimum", minimum=minimum, currency=order["currency"])
    waiting = bool(order["waiting"])

    async def command(actor: OrderActor) -> Result:
        if waiting:
            await _end_waiting_payment(ctx, request.order_id)
        return await _pay_in_actor(ctx, user_id, request, idempotency_key, fingerprint, client_ip)

    return await ctx.supervisor.ask(request.order_id, command, user_id=user_id)


async def _pay_in_actor(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes, client_ip: str
) -> Result:
    started = await _begin(ctx, user_id, request, idempotency_key, fingerprint, client_ip)
    if isinstance(started, Result):
        return started
    payment = started
    charge = charge_request(payment)
    result = await call_or_look_up(
        provider_timeout(ctx),
        lambda: ctx.provider.charge(charge),
        lambda: ctx.provider.lookup(charge),
        {"payment_id": payment["id"]},
    )
    if result is None:
        ctx.metrics.payments.labels("unknown").inc()
        log.warning("payment outcome unknown; left to reconciliation", extra={"payment_id": payment["id"]})
        return result_for(payment)
    return result_for(await settle(ctx, payment["id"], result))


async def _end_waiting_payment(ctx: Context, order_id: int) -> None:
    """Before a new payment of the order: its payment waiting for the customer (read
    again in the order's actor), if any,
    is cancelled at the provider and settled with the outcome (failed; or succeeded if
    the customer finished it meanwhile, and then step 1 refuses: the order is paid)."""
    waiting = await payments_db.waiting(ctx.db, order_id)
    if waiting is not None:
        await _cancel_waiting(ctx, waiting, refuse=True)


async def _cancel_waiting(ctx: Context, payment: asyncpg.Record, *, refuse: bool) -> None:
    answered, result = await bounded(
        provider_timeout(ctx),
        lambda: ctx.provider.cancel(payment["provider_ref"], f"{payment['provider_key']}-cancel"),
    )
    if not answered or result is None:
        log.warning("cancelling a waiting payment failed; retried later", extra={"payment_id": payment["id"]})
        if refuse:
            raise Refusal("payment_in_flight")
        return
    await settle(ctx, payment["id"], result)


async def _begin(
    ctx: Context, user_id: int, request: PaymentRequest, idempotency_key: str | None, fingerprint: bytes, client_ip: str
) -> asyncpg.Record | Result:
    """Step 1. Returns the pending payment, or the result to replay; raises the
    refusal when the order cannot be paid (an order found past its expiry is expired
    on the way, once step 1's transaction is over)."""
    config, worker, lease = ctx.config, ctx.liveness.worker, lease_seconds(ctx)
    provider_key = f"pay_{secrets.token_hex(12)}"

    async def begin(claim: Claim | None) -> asyncpg.Record | None:
        return await payments_db.begin(
            ctx.db,
            order_id=request.order_id,
            user_id=user_id,
            amount=request.amount,
            provider=ctx.provider.name,
            provider_key=provider_key,
            lease_seconds=lease,
            worker=worker,
            max_declines_per_order=config.payment_max_declines_per_order,
            max_declines_per_user=config.payment_max_declines_per_user,
            client_ip=client_ip,
            max_declines_per_ip=config.payment_max_declines_per_ip,
            payment_method=request.token,
            claim=claim,
        )

    try:
        return await begin_once(ctx, user_id, idempotency_key, fingerprint, "payment", begin)
    except Refusal as refusal:
        if refusal.code == "order_expired":
            await orders.expire(ctx.db, ctx.metrics, request.order_id)
        raise


async def record_outcome(db: Executor, payment_id: int, result: ChargeResult | None) -> asyncpg.Record | None:
    """Step 3's statement for the provider's answer (None: the provider never made the
    charge): the payment as settled, or None when something else settled it first."""
    secret = next_action = None
    if result is None:
        status, provider_ref, reason = "failed", None, "not_charged"
    elif result.status == "succeeded":
        status, provider_ref, reason = "succeeded", result.provider_ref, None
    elif result.status == "requires_action":
        status, provider_ref, reason = "requires_action", result.provider_ref, None
        secret = result.client_secret
        next_action = None if result.next_action is None else orjson.dumps(result.next_action).decode()
    else:
        status, provider_ref, reason = "failed", result.provider_ref, result.failure_reason
    return await payments_db.settle(
        db,
        payment_id,
        status=status,
        provider_ref=provider_ref,
        failure_reason=reason,
        client_secret=secret,
        next_action=next_action,
    )


async def settle(ctx: Context, payment_id: int, result: ChargeResult | None) -> asyncpg.Record:
    """Step 3, in the order's actor: record the outcome (None: the provider never made
    the charge)."""
    row = await record_outcome(ctx.db, payment_id, result)
    if row is None:
        # Settled by someone else meanwhile (a reconciler): report what it recorded.
        current = await payments_db.get(ctx.db, payment_id, None)
        assert current is not None
        return current
    outcome = "refunded" if row["refund_due"] else ("declined" if row["status"] == "failed" else row["status"])
    ctx.metrics.payments.labels(outcome).inc()
    if row["status"] == "succeeded":
        ctx.metrics.order_transition("pending", "paid")
    if row["refund_due"]:
        await _refund_unpayable(ctx, row)
    return row


async def _refund_unpayable(ctx: Context, payment: asyncpg.Record) -> None:
    """Give back a charge that succeeded for an order that could no longer be paid."""
    request = RefundRequest(
        idempotency_key=f"refund_{payment['id']}",
        charge_ref=payment["provider_ref"],
        amount=payment["amount"],
        currency=payment["currency"],
        reference=str(payment["id"]),
        metadata=(("payment_id", str(payment["id"])), ("order_id", str(payment["order_id"]))),
    )
    answered, result = await bounded(provider_timeout(ctx), lambda: ctx.provider.refund(request))
    if not answered or result is None:
        log.warning("refund failed; it will be retried", extra={"payment_id": payment["id"]})
        return
    if result.status != "succeeded":
        # The same key gives the same answer: this charge needs an operator.
        log.error("the provider refused to refund a charge kept for no order", extra={"payment_id": payment["id"]})
        return
    await payments_db.set_refunded(ctx.db, payment["id"], result.provider_ref or request.idempotency_key)
    log.warning("charge refunded: the order could no longer be paid", extra={"payment_id": payment["id"]})


async def reconcile(ctx: Context) -> int:
    """Settle pending payments whose worker is gone or whose lease ran out, by asking
    the provider; cancel the waiting payments of orders that ended; retry refunds that
    are due. Returns how many payments were settled."""
    settled = 0
    claimed = await payments_db.claim_stale(
        ctx.db,
        batch=_RECONCILE_BATCH,
        lease_seconds=lease_seconds(ctx),
        worker=ctx.liveness.worker,
        provider=ctx.provider.name,
    )
    settled += await each_at_once(
        claimed, lambda row: reconcile_in_actor(ctx, "payment", row, _look_up, settle, payments_db.release_claim)
    )
    if ctx.provider.sends_events:
        abandoned = await payments_db.claim_abandoned(
            ctx.db,
            batch=_RECONCILE_BATCH,
            lease_seconds=lease_seconds(ctx),
            worker=ctx.liveness.worker,
            provider=ctx.provider.name,
        )
        settled += await each_at_once(abandoned, lambda row: _cancel_in_actor(ctx, row))
    for due in await payments_db.refunds_due(ctx.db, _RECONCILE_BATCH, ctx.provider.name):
        await _refund_unpayable(ctx, due)
    return settled


async def each_at_once(rows: list[asyncpg.Record], settle: Callable[[asyncpg.Record], Awaitable[int]]) -> int:
    """`settle` each claimed row, _RECONCILE_AT_ONCE at a time (each in its own order's
    actor): a provider that takes its time is asked about many at once, not one after
    another. Returns the sum of what they answered."""
    gate = asyncio.Semaphore(_RECONCILE_AT_ONCE)

    async def one(row: asyncpg.Record) -> int:
        async with gate:
            return await settle(row)

    return sum(await asyncio.gather(*(one(row) for row in rows)))


async def _look_up(ctx: Context, payment: asyncpg.Record) -> ChargeResult | None:
    return await ctx.provider.lookup(charge_request(payment))


async def _cancel_in_actor(ctx: Context, payment: asyncpg.Record) -> int:
    """The PaymentIntent of a payment still waiting for its customer when its order
    ended: cancelled, and the payment settled with the outcome, in the order's actor."""

    async def command(actor: OrderActor) -> None:
        await _cancel_waiting(ctx, payment, refuse=False)
        ctx.metrics.reconciliations.labels("payment", "cancelled").inc()
        log.info("waiting payment of an ended order cancelled", extra={"payment_id": payment["id"]})

    try:
        await ctx.supervisor.ask(payment["order_id"], command)
    except Refusal:
        return 0
    return 1


async def reconcile_in_actor(
    ctx: Context,
    kind: str,
    row: asyncpg.Record,
    lookup: Callable[[Context, asyncpg.Record], Awaitable[R | None]],
    settle: Callable[[Context, int, R | None], Awaitable[asyncpg.Record]],
    release: Callable[[Database, int, int | None, float], Awaitable[None]],
) -> int:
    """Ask the provider what became of one pending payment or refund (`kind`, its
    claimed `row`, asked about with the request it sent) and settle it, in its order's
    actor. Returns 1 once the command ran (a provider still unreachable: the claim is
    given back with `release`, due again in _UNANSWERED_RETRY_SECONDS), 0 when the actor could not
    take it (busy, or shutting down: the lease brings the row back)."""
    ids = {f"{kind}_id": row["id"], "order_id": row["order_id"]}

    async def command(actor: OrderActor) -> None:
        answered, result = await bounded(provider_timeout(ctx), lambda: lookup(ctx, row))
        if not answered:
            ctx.metrics.reconciliations.labels(kind, "unanswered").inc()
            log.warning("provider unreachable; reconciliation retried later", extra=ids)
            # A lookup is safe to repeat (a read, or the same request under the same
            # key): ask again soon, not when the lease (sized for a call and a lookup
            # with all their retries) runs out.
            await release(ctx.db, row["id"], ctx.liveness.worker, _UNANSWERED_RETRY_SECONDS)
            return
        settled = await settle(ctx, row["id"], result)
        ctx.metrics.reconciliations.labels(kind, "settled").inc()
        log.info(f"{kind} reconciled", extra={**ids, "status": settled["status"]})

    try:
        await ctx.supervisor.ask(row["order_id"], command)
    except Refusal:
        return 0
    return 1
