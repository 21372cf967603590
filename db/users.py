"""The users table."""

from __future__ import annotations

import asyncpg

from db.pool import Database
from db.refusals import Refusal

# What may leave the table: every column but password_hash (which no answer carries).
USER_COLUMNS = "id, email, name, role, created_at, updated_at"


_INSERT = f"""
INSERT INTO users (email, name, password_hash, role)
VALUES ($1, $2, $3, $4)
RETURNING {USER_COLUMNS}
"""


async def create(db: Database, email: str, name: str, password_hash: str, role: str = "customer") -> asyncpg.Record:
    try:
        row = await db.fetchrow(_INSERT, email, name, password_hash, role)
    except asyncpg.UniqueViolationError:
        raise Refusal("email_taken") from None
    assert row is not None
    return row


# The session is checked in the same query that reads the user: no extra round trip.
# A scalar subquery rather than a join: its generic plan is the same two primary-key
# lookups as a custom one, so PostgreSQL settles on it and stops planning per call
# (with a LEFT JOIN it kept planning afresh: measured in docs/performance.md).
_GET = """
SELECT id, email, name, role, created_at, updated_at, token_version,
       (SELECT s.revoked_at IS NULL AND s.expires_at > now() FROM sessions s
        WHERE s.id = $2 AND s.user_id = $1) AS session_live
FROM users WHERE id = $1
"""


async def get(db: Database, user_id: int, session_id: int) -> asyncpg.Record | None:
    """A user with its token_version and whether this session of it is live (NULL
    when the user has no such session), to check a token against in one query."""
    return await db.fetchrow(_GET, user_id, session_id)


_GET_CREDENTIALS = "SELECT id, password_hash, token_version FROM users WHERE email = $1"


async def get_credentials(db: Database, email: str) -> asyncpg.Record | None:
    return await db.fetchrow(_GET_CREDENTIALS, email)


_GET_PASSWORD_HASH = "SELECT password_hash FROM users WHERE id = $1"


async def get_password_hash(db: Database, user_id: int) -> str | None:
    value: str | None = await db.fetchval(_GET_PASSWORD_HASH, user_id)
    return value


# The change, with what a password change ends (sql/functions/users.sql). Only the
# columns that may leave the table are selected from its row.
_UPDATE_PROFILE = f"SELECT {USER_COLUMNS}, token_version FROM update_profile($1, $2, $3, $4)"


async def update_profile(
    db: Database,
    user_id: int,
    *,
    name: str | None = None,
    email: str | None = None,
    password_hash: str | None = None,
) -> asyncpg.Record | None:
    try:
        return await db.fetchrow(_UPDATE_PROFILE, user_id, name, email, password_hash)
    except asyncpg.UniqueViolationError:
        raise Refusal("email_taken") from None


_ROLE = "SELECT role FROM users WHERE email = $1"


async def role_of(db: Database, email: str) -> str | None:
    """The role of the user with this email (None: nobody has it)."""
    role: str | None = await db.fetchval(_ROLE, email)
    return role


# Only when nobody has the email: whoever has it (another process's admin, or a
# customer who registered it) stands as is.
_CREATE_ADMIN = """
INSERT INTO users (email, name, password_hash, role) VALUES ($1, $2, $3, 'admin')
ON CONFLICT (email) DO NOTHING
RETURNING true
"""


async def create_admin(db: Database, email: str, name: str, password_hash: str) -> bool:
    """Make an admin with this email; False when a user has it already."""
    return bool(await db.fetchval(_CREATE_ADMIN, email, name, password_hash))


_UPSERT_ADMIN = """
INSERT INTO users (email, name, password_hash, role)
VALUES ($1, $2, $3, 'admin')
ON CONFLICT (email) DO UPDATE SET
    role = 'admin',
    password_hash = coalesce($4, users.password_hash),
    token_version = users.token_version + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END,
    updated_at = now()
RETURNING id
"""


async def upsert_admin(db: Database, email: str, name: str, password_hash: str, replace_password: bool) -> int:
    """Create an admin, or promote the user with this email (and reset its password
    when `replace_password`: the operator's `create-admin` command, never the start)."""
    user_id: int = await db.fetchval(
        _UPSERT_ADMIN, email, name, password_hash, password_hash if replace_password else None
    )
    return user_id
