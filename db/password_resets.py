"""Password-reset tokens (the table: sql/012_sessions.sql)."""

from __future__ import annotations

from db.pool import Database, Executor

# The token stored and the user.password_reset_requested event written, in one call
# (sql/functions/users.sql): the same work whether or not a user has the email.
_REQUEST = "SELECT request_password_reset($1, $2, $3, $4)"


async def request(db: Executor, email: str, token: str, token_hash: bytes, ttl_seconds: float) -> None:
    """Store the token for this email and, when a user has it, its event."""
    await db.execute(_REQUEST, email, token, token_hash, ttl_seconds)


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


_CONFIRM = "SELECT confirm_password_reset($1, $2)"


async def confirm(db: Database, token_hash: bytes, password_hash: str) -> int | None:
    """Set the password of the token's user and spend the token (ending every session
    of the user and forgetting their other resets); None when the token is unknown,
    used or expired."""
    user_id: int | None = await db.fetchval(_CONFIRM, token_hash, password_hash)
    return user_id


_PURGE = "SELECT purge_password_resets()"


async def purge(db: Database) -> int:
    """Forget expired reset tokens (their rows, and the tokens in stored events)."""
    purged: int = await db.fetchval(_PURGE)
    return purged
