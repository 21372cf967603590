"""Payments: pay an order, read a payment, refund it and list its refunds."""

from __future__ import annotations

import re

from aiohttp import web

from handlers.common import client_ip, context, location, page_response, parse_query, path_id, principal, read_json
from handlers.routing import RequestHeader, Response, Route, id_links
from handlers.schemas import IDEMPOTENCY_KEY_PATTERN, Page, PageQuery, PaymentCreateIn, RefundCreateIn
from server.domain.payments import provider_events, refunds
from server.domain.payments import service as payments
from server.domain.payments.idempotency import Outcome, Result
from server.domain.shapes import PaymentOut, ProviderEventAck, RefundOut, Shape, render
from server.runtime.jsonio import json_response
from server.runtime.problems import ValidationFailed

# The document publishes the same pattern this check uses.
_IDEMPOTENCY_KEY_FORM = re.compile(IDEMPOTENCY_KEY_PATTERN)
# For payments and refunds alike: a success is 201, a failure 402 (the failed payment
# or refund in the body), a lost answer 202.
_STATUS = {Outcome.SUCCEEDED: 201, Outcome.FAILED: 402, Outcome.UNKNOWN: 202, Outcome.ACTION: 202}


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY_FORM.fullmatch(key):
        raise ValidationFailed.field("Idempotency-Key", "must be 1..255 printable ASCII characters")
    return key


async def create_payment(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    key = _idempotency_key(request)
    body = await read_json(request, PaymentCreateIn)
    payment_request = payments.PaymentRequest(body.order_id, body.payment_method.token, body.amount)
    result = await payments.pay(ctx, caller.id, payment_request, key, client_ip(request, ctx.config))
    headers = None
    if result.outcome is not Outcome.FAILED:
        headers = location(request, "get_payment", result.row["id"])
    return _answer(PaymentOut, result, headers)


def _answer(shape: type[Shape], result: Result, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(render(shape, result.row), status=_STATUS[result.outcome], headers=headers)


async def get_payment(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    return json_response(render(PaymentOut, await payments.get(ctx, caller, path_id(request))))


async def create_refund(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    payment_id = path_id(request)
    key = _idempotency_key(request)
    body = await read_json(request, RefundCreateIn)
    new_refund = refunds.NewRefund(payment_id, body.amount, body.reason, body.restock)
    return _answer(RefundOut, await refunds.refund(ctx, caller.id, new_refund, key))


async def list_refunds(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    payment_id = path_id(request)
    query = parse_query(request, PageQuery)
    return page_response(RefundOut, await refunds.page(ctx, caller, payment_id, cursor=query.cursor, limit=query.limit))


async def provider_webhook(request: web.Request) -> web.Response:
    """Stripe's events: the raw body and its Stripe-Signature header (no bearer token:
    the signature is the authentication). 200 once handled (or known, or of a type not
    used); a refusal of the signature is 400 and changes nothing."""
    payload = await request.read()
    handled = await provider_events.receive(context(request), payload, request.headers.get("Stripe-Signature"))
    return json_response({"received": True, "outcome": handled})


_IDEMPOTENCY_KEY = {
    "Idempotency-Key": RequestHeader(
        "Repeat a request safely: the same key and body replay the first answer (kept at least 24 h, per user)",
        IDEMPOTENCY_KEY_PATTERN,
    ),
}

ROUTES = [
    Route(
        "POST", "/api/payments", create_payment, "Pay an order (the order total, once)", "payments",
        auth="user",
        body=PaymentCreateIn,
        request_headers=_IDEMPOTENCY_KEY,
        responses={
            201: Response(
                "Charged; the order is now paid",
                PaymentOut,
                ("Location",),
                links=id_links("get_payment", "create_refund", "list_refunds"),
            ),
            202: Response(
                "The provider's answer was lost; the payment stays pending until reconciled "
                "(poll GET /api/payments/{id}). Or (Stripe) the customer must finish the payment (3-D Secure): "
                "status requires_action with client_secret and next_action; the order stays pending",
                PaymentOut,
                ("Location",),
            ),
            402: Response("Declined by the provider: the failed payment; the order stays pending", PaymentOut),
        },
        problems={
            404: "No such order, or not the caller's",
            409: "The order is not pending (already paid, cancelled, expired; also when its payment that waited "
            "for the customer turned out to have succeeded), a payment for it is in "
            "progress, a request with this Idempotency-Key is still in flight, or the order's payments were "
            "declined PAYMENT_MAX_DECLINES_PER_ORDER times (named in `limit`)",
            422: "The request failed validation (see `errors`), the amount is not the order total, or the total "
            "is below the provider's minimum charge for its currency (nothing sent)",
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
    Route(
        "POST", "/api/payments/{id}/refunds", create_refund,
        "Refund a succeeded payment, in full or in part (admin)", "payments",
        auth="admin",
        body=RefundCreateIn,
        request_headers=_IDEMPOTENCY_KEY,
        responses={
            201: Response(
                "Refunded; once the refunds reach the whole amount the order is `refunded` (and restocked, "
                "if asked)",
                RefundOut,
            ),
            202: Response(
                "The provider's answer was lost; the refund stays pending until reconciled "
                "(see GET /api/payments/{id}/refunds)",
                RefundOut,
            ),
            402: Response("The provider refused the refund: the failed refund; nothing changed", RefundOut),
        },
        problems={
            404: "No such payment",
            409: "The payment did not succeed, the amount is more than is left to refund (also when the "
            "provider refuses it for its amount), another refund "
            "of it is in flight, or a request with this Idempotency-Key is still in flight",
            422: "The request failed validation (see `errors`), `restock` on a refund that does not complete "
            "the whole amount, or an Idempotency-Key used with another body",
            429: "Too many of the caller's requests in progress (see Retry-After)",
            503: "Too many commands queued for this order, or shutting down (see Retry-After)",
        },
    ),
    Route(
        "GET", "/api/payments/{id}/refunds", list_refunds, "A payment's refunds, oldest first (owner or admin)",
        "payments",
        auth="user",
        query=PageQuery,
        responses={200: Response("A page of refunds", Page[RefundOut])},
        problems={404: "No such payment, or not the caller's"},
    ),
    Route(
        "POST", "/api/payments/stripe/webhook", provider_webhook,
        "Stripe's events (signed with STRIPE_WEBHOOK_SECRET; no bearer token)", "payments",
        auth="none",
        responses={200: Response("Recorded (or a redelivery, or a type not used)", ProviderEventAck)},
        problems={
            400: "The Stripe-Signature header is missing, wrong or older than 5 minutes: nothing changed",
            404: "The payment provider in use is not Stripe",
            503: "Too many commands queued for the order, or shutting down (Stripe delivers it again)",
        },
    ),
]  # fmt: skip
