"""Users: registration, login (with throttling), who a request is, profiles, password
resets."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from db import login_failures
from db import password_resets as password_resets_db
from db import users as users_db
from server.domain import events, sessions
from server.domain.auth import Principal, bearer_token, new_secret, secret_hash
from server.domain.context import Context
from server.runtime.problems import (
    Conflict,
    InvalidCredentials,
    InvalidResetToken,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)

log = logging.getLogger(__name__)


def user_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "role": row["role"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def register(ctx: Context, email: str, password: str, name: str) -> asyncpg.Record:
    password_hash = await ctx.passwords.hash(password)
    try:
        return await users_db.create(ctx.db, email, name, password_hash)
    except users_db.EmailTaken:
        raise Conflict("a user with this email already exists") from None


async def login(ctx: Context, email: str, password: str, client_ip: str) -> sessions.Grant:
    """A new session's tokens for these credentials; 401 when wrong, 429 when throttled."""
    keys = _throttle_keys(ctx, email, client_ip)
    await _refuse_if_throttled(ctx, keys)
    credentials = await users_db.get_credentials(ctx.db, email)
    # Unknown emails are verified against a dummy hash: same work, same time, same answer.
    password_hash = credentials["password_hash"] if credentials is not None else None
    verified = await ctx.passwords.verify(password_hash, password)
    if credentials is None or not verified:
        if keys:
            await login_failures.record(ctx.db, list(keys), ctx.config.login_throttle_window_seconds)
        log.info("login failed", extra={"client_ip": client_ip})
        raise InvalidCredentials()
    if f"email:{email}" in keys:
        await login_failures.clear(ctx.db, f"email:{email}")
    return await sessions.start(ctx, credentials["id"], credentials["token_version"])


def _throttle_keys(ctx: Context, email: str, client_ip: str) -> dict[str, int]:
    """Each throttled key with its limit (a limit of 0 turns that key off)."""
    config = ctx.config
    keys = {}
    if config.login_max_failures_per_email:
        keys[f"email:{email}"] = config.login_max_failures_per_email
    if config.login_max_failures_per_ip:
        keys[f"ip:{client_ip}"] = config.login_max_failures_per_ip
    return keys


async def _refuse_if_throttled(ctx: Context, keys: dict[str, int]) -> None:
    if not keys:
        return
    rows = await login_failures.current(ctx.db, list(keys), ctx.config.login_throttle_window_seconds)
    waits = [row["seconds_left"] for row in rows if row["failures"] >= keys[row["key"]]]
    if waits:
        raise TooManyRequests("too many failed logins; try again later", retry_after=max(waits))


async def authenticate(ctx: Context, authorization: str | None) -> Principal:
    """The caller of a request with this Authorization header, or 401: the one token
    check of the service. The signature, lifetime and claims are checked without a
    query; the user's existence and token version with one, which also reads the
    profile that `GET /api/users/profile` answers with, and the token's session: a
    revoked or expired session is seen at once by every process."""
    claims = ctx.tokens.decode(bearer_token(authorization))
    row = await users_db.get(ctx.db, claims.user_id, claims.session_id)
    if row is None or row["token_version"] != claims.token_version or row["session_live"] is not True:
        raise Unauthorized("access token is no longer valid")
    return Principal(claims.user_id, row["role"], row, claims.session_id)


async def update_profile(ctx: Context, principal: Principal, changes: dict[str, Any]) -> asyncpg.Record:
    """Apply name/email/password changes; email and password need current_password."""
    current_password = changes.pop("current_password", None)
    if "email" in changes or "password" in changes:
        if current_password is None:
            raise ValidationFailed.field("current_password", "required to change email or password")
        stored = await users_db.get_password_hash(ctx.db, principal.id)
        if stored is None or not await ctx.passwords.verify(stored, current_password):
            raise ValidationFailed.field("current_password", "is not the current password")
    new_hash = await ctx.passwords.hash(changes["password"]) if "password" in changes else None
    try:
        row = await users_db.update_profile(
            ctx.db, principal.id, name=changes.get("name"), email=changes.get("email"), password_hash=new_hash
        )
    except users_db.EmailTaken:
        raise Conflict("a user with this email already exists") from None
    if row is None:
        raise Unauthorized("access token is no longer valid")
    return row


async def request_password_reset(ctx: Context, email: str, client_ip: str) -> None:
    """Store a reset token for this email and, when a user has it, emit it for the
    mailer. The same database work is done whether or not the email exists (see
    db/password_resets.py), and the caller answers the same: nothing is revealed.
    Requests count towards throttles of their own, per email and per address."""
    keys = {f"reset-{key}": limit for key, limit in _throttle_keys(ctx, email, client_ip).items()}
    if keys:
        # Counted before anything else, so a burst cannot get past the limit: the
        # request that makes the count exceed the limit is the first one refused.
        await login_failures.record(ctx.db, list(keys), ctx.config.login_throttle_window_seconds)
        await _refuse_if_throttled(ctx, {key: limit + 1 for key, limit in keys.items()})
    token, token_hash = new_secret()
    async with ctx.db.transaction() as conn:
        row = await password_resets_db.store(conn, email, token_hash, ctx.config.password_reset_ttl_seconds)
        data = {"user_id": row["user_id"], "email": email, "token": token, "expires_at": row["expires_at"]}
        try:
            async with conn.transaction():  # a savepoint
                await events.emit(conn, "user.password_reset_requested", data)
                if row["user_id"] is None:
                    # Nobody has this email: the event is written and rolled back, so
                    # that both cases run the same statements and take the same time
                    # (skipping the insert made them measurably apart: docs/reliability.md).
                    raise _NoSuchUser
        except _NoSuchUser:
            pass
    ctx.metrics.password_resets.labels("requested").inc()


class _NoSuchUser(Exception):
    """Rolls back the reset event of an email that nobody has."""


async def confirm_password_reset(ctx: Context, token: str, password: str) -> None:
    """Set the password of the token's user, spend the token and end every session
    of the user; 400 for a token that is unknown, used or expired."""
    token_hash = secret_hash(token)
    if len(token) <= sessions.MAX_TOKEN_LENGTH and await password_resets_db.is_valid(ctx.db, token_hash):
        password_hash = await ctx.passwords.hash(password)
        user_id = await password_resets_db.confirm(ctx.db, token_hash, password_hash)
        if user_id is not None:
            ctx.metrics.password_resets.labels("confirmed").inc()
            log.info("password reset", extra={"user_id": user_id})
            return
    ctx.metrics.password_resets.labels("rejected").inc()
    raise InvalidResetToken()


async def ensure_admin(ctx: Context, email: str, password: str) -> None:
    """Make sure an admin with this email and password exists (ADMIN_EMAIL/PASSWORD)."""
    email = email.strip().lower()
    credentials = await users_db.get_credentials(ctx.db, email)
    current_hash = None if credentials is None else credentials["password_hash"]
    matches = current_hash is not None and await ctx.passwords.verify(current_hash, password)
    password_hash = current_hash if matches and current_hash else await ctx.passwords.hash(password)
    await users_db.upsert_admin(ctx.db, email, "Administrator", password_hash, replace_password=not matches)
    log.info("admin ensured", extra={"email": email})
