"""Sessions and their refresh tokens (sql/012_sessions.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg

from db.pool import Database

# A new session with its first refresh token; answers the seconds it has left.
_START = """
WITH s AS (
    INSERT INTO sessions (user_id, token_version, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    RETURNING id, expires_at
), t AS (
    INSERT INTO refresh_tokens (session_id, token_hash) SELECT id, $4 FROM s
)
SELECT id, floor(extract(epoch FROM expires_at - now()))::int AS seconds_left FROM s
"""


async def start(
    db: Database, user_id: int, token_version: int, ttl_seconds: float, token_hash: bytes
) -> asyncpg.Record:
    """A new session (`id`, `seconds_left`) whose first refresh token has this hash."""
    row = await db.fetchrow(_START, user_id, token_version, ttl_seconds, token_hash)
    assert row is not None
    return row


# The session a refresh token belongs to, locked: every change to a session's
# tokens happens under this lock, so the token is read afterwards, by a statement
# whose snapshot sees what the previous holder of the lock committed.
_LOCK_SESSION = """
SELECT s.id, s.user_id, u.token_version,
       s.revoked_at IS NULL AND s.expires_at > now() AND s.token_version = u.token_version AS live,
       floor(extract(epoch FROM s.expires_at - now()))::int AS seconds_left
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1)
FOR UPDATE OF s
"""

_TOKEN = "SELECT id, spent_at IS NOT NULL AS spent FROM refresh_tokens WHERE token_hash = $1"

_ROTATE = """
WITH spent AS (
    UPDATE refresh_tokens SET spent_at = now() WHERE id = $1
), used AS (
    UPDATE sessions SET last_used_at = now() WHERE id = $2
)
INSERT INTO refresh_tokens (session_id, token_hash, previous_id) VALUES ($2, $3, $1)
"""

_REVOKE_SESSION = "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL"

Outcome = Literal["rotated", "reused", "ended", "unknown"]


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: Outcome
    session_id: int = 0
    user_id: int = 0
    token_version: int = 0
    seconds_left: int = 0


async def rotate(db: Database, token_hash: bytes, new_hash: bytes) -> Rotation:
    """Exchange the refresh token with `token_hash` for one with `new_hash`, in one
    transaction under the session's row lock. A spent token revokes its session
    (`reused`); a token of a revoked or expired session (`ended`) or no known token
    (`unknown`) changes nothing."""
    async with db.transaction() as conn:
        session = await conn.fetchrow(_LOCK_SESSION, token_hash)
        if session is None:
            return Rotation("unknown")
        token = await conn.fetchrow(_TOKEN, token_hash)
        assert token is not None  # tokens are deleted only with their session
        if not session["live"]:
            return Rotation("ended", session["id"], session["user_id"])
        if token["spent"]:
            await conn.execute(_REVOKE_SESSION, session["id"], "reuse")
            return Rotation("reused", session["id"], session["user_id"])
        await conn.execute(_ROTATE, token["id"], session["id"], new_hash)
        return Rotation("rotated", session["id"], session["user_id"], session["token_version"], session["seconds_left"])


async def end(db: Database, session_id: int) -> None:
    await db.execute(_REVOKE_SESSION, session_id, "logout")


_END_ALL = "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE user_id = $1 AND revoked_at IS NULL"


async def end_all(db: Database, user_id: int) -> None:
    await db.execute(_END_ALL, user_id, "logout")


# Ended sessions go with all their tokens (spent ones included: they are kept only
# to recognise a replay while their session lives).
_PURGE = "DELETE FROM sessions WHERE expires_at <= now() OR revoked_at IS NOT NULL"


async def purge(db: Database) -> int:
    """Delete ended sessions and their tokens; returns how many sessions went."""
    status = await db.execute(_PURGE)
    return int(status.split()[-1])
