"""The Stripe provider (PAYMENT_PROVIDER=stripe), on Stripe's official SDK.

Calls go through the SDK's async client on an aiohttp session, so the event loop
never waits on the network, at the API version the SDK pins. They are made with the
client's `raw_request_async` and its answers read as the JSON they are: the typed
services (`client.v1.payment_intents...`) send the same request, and raise the same
errors, but turn each answer into StripeObjects, which took as much CPU as the rest of
the call (0.67 against 0.37 ms a PaymentIntent, measured at the client, in
docs/performance.md). Every call that moves money carries our idempotency key (the
payment's or refund's `provider_key`), so a repeated call is answered from Stripe's
record of the first one and never makes a second PaymentIntent, charge or refund.

- A charge is one PaymentIntent, created and confirmed in one call: the order's total
  and currency, cards only and never a redirect (`automatic_payment_methods` with
  `allow_redirects=never`: the pinned API version refuses `payment_method_types`),
  metadata `order_id` and `payment_id`. A `pm_...` token is a PaymentMethod, a `tok_...`
  one a card token. Succeeded: succeeded; a `card_error`: declined with Stripe's code;
  a payment method Stripe does not know: declined as `invalid_token`;
  `requires_action` (3-D Secure): waits for the customer, with `client_secret` and
  `next_action`.
- A refund is a Stripe Refund of the PaymentIntent, metadata naming our refund.
  Stripe refusing for the amount (`amount_too_large`, `charge_already_refunded`): failed
  with that code (the domain answers 409).
- Faults: an answer of 5xx, 429 or 409 (the key in use), a refused or cut connection,
  or none within the timeout is tried again with the same key, at most `ATTEMPTS`
  times with backoff; then ProviderUnavailable (the outcome is unknown). The SDK's own
  retries are off: these are ours, bounded, with our keys, and 429 included.
- Lookups replay the request with its key: Stripe answers from its record of the
  first call (it keeps keys 24 hours), or carries the call out now if it never
  arrived; either way the answer is final and one PaymentIntent (or refund) exists
  at most.
- Webhooks: `verify_event` checks the `Stripe-Signature` header with the SDK
  (`WebhookSignature.verify_header`, 5-minute tolerance) on the raw body.

The API key and the webhook secret are never logged: errors are logged by type,
code and request id only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import stripe

from server.domain.payments.provider import (
    ChargeRequest,
    ChargeResult,
    InvalidEvent,
    ProviderEvent,
    ProviderUnavailable,
    RefundRequest,
    RefundResult,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Tries of one call (the first and the retries), and the backoff between them.
ATTEMPTS = 3
_BACKOFF_SECONDS = 0.25
_BACKOFF_MAX_SECONDS = 2.0
WEBHOOK_TOLERANCE_SECONDS = 300
# Stripe's smallest charge per currency, in minor units (Stripe's "minimum and maximum
# charge amounts"); a currency not named here is left to Stripe.
MINIMUM_AMOUNTS: Mapping[str, int] = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500,
    "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000,
    "myr": 200, "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}  # fmt: skip
# Stripe refusing a refund for its amount: the charge has less left than asked.
REFUSED_FOR_AMOUNT = frozenset({"amount_too_large", "charge_already_refunded"})
_CHARGE_EVENTS = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"})
_REFUND_EVENTS = frozenset({"refund.updated", "refund.failed"})

# (operation, outcome) -> counted; the composition root passes the metric's recorder.
Record = Callable[[str, str], None]


class StripeProvider:
    name = "stripe"
    minimum_amounts = MINIMUM_AMOUNTS
    sends_events = True

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        api_base: str,
        timeout: float,
        record: Record | None = None,
    ) -> None:
        self._webhook_secret = webhook_secret
        self._timeout = timeout
        self._record = record or (lambda operation, outcome: None)
        self._client, self._http = make_client(api_key, api_base, timeout)

    def call_seconds(self, timeout: float) -> float:
        return ATTEMPTS * timeout + (ATTEMPTS - 1) * _BACKOFF_MAX_SECONDS

    # --- charges ----------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "confirm": True,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "metadata": {"order_id": str(request.order_id), "payment_id": request.reference},
        }
        if request.token.startswith("tok_"):
            params["payment_method_data"] = {"type": "card", "card": {"token": request.token}}
        else:
            params["payment_method"] = request.token
        try:
            intent = await self._call(
                "create_payment_intent",
                lambda: self._request("post", "/v1/payment_intents", params, request.idempotency_key),
            )
        except stripe.CardError as error:
            return ChargeResult("declined", _intent_id_of(error), error.code or "card_declined")
        except stripe.InvalidRequestError as error:
            if error.code == "resource_missing":
                return ChargeResult("declined", None, "invalid_token")
            log.error("Stripe refused a charge", extra=_about(error))
            return ChargeResult("declined", _intent_id_of(error), error.code or "invalid_request")
        return _charge_result(intent)

    async def lookup(self, request: ChargeRequest) -> ChargeResult | None:
        # The same request under the same key: Stripe's record of it, or it now.
        return await self.charge(request)

    async def cancel(self, provider_ref: str, idempotency_key: str) -> ChargeResult:
        try:
            intent = await self._call(
                "cancel_payment_intent",
                lambda: self._request("post", f"{_intent_path(provider_ref)}/cancel", {}, idempotency_key),
            )
        except stripe.InvalidRequestError as error:
            if error.code != "payment_intent_unexpected_state":
                raise ProviderUnavailable(f"Stripe refused to cancel: {error.code}") from None
            # Succeeded (or cancelled) meanwhile: what it is now.
            intent = await self._call(
                "retrieve_payment_intent", lambda: self._request("get", _intent_path(provider_ref), {}, None)
            )
        return _charge_result(intent)

    # --- refunds ----------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundResult:
        params: dict[str, Any] = {
            "payment_intent": request.charge_ref,
            "amount": request.amount,
            "metadata": dict(request.metadata),
        }
        try:
            refund = await self._call(
                "create_refund", lambda: self._request("post", "/v1/refunds", params, request.idempotency_key)
            )
        except stripe.InvalidRequestError as error:
            if error.code not in REFUSED_FOR_AMOUNT:
                log.error("Stripe refused a refund", extra=_about(error))
            return RefundResult("failed", None, error.code or "refund_refused")
        return _refund_result(refund["id"], refund["status"], refund.get("failure_reason"))

    async def lookup_refund(self, request: RefundRequest) -> RefundResult | None:
        return await self.refund(request)

    # --- events -----------------------------------------------------------------------

    def verify_event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        if not signature:
            raise InvalidEvent("no Stripe-Signature header")
        try:
            text = payload.decode()
            stripe.WebhookSignature.verify_header(
                text, signature, self._webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
            event = orjson.loads(text)
            event_id, event_type, obj = event["id"], event["type"], event["data"]["object"]
        except (stripe.SignatureVerificationError, UnicodeDecodeError, orjson.JSONDecodeError) as error:
            raise InvalidEvent(str(error)) from None
        except (KeyError, TypeError):
            raise InvalidEvent("not a Stripe event") from None
        return _event(str(event_id), str(event_type), obj)

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # --- the call discipline ------------------------------------------------------------

    async def _request(
        self, method: str, path: str, params: Mapping[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        """One call to Stripe's API (`params` form-encoded by the SDK); the answer's JSON
        object. Stripe's refusals raise the SDK's errors."""
        options = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        response = await self._client.raw_request_async(method, path, **params, **options)
        answer: dict[str, Any] = response.data
        return answer

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` (which carries its idempotency key), tried up to ATTEMPTS times while
        its outcome is unknown (5xx, 429, 409, no connection, no answer in time)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with asyncio.timeout(self._timeout):
                    result = await call()
                self._record(operation, "ok")
                return result
            except stripe.CardError:
                self._record(operation, "card_error")
                raise
            except stripe.InvalidRequestError:
                self._record(operation, "invalid_request")
                raise
            except TimeoutError:
                outcome = "timeout"
            except stripe.RateLimitError:
                outcome = "rate_limited"
            except stripe.APIConnectionError:
                outcome = "connection_error"
            except stripe.APIError as error:
                outcome = "server_error" if (error.http_status or 500) >= 500 else "conflict"
            except stripe.StripeError as error:
                # Authentication, permission, a key used with other parameters: nothing
                # is retried; the outcome stays unknown (and an operator is needed).
                self._record(operation, "error")
                log.error("Stripe call failed", extra={"operation": operation, **_about(error)})
                raise ProviderUnavailable(type(error).__name__) from None
            self._record(operation, outcome)
            if attempt < ATTEMPTS:
                delay = min(_BACKOFF_SECONDS * 2 ** (attempt - 1), _BACKOFF_MAX_SECONDS)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        log.warning("Stripe call unanswered; its outcome is unknown", extra={"operation": operation})
        raise ProviderUnavailable(f"{operation}: {outcome}")


def make_client(api_key: str, api_base: str, timeout: float) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    """The SDK's async client on aiohttp, with no retries of its own (_call retries,
    with our keys), and its HTTP client (to close). Each try is bounded by `timeout`
    (asyncio.timeout in _call); aiohttp's own bound is only a backstop."""
    http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout + 1))
    client = stripe.StripeClient(
        api_key, base_addresses={"api": api_base.rstrip("/")}, http_client=http, max_network_retries=0
    )
    return client, http


def _intent_path(provider_ref: str) -> str:
    return f"/v1/payment_intents/{quote(provider_ref, safe='')}"


def _charge_result(intent: dict[str, Any]) -> ChargeResult:
    status, intent_id = intent["status"], intent["id"]
    if status == "succeeded":
        return ChargeResult("succeeded", intent_id)
    if status == "requires_action":
        return ChargeResult(
            "requires_action",
            intent_id,
            client_secret=intent.get("client_secret"),
            next_action=intent.get("next_action"),
        )
    if status == "canceled":
        return ChargeResult("declined", intent_id, "canceled")
    if status == "requires_payment_method":
        error = intent.get("last_payment_error") or {}
        return ChargeResult("declined", intent_id, error.get("code") or "payment_failed")
    # processing, requires_confirmation, requires_capture: not settled yet.
    raise ProviderUnavailable(f"PaymentIntent {intent_id} is {status}")


def _refund_result(refund_id: str | None, status: str | None, failure_reason: str | None) -> RefundResult:
    if status in ("failed", "canceled"):
        return RefundResult("failed", refund_id, failure_reason or status)
    # succeeded, or pending / requires_action on its way: Stripe has the money moving;
    # a later failure comes as an event (refund.failed) and undoes it.
    return RefundResult("succeeded", refund_id)


def _intent_id_of(error: stripe.StripeError) -> str | None:
    body = error.json_body if isinstance(error.json_body, dict) else {}
    intent = body.get("error", {}).get("payment_intent")
    return intent.get("id") if isinstance(intent, dict) else None


def _about(error: stripe.StripeError) -> dict[str, Any]:
    return {"error": type(error).__name__, "code": error.code, "status": error.http_status, "request": error.request_id}


def _number(metadata: Any, name: str) -> int | None:
    value = metadata.get(name) if isinstance(metadata, dict) else None
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _event(event_id: str, event_type: str, obj: Any) -> ProviderEvent:
    if not isinstance(obj, dict):
        return ProviderEvent(event_id, event_type)
    metadata = obj.get("metadata")
    if event_type in _CHARGE_EVENTS and obj.get("object") == "payment_intent":
        intent_id = str(obj.get("id"))
        if event_type == "payment_intent.succeeded":
            charge = ChargeResult("succeeded", intent_id)
        elif event_type == "payment_intent.canceled":
            charge = ChargeResult("declined", intent_id, "canceled")
        else:
            error = obj.get("last_payment_error") or {}
            charge = ChargeResult("declined", intent_id, error.get("code") or "payment_failed")
        amount, currency = obj.get("amount"), obj.get("currency")
        return ProviderEvent(
            event_id,
            event_type,
            provider_ref=intent_id,
            payment_id=_number(metadata, "payment_id"),
            charge=charge,
            amount=amount if isinstance(amount, int) else None,
            currency=currency if isinstance(currency, str) else None,
        )
    if event_type in _REFUND_EVENTS and obj.get("object") == "refund":
        refund_id = str(obj.get("id"))
        result = _refund_result(refund_id, obj.get("status"), obj.get("failure_reason"))
        return ProviderEvent(
            event_id, event_type, provider_ref=refund_id, refund_id=_number(metadata, "refund_id"), refund=result
        )
    return ProviderEvent(event_id, event_type)
