"""Events the payment provider sends on its own (Stripe's webhooks): the outcome of a
payment that waited for its customer or whose answer was lost, and refunds that
failed after they had succeeded.

An event is believed only with a valid signature (the provider's `verify_event`:
missing, wrong or stale is refused and changes nothing). Each is handled once: every
change is made only from the state it expects (a payment still in flight, a refund
still pending or succeeded), so an event that finds its payment or refund as it says
already changes nothing (one read: most events, as the call's own answer came first);
one that changes something is recorded by id once handled, and its redelivery is
answered at once. The change runs in the order's actor, like any other command of the
order, and is one statement. Types not used are answered without any read.
"""

from __future__ import annotations

import logging
from typing import Literal

from db import payments as payments_db
from db import provider_events as events_db
from db import refunds as refunds_db
from db.refusals import Refusal
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.payments import refunds
from server.domain.payments import service as payments
from server.domain.payments.provider import InvalidEvent, ProviderEvent

log = logging.getLogger(__name__)

Handled = Literal["handled", "duplicate", "unchanged", "ignored", "mismatched"]


class _Mismatched(Exception):
    """A signed event whose charge is not for its payment's amount and currency."""


async def receive(ctx: Context, payload: bytes, signature: str | None) -> Handled:
    """Check and handle one webhook. Raises Refusal('provider_event_invalid') for a
    body whose signature does not hold (nothing changes)."""
    if not ctx.provider.sends_events:
        raise Refusal("provider_events_off")
    try:
        event = ctx.provider.verify_event(payload, signature)
    except InvalidEvent as invalid:
        ctx.metrics.provider_events.labels("rejected").inc()
        log.warning("provider event refused", extra={"reason": str(invalid)})
        raise Refusal("provider_event_invalid") from None
    ctx.metrics.provider_events.labels("received").inc()
    if event.charge is None and event.refund is None:
        # A type we do not use (most of what Stripe sends): nothing read or written.
        ctx.metrics.provider_events.labels("ignored").inc()
        return "ignored"
    try:
        order_id = await _order_to_change(ctx, event)
    except _Mismatched:
        # Signed by the provider but not for what we asked it to charge (a bug, or a
        # leaked signing secret): nothing changes; an operator is told. Answered 2xx:
        # the provider's redelivery would change nothing either.
        ctx.metrics.provider_events.labels("mismatched").inc()
        log.error(
            "provider event's amount is not its payment's",
            extra={
                "event": event.id,
                "payment_id": event.payment_id,
                "amount": event.amount,
                "currency": event.currency,
            },
        )
        return "mismatched"
    if order_id is None:
        # Settled as the event says already (by the call's own answer, usually), or not
        # ours: one read, nothing written.
        ctx.metrics.provider_events.labels("unchanged").inc()
        return "unchanged"
    if await events_db.seen(ctx.db, event.id):
        ctx.metrics.provider_events.labels("duplicate").inc()
        return "duplicate"

    async def command(actor: OrderActor) -> None:
        await _apply(ctx, event)

    await ctx.supervisor.ask(order_id, command)
    await events_db.record(ctx.db, event.id, event.type)
    ctx.metrics.provider_events.labels("handled").inc()
    return "handled"


async def _order_to_change(ctx: Context, event: ProviderEvent) -> int | None:
    """The order whose payment or refund the event may change; None when it changes
    nothing (not ours, or settled as the event says already: no actor is asked).
    Raises _Mismatched for a charge not of its payment's amount (which never changes,
    so it is checked here, outside the actor)."""
    if event.charge is not None and event.payment_id is not None:
        payment = await payments_db.get(ctx.db, event.payment_id, None)
        if payment is None or payment["provider"] != ctx.provider.name:
            return None
        if payment["status"] not in ("pending", "requires_action"):
            return None
        if not _for_the_payments_amount(event, payment["amount"], payment["currency"]):
            raise _Mismatched
        order_id: int = payment["order_id"]
        return order_id
    if event.refund is not None and event.refund_id is not None:
        refund = await refunds_db.get(ctx.db, event.refund_id)
        if refund is None or refund["status"] == "failed":
            return None
        if refund["status"] == "succeeded" and event.refund.status == "succeeded":
            return None
        order_id = refund["order_id"]
        return order_id
    return None


def _for_the_payments_amount(event: ProviderEvent, amount: int, currency: str) -> bool:
    """Whether the event's charge is for the payment's amount and currency (an event
    that does not say is taken as it is; the currency's case is the provider's)."""
    if event.amount is not None and event.amount != amount:
        return False
    return event.currency is None or event.currency.lower() == currency.lower()


async def _apply(ctx: Context, event: ProviderEvent) -> None:
    if event.charge is not None and event.payment_id is not None:
        payment = await payments_db.get(ctx.db, event.payment_id, None)
        assert payment is not None
        if payment["status"] not in ("pending", "requires_action"):
            return  # settled already: by its answer, a lookup or an earlier event
        if payment["provider_ref"] not in (None, event.provider_ref):
            log.error("provider event names another PaymentIntent", extra={"payment_id": payment["id"]})
            return
        settled = await payments.settle(ctx, payment["id"], event.charge)
        log.info(
            "payment settled by a provider event", extra={"payment_id": payment["id"], "status": settled["status"]}
        )
        return
    if event.refund is not None and event.refund_id is not None:
        refund = await refunds_db.get(ctx.db, event.refund_id)
        assert refund is not None
        if refund["status"] == "pending":
            await refunds.settle(ctx, refund["id"], event.refund)
        elif refund["status"] == "succeeded" and event.refund.status == "failed":
            await refunds.undo(ctx, refund["id"], event.refund.failure_reason)
