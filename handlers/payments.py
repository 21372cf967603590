"""Payments: pay an order, read a payment."""

from __future__ import annotations

import re

from aiohttp import web

from handlers.common import context, path_id, read_json
from handlers.routing import RequestHeader, Response, Route, id_links
from handlers.schemas import IDEMPOTENCY_KEY_PATTERN, PaymentCreateIn, PaymentOut
from server import accounts
from server.errors import PROBLEM_CONTENT_TYPE, ValidationFailed
from server.jsonio import json_response
from server.payments import service as payments

# The document publishes the same pattern this check uses.
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed.field("Idempotency-Key", "must be 1..255 printable ASCII characters")
    return key


async def create_payment(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    key = _idempotency_key(request)
    body = await read_json(request, PaymentCreateIn)
    payment_request = payments.PaymentRequest(body.order_id, body.payment_method.token, body.amount)
    response = await payments.pay(ctx, principal.id, payment_request, key)
    if response.is_problem:
        return json_response(response.body, status=response.status, content_type=PROBLEM_CONTENT_TYPE)
    headers = {"Location": f"/api/payments/{response.body['id']}"} if response.status in (201, 202) else None
    return json_response(response.body, status=response.status, headers=headers)


async def get_payment(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    payment = await payments.get(ctx, path_id(request), principal.id, principal.is_admin)
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
            "progress, or a request with this Idempotency-Key is still in flight",
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
