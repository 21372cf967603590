"""Idempotency-Key semantics for the requests that move money (payments, refunds):
one implementation, so both behave alike.

- The same key and the same request: the first answer again (the same outcome, the
  same payment or refund, in its current state), and nothing moves again.
- The same key with another request: 422. While the first is in flight: 409.
- A refusal (the order is not the caller's, not pending, the amount is wrong, ...)
  starts nothing and stores nothing: the claim of the key rolls back with it, so a
  repeat is judged afresh and refused requests cost no storage.

The key is claimed in the transaction of step 1 (which records the pending payment
or refund), so the claim and the work it names commit, or roll back, together.

The domain answers with a `Result` (what became of the request, and the resource);
the handler maps outcomes to HTTP statuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncpg

from db import idempotency as idempotency_db
from db.idempotency import Kind
from db.pool import Executor
from server.domain.context import Context
from server.runtime.problems import ApiError, Conflict, ValidationFailed


class Outcome(Enum):
    """How a payment or refund request ended, as far as this request knows."""

    # The provider charged (a payment) or gave the money back (a refund).
    SUCCEEDED = "succeeded"
    # The provider declined or refused: the failed payment or refund, nothing moved.
    FAILED = "failed"
    # The provider's answer was lost: the payment or refund stays pending until reconciled.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    # The payment or refund, as the API shows it.
    resource: dict[str, Any]


_OUTCOMES = {"succeeded": Outcome.SUCCEEDED, "failed": Outcome.FAILED, "pending": Outcome.UNKNOWN}


def result_for(resource: dict[str, Any]) -> Result:
    """The result a payment or refund in this state answers."""
    return Result(_OUTCOMES[resource["status"]], resource)


class InFlight(Conflict):
    """Other work on the same payment or order is in flight: retry once it is settled."""


@dataclass(frozen=True)
class Resource:
    """What a kind of request starts: its name in the records, and its representation."""

    kind: Kind
    to_json: Callable[[asyncpg.Record], dict[str, Any]]


async def replay_known(
    ctx: Context, user_id: int, key: str | None, fingerprint: bytes, resource: Resource
) -> Result | None:
    """The result to replay for a key already used, or None. Called before queueing
    behind the order's actor: a repeat of a request still in flight gets 409 at
    once, a finished one its first answer."""
    if key is None:
        return None
    record = await idempotency_db.find(ctx.db, user_id, key)
    return None if record is None else _replay(record, fingerprint, resource)


def _replay(record: asyncpg.Record, fingerprint: bytes, resource: Resource) -> Result:
    if record["request_hash"] != fingerprint:
        raise ValidationFailed.field("Idempotency-Key", "this key was used with a different request body")
    # The same fingerprint is the same kind of request (a refund's never equals a payment's).
    started = record[resource.kind]
    assert started is not None
    if started["status"] == "pending":
        raise Conflict("a request with this Idempotency-Key is still in flight")
    return result_for(resource.to_json(started))


async def start_once(
    ctx: Context,
    user_id: int,
    key: str | None,
    fingerprint: bytes,
    resource: Resource,
    start: Callable[[Executor], Awaitable[asyncpg.Record]],
    refusal: Callable[[Exception], ApiError],
    *,
    one_statement: bool = False,
) -> asyncpg.Record | Result:
    """Step 1 of a payment or refund, once per key: `start` records the pending
    payment or refund in the transaction that claims the key. Returns what `start`
    recorded, or the result to replay. When `start` raises, `refusal` turns the
    exception into the API error (or raises it again when it is no refusal), raised
    with the original exception as its __cause__ once the claim has rolled back.
    `one_statement`: `start` is a single statement, so without a key it runs on the
    pool with no transaction around it (a statement is a transaction of its own: the
    BEGIN and COMMIT would be two round trips for nothing)."""
    try:
        if key is None:
            if one_statement:
                return await start(ctx.db)
            async with ctx.db.transaction() as conn:
                return await start(conn)
        async with ctx.db.transaction() as conn:
            if not await idempotency_db.claim(conn, user_id, key, fingerprint):
                record = await idempotency_db.find(conn, user_id, key)
                assert record is not None
                return _replay(record, fingerprint, resource)
            started = await start(conn)
            await idempotency_db.attach(conn, user_id, key, resource.kind, started["id"])
            return started
    except ApiError:
        raise
    except Exception as exc:
        raise refusal(exc) from exc
