"""Idempotency-Key semantics for the requests that move money (payments, refunds):
one implementation, so both behave alike.

- The same key and the same request: the first answer again (same status, same
  payment or refund, in its current state), and nothing moves again.
- The same key with another request: 422. While the first is in flight: 409.
- A refusal is stored as the answer too (the same problem document again), except a
  transient one (`InFlight`), which leaves the key free for a retry.

The key is claimed in the transaction of step 1 (which records the pending payment
or refund), so the claim and the work it names commit, or roll back, together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from db import idempotency as idempotency_db
from db.idempotency import Kind
from db.pool import Executor
from server.domain.context import Context
from server.runtime.jsonio import dumps
from server.runtime.problems import ApiError, Conflict, ValidationFailed


@dataclass(frozen=True)
class Outcome:
    """The answer to a payment or refund request."""

    status: int
    body: dict[str, Any]
    # A replayed refusal (a problem document) rather than a payment or refund.
    is_problem: bool = False


def outcome_for(resource: dict[str, Any]) -> Outcome:
    """201 for a success, 402 for a failure (the failed payment or refund in the
    body), 202 while the outcome is still unknown."""
    status = {"succeeded": 201, "failed": 402}.get(resource["status"], 202)
    return Outcome(status, resource)


class InFlight(Conflict):
    """Other work on the same payment or order is in flight: transient, so never
    stored as the answer to an Idempotency-Key (the key stays free for a retry)."""


@dataclass(frozen=True)
class Resource:
    """What a kind of request starts: its name in the records, and its representation."""

    kind: Kind
    to_json: Callable[[asyncpg.Record, str], dict[str, Any]]
    # Step 1 is a single statement: without a key it runs on the pool as it is (one
    # round trip; the pool's connections are the scarce resource under load).
    single_statement: bool = False


async def replay_known(
    ctx: Context, user_id: int, key: str | None, fingerprint: bytes, resource: Resource
) -> Outcome | None:
    """The answer to replay for a key already used, or None. Called before queueing
    behind the order's actor: a repeat of a request still in flight gets 409 at
    once, a finished one its first answer."""
    if key is None:
        return None
    record = await idempotency_db.find(ctx.db, user_id, key)
    return None if record is None else _replay(record, fingerprint, resource)


def _replay(record: asyncpg.Record, fingerprint: bytes, resource: Resource) -> Outcome:
    if record["request_hash"] != fingerprint:
        raise ValidationFailed.field("Idempotency-Key", "this key was used with a different request body")
    if record[f"{resource.kind}_id"] is None:
        return Outcome(record["response_status"], orjson.loads(record["response_body"]), is_problem=True)
    started = resource.to_json(record, f"{resource.kind}_")
    if started["status"] == "pending":
        raise Conflict("a request with this Idempotency-Key is still in flight")
    return outcome_for(started)


async def start_once(
    ctx: Context,
    user_id: int,
    key: str | None,
    fingerprint: bytes,
    resource: Resource,
    start: Callable[[Executor], Awaitable[asyncpg.Record]],
    refusal: Callable[[Exception], ApiError],
) -> asyncpg.Record | Outcome:
    """Step 1 of a payment or refund, once per key: `start` records the pending
    payment or refund in the transaction that claims the key. Returns what `start`
    recorded, or the answer to replay. When `start` raises, `refusal` turns the
    exception into the API error (or raises it again when it is no refusal); the
    error is stored as the key's answer and raised once the transaction is over,
    with the original exception as its __cause__."""
    if key is None and resource.single_statement:
        try:
            return await start(ctx.db)
        except Exception as exc:
            raise refusal(exc) from exc
    refused: tuple[ApiError, Exception] | None = None
    async with ctx.db.transaction() as conn:
        if key is not None and not await idempotency_db.claim(conn, user_id, key, fingerprint):
            record = await idempotency_db.find(conn, user_id, key)
            assert record is not None
            return _replay(record, fingerprint, resource)
        try:
            started = await start(conn)
        except Exception as exc:
            error = refusal(exc)
            if key is None or isinstance(error, InFlight):
                raise error from exc  # rolls the claim back: the key stays free
            await idempotency_db.store_response(conn, user_id, key, error.status, dumps(error.body()))
            refused = (error, exc)
        else:
            if key is not None:
                await idempotency_db.attach(conn, user_id, key, resource.kind, started["id"])
    if refused is not None:
        error, cause = refused
        raise error from cause
    return started
