"""Users: registration, login (with throttling), who a request is, profiles."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from db import password_resets as password_resets_db
from db import rate_limits
from db import users as users_db
from db.rate_limits import Limit
from db.refusals import Refusal
from server.domain import sessions
from server.domain.auth import Principal, bearer_token, new_secret, secret_hash
from server.domain.context import Context

log = logging.getLogger(__name__)

REGISTER_WINDOW_SECONDS = 3600


async def register(ctx: Context, email: str, password: str, name: str, client_ip: str) -> asyncpg.Record:
    """A new customer; counted against REGISTER_MAX_PER_IP before any hashing."""
    if ctx.config.register_max_per_ip:
        limit = Limit(f"register:{client_ip}", ctx.config.register_max_per_ip, REGISTER_WINDOW_SECONDS)
        wait = await rate_limits.hit(ctx.db, [limit])
        if wait is not None:
            raise Refusal("too_many_registrations", retry_after=wait)
    password_hash = await ctx.passwords.hash(password)
    return await users_db.create(ctx.db, email, name, password_hash)


async def login(ctx: Context, email: str, password: str, client_ip: str) -> sessions.Grant:
    """A new session's tokens for these credentials; refused when wrong or throttled."""
    attempt = await _password_attempt(ctx, email, client_ip)
    async with attempt.checking():
        credentials = await users_db.get_credentials(ctx.db, email)
        # Unknown emails are verified against a dummy hash: same work, same time, same answer.
        password_hash = credentials["password_hash"] if credentials is not None else None
        verified = await ctx.passwords.verify(password_hash, password)
    if credentials is None or not verified:
        log.info("login failed", extra={"client_ip": client_ip})
        raise Refusal("invalid_credentials")
    await attempt.succeeded()
    return await sessions.start(ctx, credentials["id"], credentials["token_version"])


class _PasswordAttempt:
    """A password attempt, counted before the password is checked (so a burst of
    simultaneous attempts gets no more checks than the limits allow)."""

    def __init__(self, ctx: Context, limits: list[Limit], pair: str) -> None:
        self._ctx, self._limits, self._pair = ctx, limits, pair

    async def succeeded(self) -> None:
        """The right password: the attempt was no failure, and the pair starts over."""
        await rate_limits.undo(self._ctx.db, [limit.key for limit in self._limits], self._pair)

    @contextlib.asynccontextmanager
    async def checking(self) -> AsyncIterator[None]:
        """Around the password check: when it cannot be made (the hashing queue is full,
        the database is down), the attempt is taken back, since no password was tried;
        a busy service must not throttle its users."""
        try:
            yield
        except Exception:
            with contextlib.suppress(Exception):  # the database may be what failed
                await rate_limits.undo(self._ctx.db, [limit.key for limit in self._limits], None)
            raise


async def _password_attempt(ctx: Context, email: str, client_ip: str) -> _PasswordAttempt:
    """Count a password attempt for this email from this address, or refuse it.

    The (email, address) pair gets a few attempts, then growing delays; the email and
    the address alone have ceilings high enough that a stranger guessing from one
    address cannot lock the owner (the admin included) out."""
    config = ctx.config
    window = config.login_throttle_window_seconds
    pair = f"pair:{email}|{client_ip}"
    limits = [Limit(pair, config.login_max_failures_per_pair, window, growing=True)]
    if config.login_max_failures_per_email:
        limits.append(Limit(f"email:{email}", config.login_max_failures_per_email, window))
    if config.login_max_failures_per_ip:
        limits.append(Limit(f"ip:{client_ip}", config.login_max_failures_per_ip, window))
    wait = await rate_limits.hit(ctx.db, limits)
    if wait is not None:
        raise Refusal("too_many_password_attempts", retry_after=wait)
    return _PasswordAttempt(ctx, limits, pair)


async def authenticate(ctx: Context, authorization: str | None) -> Principal:
    """The caller of a request with this Authorization header, or refused: the one token
    check of the service. The signature, lifetime and claims are checked without a
    query; the user's existence and token version with one, which also reads the
    profile that `GET /api/users/profile` answers with, and the token's session: a
    revoked or expired session is seen at once by every process (the query starts
    after the request arrived, alone or in a batch: server/domain/token_checks.py)."""
    claims = ctx.tokens.decode(bearer_token(authorization))
    row = await ctx.token_checks.check(claims.user_id, claims.session_id)
    if row is None or row["token_version"] != claims.token_version or row["session_live"] is not True:
        raise Refusal("token_revoked")
    return Principal(claims.user_id, row["role"], row, claims.session_id)


async def update_profile(ctx: Context, principal: Principal, changes: dict[str, Any], client_ip: str) -> asyncpg.Record:
    """Apply name/email/password changes; email and password need current_password,
    whose attempts count towards the same throttling as logins."""
    current_password = changes.pop("current_password", None)
    if "email" in changes or "password" in changes:
        if current_password is None:
            raise Refusal("current_password_required")
        attempt = await _password_attempt(ctx, principal.user["email"], client_ip)
        async with attempt.checking():
            stored = await users_db.get_password_hash(ctx.db, principal.id)
            verified = stored is not None and await ctx.passwords.verify(stored, current_password)
        if not verified:
            raise Refusal("current_password_wrong")
        await attempt.succeeded()
    new_hash = await ctx.passwords.hash(changes["password"]) if "password" in changes else None
    row = await users_db.update_profile(
        ctx.db, principal.id, name=changes.get("name"), email=changes.get("email"), password_hash=new_hash
    )
    if row is None:
        raise Refusal("token_revoked")
    return row


async def request_password_reset(ctx: Context, email: str, client_ip: str) -> None:
    """Store a reset token for this email and, when a user has it, emit it for the
    mailer. The same database work is done whether or not the email exists (see
    db/password_resets.py), and the caller answers the same: nothing is revealed.
    Requests count towards throttles of their own, per email and per address."""
    # Counted before anything else (rate_limits admits under the key's row lock), so a
    # burst cannot get past the limit.
    wait = await rate_limits.hit(ctx.db, _reset_limits(ctx, email, client_ip))
    if wait is not None:
        raise Refusal("too_many_reset_requests", retry_after=wait)
    token, token_hash = new_secret()
    await password_resets_db.request(ctx.db, email, token, token_hash, ctx.config.password_reset_ttl_seconds)
    ctx.metrics.password_resets.labels("requested").inc()


async def confirm_password_reset(ctx: Context, token: str, password: str) -> None:
    """Set the password of the token's user, spend the token and end every session
    of the user; refused for a token that is unknown, used or expired."""
    token_hash = secret_hash(token)
    if len(token) <= sessions.MAX_TOKEN_LENGTH and await password_resets_db.is_valid(ctx.db, token_hash):
        password_hash = await ctx.passwords.hash(password)
        user_id = await password_resets_db.confirm(ctx.db, token_hash, password_hash)
        if user_id is not None:
            ctx.metrics.password_resets.labels("confirmed").inc()
            log.info("password reset", extra={"user_id": user_id})
            return
    ctx.metrics.password_resets.labels("rejected").inc()
    raise Refusal("invalid_reset_token")


def _reset_limits(ctx: Context, email: str, client_ip: str) -> list[Limit]:
    """Reset requests have counters of their own (so they never lock anyone out of
    logging in). The pair of email and address first, as many as password attempts:
    a request refused there counts nowhere else, so a stranger asking for someone's
    email uses up only their own pair, and the email's ceiling
    (PASSWORD_RESET_MAX_PER_EMAIL, high enough that a handful of strangers cannot reach
    it) still lets the owner ask; per address as many as password attempts from it."""
    config = ctx.config
    window = config.login_throttle_window_seconds
    limits = [Limit(f"reset-pair:{email}|{client_ip}", config.login_max_failures_per_pair, window)]
    if config.password_reset_max_per_email:
        limits.append(Limit(f"reset-email:{email}", config.password_reset_max_per_email, window))
    if config.login_max_failures_per_ip:
        limits.append(Limit(f"reset-ip:{client_ip}", config.login_max_failures_per_ip, window))
    return limits


async def ensure_admin(ctx: Context, email: str, password: str) -> None:
    """Create the ADMIN_EMAIL admin with ADMIN_PASSWORD when nobody has that email.
    An existing account is never promoted (emails are not verified: whoever
    registered the address would become admin at the next start) and its password is
    never changed (one changed through the API survives restarts); promoting a user is
    the operator's act (`python -m server create-admin`)."""
    email = email.strip().lower()
    role = await users_db.role_of(ctx.db, email)
    if role is None:
        if await users_db.create_admin(ctx.db, email, "Administrator", await ctx.passwords.hash(password)):
            log.info("admin created", extra={"email": email})
            return
        role = await users_db.role_of(ctx.db, email)  # made meanwhile: by another process, or a sign-up
    if role != "admin":
        log.warning(
            "ADMIN_EMAIL belongs to a customer: nobody is promoted (an operator promotes a user with "
            "`python -m server create-admin`)",
            extra={"variable": "ADMIN_EMAIL"},
        )
