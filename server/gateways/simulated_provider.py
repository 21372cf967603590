"""The built-in simulated provider (the default).

Test cards: `tok_visa` succeeds, `tok_chargeDeclined` is declined as card_declined,
`tok_refundFail` succeeds but every refund of it fails (refund_failed), any other
token is declined as invalid_token. Each call takes PAYMENT_PROVIDER_LATENCY_MS,
half before the charge (or refund) is recorded and half after (the answer
travelling back), so that a process killed mid-call may leave a charge the provider
made but the service never heard of: what reconciliation is for.

The ledger is a pair of tables in the database, written through a pool of its own:
it stands for the gateway's records, which a crash of the service cannot erase.
Fault modes (PAYMENT_PROVIDER_FAULT, for tests): `error` fails a call before
anything is charged or refunded; `timeout` charges (or refunds), then never answers.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Mapping

import asyncpg

from db import simulated_provider as ledger
from db.pool import Database
from server.domain.payments.provider import (
    ChargeRequest,
    ChargeResult,
    InvalidEvent,
    ProviderEvent,
    ProviderUnavailable,
    RefundRequest,
    RefundResult,
)

_DECISIONS: dict[str, tuple[str, str | None]] = {
    "tok_visa": ("succeeded", None),
    "tok_refundFail": ("succeeded", None),
    "tok_chargeDeclined": ("declined", "card_declined"),
}
_UNKNOWN_TOKEN = ("declined", "invalid_token")
_UNREFUNDABLE = frozenset({"tok_refundFail"})


def _charge_result(row: asyncpg.Record) -> ChargeResult:
    if row["status"] == "voided":
        # The key was voided by a lookup before this call arrived: nothing charged.
        return ChargeResult("declined", row["reference"], "voided")
    return ChargeResult(row["status"], row["reference"], row["failure_reason"])


def _refund_result(row: asyncpg.Record) -> RefundResult:
    if row["status"] == "voided":
        return RefundResult("failed", row["reference"], "voided")
    return RefundResult(row["status"], row["reference"], row["failure_reason"])


class SimulatedProvider:
    name = "simulated"
    minimum_amounts: Mapping[str, int] = {}
    # Every outcome is in its answers: no events, no charge waits for a customer.
    sends_events = False

    def __init__(self, db: Database, *, latency_ms: int, fault: str = "none", fault_rate: float = 0.0) -> None:
        self._db = db
        self.latency_ms = latency_ms
        self.fault = fault
        self.fault_rate = fault_rate
        self._random = random.Random()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        fault = self._fault()
        await self._travel()
        if fault == "error":
            raise ProviderUnavailable("simulated provider error")
        status, reason = _DECISIONS.get(request.token, _UNKNOWN_TOKEN)
        row = await ledger.record_charge(
            self._db,
            key=request.idempotency_key,
            reference=f"sim_ch_{secrets.token_hex(8)}",
            amount=request.amount,
            currency=request.currency,
            status=status,
            failure_reason=reason,
            refundable=request.token not in _UNREFUNDABLE,
        )
        if fault == "timeout":
            await asyncio.Event().wait()  # charged, but the answer never comes
        await self._travel()
        return _charge_result(row)

    def call_seconds(self, timeout: float) -> float:
        return timeout

    async def lookup(self, request: ChargeRequest) -> ChargeResult | None:
        row = await ledger.lookup_charge(self._db, request.idempotency_key)
        return None if row is None else _charge_result(row)

    async def refund(self, request: RefundRequest) -> RefundResult:
        fault = self._fault()
        await self._travel()
        if fault == "error":
            raise ProviderUnavailable("simulated provider error")
        row = await ledger.record_refund(
            self._db,
            key=request.idempotency_key,
            reference=f"sim_re_{secrets.token_hex(8)}",
            charge_reference=request.charge_ref,
            amount=request.amount,
        )
        if fault == "timeout":
            await asyncio.Event().wait()
        await self._travel()
        return _refund_result(row)

    async def lookup_refund(self, request: RefundRequest) -> RefundResult | None:
        row = await ledger.lookup_refund(self._db, request.idempotency_key)
        return None if row is None else _refund_result(row)

    async def cancel(self, provider_ref: str, idempotency_key: str) -> ChargeResult:
        raise ProviderUnavailable("the simulated provider has no charges waiting for a customer")

    def verify_event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        raise InvalidEvent("the simulated provider sends no events")

    async def close(self) -> None:
        await self._db.close(timeout=5)

    def _fault(self) -> str | None:
        return self.fault if self.fault != "none" and self._random.random() < self.fault_rate else None

    async def _travel(self) -> None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 2000)
