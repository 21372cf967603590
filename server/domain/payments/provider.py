"""The payment provider interface, shaped like a real gateway's (Stripe-like).

A charge names an amount in minor units and a currency, carries a provider-side
idempotency key (the same key never charges twice, and lets us ask later what
became of a charge whose answer was lost) and a reference back to our payment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str
    amount: int
    currency: str
    token: str
    reference: str


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: Literal["succeeded", "declined"]
    provider_ref: str
    failure_reason: str | None = None


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered with an error: the outcome of
    the call is unknown (ask `lookup` later)."""


class PaymentProvider(Protocol):
    name: str

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge once per idempotency key; repeating a key returns the first result."""

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        """What became of the charge with this key; None if the provider never made it."""

    async def refund(self, provider_ref: str, idempotency_key: str) -> str:
        """Refund a succeeded charge in full; returns the refund's reference."""

    async def close(self) -> None: ...
