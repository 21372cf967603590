"""Payments: pay an order, read a payment."""

from __future__ import annotations

import re

from aiohttp import web

from handlers.common import context, location, path_id, principal, read_json
from handlers.routing import RequestHeader, Response, Route, id_links
from handlers.schemas import IDEMPOTENCY_KEY_PATTERN, PaymentCreateIn, PaymentOut
from server.domain.payments import service as payments
from server.runtime.jsonio import json_response
from server.runtime.problems import ValidationFailed

# The document publishes the same pattern this check uses.
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
# A charge is 201, a decline 402 (the failed payment in the body), a lost answer 202.
_STATUS = {payments.Outcome.CHARGED: 201, payments.Outcome.DECLINED: 402, payments.Outcome.UNKNOWN: 202}


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed.field("Idempotency-Key", "must be 1..255 printable ASCII characters")
    return key


async def create_payment(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    key = _idempotency_key(request)
    body = await read_json(request, PaymentCreateIn)
    payment_request = payments.PaymentRequest(body.order_id, body.payment_method.token, body.amount)
    result = await payments.pay(ctx, caller.id, payment_request, key)
    status = _STATUS[result.outcome]
    headers = location(request, "get_payment", result.payment["id"]) if status in (201, 202) else None
    return json_response(result.payment, status=status, headers=headers)


async def get_payment(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    payment = await payments.get(ctx, path_id(request), caller.id, caller.is_admin)
    return json_response(payment)


ROUTES = [
    Route(
        "POST", "/api/payments", create_payment, "Pay an order (the order total, once)", "payments",
        auth="user",
        body=PaymentCreateIn,
        request_headers={
            "Idempotency-Key": RequestHeader(
                "Repeat a request safely: the same key and body replay the first answer (kept at least 24 h, per user)",
                IDEMPOTENCY_KEY_PATTERN,
            ),
        },
        responses={
            201: Response("Charged; the order is now paid", PaymentOut, ("Location",), links=id_links("get_payment")),
            202: Response(
                "The provider's answer was lost; the payment stays pending until reconciled "
                "(poll GET /api/payments/{id})",
                PaymentOut,
                ("Location",),
            ),
            402: Response("Declined by the provider: the failed payment; the order stays pending", PaymentOut),
        },
        problems={
            404: "No such order, or not the caller's",
            409: "The order is not pending (already paid, cancelled, expired), a payment for it is in "
            "progress, a request with this Idempotency-Key is still in flight, or the order's payments were "
            "declined PAYMENT_MAX_DECLINES_PER_ORDER times (named in `limit`)",
            429: "PAYMENT_MAX_DECLINES_PER_USER declined payments in 24 hours, or too many of the caller's "
            "requests in progress (see Retry-After)",
            503: "Too many commands queued for this order, or shutting down (see Retry-After)",
        },
    ),
    Route(
        "GET", "/api/payments/{id}", get_payment, "One payment (owner or admin)", "payments",
        auth="user",
        responses={200: Response("The payment", PaymentOut)},
        problems={404: "No such payment, or not the caller's"},
    ),
]  # fmt: skip
