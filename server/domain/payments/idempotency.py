"""Idempotency-Key semantics for the requests that move money (payments, refunds):
one implementation, so both behave alike.

- The same key and the same request: the first answer again (the same outcome, the
  same payment or refund, in its current state), and nothing moves again.
- The same key with another request: refused ('key_reused'). While the first is in
  flight: refused ('key_in_flight').
- A refusal (the order is not the caller's, not pending, the amount is wrong, ...)
  starts nothing and stores nothing: the claim of the key rolls back with it, so a
  repeat is judged afresh and refused requests cost no storage.

The key is claimed in the transaction of step 1 (which records the pending payment
or refund), so the claim and the work it names commit, or roll back, together: one
statement (sql/functions/idempotency.sql).

The domain answers with a `Result` (what became of the request, and the payment or
refund); the handler maps outcomes to HTTP statuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import asyncpg

from db import idempotency as idempotency_db
from db.idempotency import Claim, Kind
from db.refusals import Refusal
from server.domain.context import Context


class Outcome(Enum):
    """How a payment or refund request ended, as far as this request knows."""

    # The provider charged (a payment) or gave the money back (a refund).
    SUCCEEDED = "succeeded"
    # The provider declined or refused: the failed payment or refund, nothing moved.
    FAILED = "failed"
    # The provider's answer was lost: the payment or refund stays pending until reconciled.
    UNKNOWN = "unknown"
    # The payment waits for its customer (3-D Secure): the outcome comes later.
    ACTION = "requires_action"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    # The payment or refund (its row).
    row: asyncpg.Record


_OUTCOMES = {
    "succeeded": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED,
    "pending": Outcome.UNKNOWN,
    "requires_action": Outcome.ACTION,
}


def result_for(row: asyncpg.Record) -> Result:
    """The result a payment or refund in this state answers."""
    return Result(_OUTCOMES[row["status"]], row)


async def replay_known(ctx: Context, user_id: int, key: str | None, fingerprint: bytes, kind: Kind) -> Result | None:
    """The result to replay for a key already used, or None. Called before queueing
    behind the order's actor: a repeat of a request still in flight is refused at
    once, a finished one gets its first answer."""
    if key is None:
        return None
    record = await idempotency_db.find(ctx.db, user_id, key)
    return None if record is None else _replay(record, fingerprint, kind)


def _replay(record: asyncpg.Record, fingerprint: bytes, kind: Kind) -> Result:
    if record["request_hash"] != fingerprint:
        raise Refusal("key_reused")
    # The same fingerprint is the same kind of request (a refund's never equals a payment's).
    started: asyncpg.Record = record[kind]
    if started["status"] == "pending":
        raise Refusal("key_in_flight")
    return result_for(started)


async def begin_once(
    ctx: Context,
    user_id: int,
    key: str | None,
    fingerprint: bytes,
    kind: Kind,
    begin: Callable[[Claim | None], Awaitable[asyncpg.Record | None]],
) -> asyncpg.Record | Result:
    """Step 1 of a payment or refund, once per key: `begin` (one statement) records the
    pending payment or refund and, given the key's claim, claims the key and names
    what it started in the same transaction (None when the key was taken already).
    Returns what `begin` recorded, or the result to replay. A refusal keeps no record."""
    if key is None:
        started = await begin(None)
        assert started is not None  # only a claim can find its key taken
        return started
    while (started := await begin(Claim(key, fingerprint))) is None:
        record = await idempotency_db.find(ctx.db, user_id, key)
        if record is not None:
            return _replay(record, fingerprint, kind)
        # Gone between the two statements (purged past its TTL): judged afresh.
    return started
