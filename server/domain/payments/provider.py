"""The payment provider interface, shaped like a real gateway's (Stripe-like).

A charge names an amount in minor units and a currency, carries a provider-side
idempotency key (the same key never charges twice, and lets us ask later what
became of a charge whose answer was lost) and a reference back to our payment. A
refund names the charge it gives money back on and an amount (part of it, or all),
with an idempotency key of its own.

Lookups are final: when the provider answers that no charge (or refund) was made
with a key, it also makes sure none ever will be (a call still on its way, from a
process that died or gave up waiting, is refused). So reconciliation can settle a
payment or refund as soon as it knows its process is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
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


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: Literal["succeeded", "declined"]
    provider_ref: str
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RefundRequest:
    idempotency_key: str
    charge_ref: str
    amount: int
    currency: str
    reference: str


@dataclass(frozen=True, slots=True)
class RefundResult:
    status: Literal["succeeded", "failed"]
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
        """What became of the charge with this key; None if the provider never made
        it (and now never will)."""

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund (part of) a succeeded charge once per idempotency key; repeating a
        key returns the first result."""

    async def lookup_refund(self, idempotency_key: str) -> RefundResult | None:
        """What became of the refund with this key; None if the provider never made
        it (and now never will)."""

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
