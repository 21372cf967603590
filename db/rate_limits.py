"""Attempt counters for throttled keys (sql/013_abuse_limits.sql), shared by every
process: an attempt is counted and judged in one statement, before the work it guards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from db.pool import Database


@dataclass(frozen=True)
class Limit:
    """`key` admits `max_attempts` attempts per `window_seconds`. With `growing`, the
    attempts beyond them are not refused for the rest of the window but must each wait
    a delay doubling from `base_delay_seconds` (at most the window)."""

    key: str
    max_attempts: int
    window_seconds: float
    growing: bool = False
    base_delay_seconds: float = 1.0


_HIT = "SELECT key, admitted, retry_after FROM rate_limit_hit($1, $2, $3, $4, $5)"


async def hit(db: Database, limits: Sequence[Limit]) -> int | None:
    """Count one attempt on every key; None when all admitted it, else the longest
    wait (whole seconds, at least 1) among the keys that refused it."""
    rows = await db.fetch(
        _HIT,
        [limit.key for limit in limits],
        [limit.max_attempts for limit in limits],
        [limit.window_seconds for limit in limits],
        [limit.growing for limit in limits],
        [limit.base_delay_seconds for limit in limits],
    )
    return max((max(1, row["retry_after"]) for row in rows if not row["admitted"]), default=None)


_UNDO = "SELECT rate_limit_undo($1, $2)"


async def undo(db: Database, keys: Sequence[str], forget: str | None) -> None:
    """Take one attempt back from `keys` and forget the key `forget` entirely."""
    await db.execute(_UNDO, list(keys), forget)


_PURGE = "DELETE FROM rate_limits WHERE window_start <= now() - make_interval(secs => $1)"


async def purge(db: Database, older_than_seconds: float) -> None:
    await db.execute(_PURGE, older_than_seconds)
