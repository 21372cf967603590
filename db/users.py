"""The users table."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from db.pool import Database, Executor
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


# A token check reads the user and its token's session in one query: no extra round
# trip. The session in a scalar subquery rather than a join: its generic plan is the
# same two primary-key lookups as a custom one, so PostgreSQL settles on it and stops
# planning per call (with a LEFT JOIN it kept planning afresh: measured in
# docs/performance.md). {user} and {session} name the pair's ids.
_CHECKED = """SELECT u.id, u.email, u.name, u.role, u.created_at, u.updated_at, u.token_version,
       (SELECT s.revoked_at IS NULL AND s.expires_at > now() FROM sessions s
        WHERE s.id = {session} AND s.user_id = {user}) AS session_live"""

_GET = _CHECKED.format(user="$1", session="$2") + " FROM users u WHERE u.id = $1"

# Many checks at once (a worker's checks made together, server/domain/token_checks.py):
# one row per (user, session) pair, in the pairs' order, its id NULL when there is no
# such user. The user in a LATERAL subquery that OFFSET 0 keeps from being flattened
# into a join, whose generic plan (made for ten pairs) hashes the whole users table:
# this way each pair is two primary-key lookups. One check alone is `_GET`: the arrays
# cost a single check 8% more (loadtests/auth_query_cost.py).
_GET_MANY = (
    _CHECKED.format(user="c.user_id", session="c.session_id")
    + """
FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS c (user_id, session_id, n)
LEFT JOIN LATERAL (SELECT * FROM users WHERE id = c.user_id OFFSET 0) u ON true
ORDER BY c.n"""
)


async def get(db: Executor, user_id: int, session_id: int) -> asyncpg.Record | None:
    """A user with its token_version and whether this session of it is live (NULL
    when the user has no such session), to check a token against in one query."""
    return await db.fetchrow(_GET, user_id, session_id)


async def get_many(db: Executor, user_sessions: Sequence[tuple[int, int]]) -> list[asyncpg.Record | None]:
    """`get` for each (user id, session id) pair, in one statement."""
    rows = await db.fetch(
        _GET_MANY, [user_id for user_id, _ in user_sessions], [session_id for _, session_id in user_sessions]
    )
    return [row if row["id"] is not None else None for row in rows]


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
