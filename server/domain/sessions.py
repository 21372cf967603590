"""Sessions: one per login, kept alive by rotating refresh tokens (RFC 9700 4.14).

A refresh token is good once: exchanging it spends it and issues the next one. A
spent token presented again means two parties hold the session (only a thief
replays), so the session is revoked with every token of it, access tokens included:
the one token check (`users.authenticate`) reads the session in its query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from db import sessions as sessions_db
from db.refusals import Refusal
from server.domain.auth import Principal, new_secret, secret_hash
from server.domain.context import Context

log = logging.getLogger(__name__)

# Our tokens are 43 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Grant:
    """What a login or a refresh answers with."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


async def start(ctx: Context, user_id: int, token_version: int) -> Grant:
    refresh_token, token_hash = new_secret()
    session = await sessions_db.start(ctx.db, user_id, token_version, ctx.config.refresh_ttl_seconds, token_hash)
    access_token = ctx.tokens.issue(user_id, token_version, session["id"])
    return Grant(access_token, ctx.tokens.expires_in, refresh_token, session["seconds_left"])


async def refresh(ctx: Context, refresh_token: str) -> Grant:
    """The next access and refresh tokens of the session; refused for a token that is
    unknown, spent (which also revokes the session) or of an ended session."""
    if not refresh_token or len(refresh_token) > MAX_TOKEN_LENGTH:
        ctx.metrics.refreshes.labels("rejected").inc()
        raise Refusal("refresh_token_invalid")
    next_token, next_hash = new_secret()
    rotation = await sessions_db.rotate(ctx.db, secret_hash(refresh_token), next_hash)
    if rotation.outcome == "reused":
        ctx.metrics.refreshes.labels("reuse_detected").inc()
        log.warning(
            "refresh token replayed: session revoked",
            extra={"session_id": rotation.session_id, "user_id": rotation.user_id},
        )
        raise Refusal("refresh_token_reused")
    if rotation.outcome != "rotated":
        ctx.metrics.refreshes.labels("rejected").inc()
        raise Refusal("refresh_token_invalid")
    ctx.metrics.refreshes.labels("rotated").inc()
    access_token = ctx.tokens.issue(rotation.user_id, rotation.token_version, rotation.session_id)
    return Grant(access_token, ctx.tokens.expires_in, next_token, rotation.seconds_left)


async def logout(ctx: Context, principal: Principal, everywhere: bool) -> None:
    """End the caller's session, or every session of the caller."""
    if everywhere:
        await sessions_db.end_all(ctx.db, principal.id)
    else:
        await sessions_db.end(ctx.db, principal.session_id)
