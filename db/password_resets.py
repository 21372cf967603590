"""Password-reset tokens (sql/012_sessions.sql)."""

from __future__ import annotations

import asyncpg

from db.pool import Database, Executor

# One row per requested email, whether or not a user has it (same work either way);
# a newer request replaces the token.
_STORE = """
INSERT INTO password_resets (email, user_id, token_hash, expires_at)
VALUES ($1, (SELECT id FROM users WHERE email = $1), $2, now() + make_interval(secs => $3))
ON CONFLICT (email) DO UPDATE SET
    user_id = excluded.user_id,
    token_hash = excluded.token_hash,
    created_at = now(),
    expires_at = excluded.expires_at
RETURNING user_id, expires_at
"""


async def store(conn: Executor, email: str, token_hash: bytes, ttl_seconds: float) -> asyncpg.Record:
    """Store the token for this email; `user_id` is NULL when nobody has the email."""
    row = await conn.fetchrow(_STORE, email, token_hash, ttl_seconds)
    assert row is not None
    return row


_IS_VALID = """
SELECT EXISTS (
    SELECT FROM password_resets r JOIN users u ON u.id = r.user_id AND u.email = r.email
    WHERE r.token_hash = $1 AND r.expires_at > now()
)
"""


async def is_valid(db: Database, token_hash: bytes) -> bool:
    """Whether the token can be used now (checked before hashing a new password, so
    that a bad token costs no argon2 run)."""
    valid: bool = await db.fetchval(_IS_VALID, token_hash)
    return valid


# Spend the token and set the password in one statement: of two confirms with one
# token, the second finds the row gone. The password change bumps token_version and
# ends every session of the user.
_CONFIRM = """
WITH r AS (
    DELETE FROM password_resets r USING users u
    WHERE r.token_hash = $1 AND r.expires_at > now() AND u.id = r.user_id AND u.email = r.email
    RETURNING r.user_id
), p AS (
    UPDATE users SET password_hash = $2, token_version = token_version + 1, updated_at = now()
    WHERE id = (SELECT user_id FROM r)
    RETURNING id
), s AS (
    UPDATE sessions SET revoked_at = now(), revoked_reason = 'password'
    WHERE user_id = (SELECT user_id FROM r) AND revoked_at IS NULL
)
SELECT id FROM p
"""


async def confirm(db: Database, token_hash: bytes, password_hash: str) -> int | None:
    """Set the password of the token's user and spend the token; None when the token
    is unknown, used or expired."""
    user_id: int | None = await db.fetchval(_CONFIRM, token_hash, password_hash)
    return user_id


_PURGE = "DELETE FROM password_resets WHERE expires_at <= now()"


async def purge(db: Database) -> int:
    status = await db.execute(_PURGE)
    return int(status.split()[-1])
