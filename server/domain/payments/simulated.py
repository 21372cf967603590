"""The built-in simulated provider (the default).

Test cards: `tok_visa` succeeds, `tok_chargeDeclined` is declined as card_declined,
any other token is declined as invalid_token. Each call takes
PAYMENT_PROVIDER_LATENCY_MS, half before the charge is recorded and half after (the
answer travelling back), so that a process killed mid-call may leave a charge the
provider made but the service never heard of: what reconciliation is for.

The ledger is a table of its own in the database, written through a pool of its
own: it stands for the gateway's records, which a crash of the service cannot
erase. Fault modes (PAYMENT_PROVIDER_FAULT, for tests): `error` fails a call before
anything is charged; `timeout` charges, then never answers.
"""

from __future__ import annotations

import asyncio
import random
import secrets

from db import simulated_provider as ledger
from db.pool import Database
from server.domain.payments.provider import ChargeRequest, ChargeResult, ProviderUnavailable

_DECISIONS: dict[str, tuple[str, str | None]] = {
    "tok_visa": ("succeeded", None),
    "tok_chargeDeclined": ("declined", "card_declined"),
}
_UNKNOWN_TOKEN = ("declined", "invalid_token")


class SimulatedProvider:
    name = "simulated"

    def __init__(self, db: Database, *, latency_ms: int, fault: str = "none", fault_rate: float = 0.0) -> None:
        self._db = db
        self.latency_ms = latency_ms
        self.fault = fault
        self.fault_rate = fault_rate
        self._random = random.Random()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        fault = self.fault if self.fault != "none" and self._random.random() < self.fault_rate else None
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
        )
        if fault == "timeout":
            await asyncio.Event().wait()  # charged, but the answer never comes
        await self._travel()
        return ChargeResult(row["status"], row["reference"], row["failure_reason"])

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        row = await ledger.lookup(self._db, idempotency_key)
        return None if row is None else ChargeResult(row["status"], row["reference"], row["failure_reason"])

    async def refund(self, provider_ref: str, idempotency_key: str) -> str:
        reference = await ledger.refund(self._db, provider_ref, f"sim_re_{secrets.token_hex(8)}")
        if reference is None:
            raise ProviderUnavailable(f"no succeeded charge {provider_ref} to refund")
        return reference

    async def close(self) -> None:
        await self._db.close(timeout=5)

    async def _travel(self) -> None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 2000)
