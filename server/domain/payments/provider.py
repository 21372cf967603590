"""The payment provider interface, shaped like a real gateway's (Stripe-like).

A charge names an amount in minor units and a currency, carries a provider-side
idempotency key (the same key never charges twice, and lets us ask later what
became of a charge whose answer was lost) and a reference back to our payment. A
refund names the charge it gives money back on and an amount (part of it, or all),
with an idempotency key of its own.

Lookups are final: a lookup is asked with the very request that was sent (the same
idempotency key). The provider answers what became of it, or None when no charge (or
refund) was made with that key, and then it also makes sure none ever will be (a call
still on its way, from a process that died or gave up waiting, is refused); a provider
that remembers requests by key (Stripe) may instead carry the request out once and
answer that. So reconciliation can settle a payment or refund as soon as it knows its
process is gone.

A charge may also wait for its customer (`requires_action`: 3-D Secure), with what
the customer's app needs to finish it; its outcome comes later, as a provider event
(`verify_event`) or by cancelling it (`cancel`, which answers the outcome it had
reached if it can no longer be cancelled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str
    amount: int
    currency: str
    token: str
    reference: str
    order_id: int = 0


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: Literal["succeeded", "declined", "requires_action"]
    provider_ref: str | None
    failure_reason: str | None = None
    # requires_action: what the customer's app needs to finish the payment.
    client_secret: str | None = None
    next_action: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RefundRequest:
    idempotency_key: str
    charge_ref: str
    amount: int
    currency: str
    reference: str
    # What the provider keeps with the refund, to name it back in its events
    # (("refund_id", "12"),), or for a charge refunded for no order (("payment_id", ...)).
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RefundResult:
    status: Literal["succeeded", "failed"]
    provider_ref: str | None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """What the provider told us on its own (a webhook), checked and in our words: the
    outcome of a charge (`charge` set, the payment named by `payment_id`) or of a refund
    (`refund` set, named by `refund_id`), or a type we do not use (neither set)."""

    id: str
    type: str
    provider_ref: str | None = None
    payment_id: int | None = None
    refund_id: int | None = None
    charge: ChargeResult | None = None
    refund: RefundResult | None = None
    # What the provider says the charge was for (minor units, lower-case ISO code), when
    # it says: checked against the payment before the event may settle it.
    amount: int | None = None
    currency: str | None = None


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered with an error: the outcome of
    the call is unknown (ask `lookup` later)."""


class InvalidEvent(Exception):
    """An inbound provider event whose signature is missing, wrong or stale, or that
    cannot be read: nothing of it is believed."""


class PaymentProvider(Protocol):
    name: str
    # The smallest amount the provider charges, by currency (lower case); a currency not
    # named has none.
    minimum_amounts: Mapping[str, int]
    # Whether the provider sends events (`verify_event`).
    sends_events: bool

    def call_seconds(self, timeout: float) -> float:
        """How long one call may take in all, its own retries included, when each
        attempt may take `timeout` seconds."""

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge once per idempotency key; repeating a key returns the first result."""

    async def lookup(self, request: ChargeRequest) -> ChargeResult | None:
        """What became of the charge sent as `request` (its idempotency key); None if
        the provider never made it (and now never will)."""

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund (part of) a succeeded charge once per idempotency key; repeating a
        key returns the first result."""

    async def lookup_refund(self, request: RefundRequest) -> RefundResult | None:
        """What became of the refund sent as `request`; None if the provider never
        made it (and now never will)."""

    async def cancel(self, provider_ref: str, idempotency_key: str) -> ChargeResult:
        """Cancel a charge waiting for its customer: declined ('canceled'), or the
        outcome it reached meanwhile (succeeded, declined)."""

    def verify_event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """The event of a webhook's raw body, its signature checked; raises
        InvalidEvent."""

    async def close(self) -> None: ...


async def bounded(timeout: float, call: Callable[[], Awaitable[R]]) -> tuple[bool, R | None]:
    """`call` of the provider within `timeout` seconds: (True, its answer), or (False,
    None) when it failed or did not answer in time (the outcome is unknown)."""
    try:
        async with asyncio.timeout(timeout):
            return True, await call()
    except (TimeoutError, ProviderUnavailable):
        return False, None


async def call_or_look_up(
    timeout: float, call: Callable[[], Awaitable[R]], look_up: Callable[[], Awaitable[R | None]], about: dict[str, Any]
) -> R | None:
    """The provider's answer to `call` (a charge or a refund, with its idempotency key)
    or, when that answer is lost, to `look_up` of the same key; None when it stays
    unknown for now (or the provider never made it: the reconciler settles it)."""
    answered, result = await bounded(timeout, call)
    if answered:
        return result
    log.warning("provider call failed; looking it up", extra=about)
    _, found = await bounded(timeout, look_up)
    return found
