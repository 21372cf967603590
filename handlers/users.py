"""Users: register, login, sessions (refresh, logout), profile, password reset."""

from __future__ import annotations

from aiohttp import web

from handlers.common import client_ip, context, created, principal, read_json
from handlers.routing import Response, Route
from handlers.schemas import (
    LoginIn,
    LogoutIn,
    PasswordResetConfirmIn,
    PasswordResetIn,
    ProfileUpdateIn,
    RefreshIn,
    RegisterIn,
    TokenOut,
)
from server.domain import sessions, users
from server.domain.shapes import UserOut, render
from server.runtime.jsonio import json_response


async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterIn)
    ctx = context(request)
    row = await users.register(ctx, body.email, body.password, body.name, client_ip(request, ctx.config))
    return created(request, "get_profile", UserOut, row)


async def login(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request, LoginIn)
    grant = await users.login(ctx, body.email, body.password, client_ip(request, ctx.config))
    return _grant_response(grant)


def _grant_response(grant: sessions.Grant) -> web.Response:
    return json_response(
        {
            "access_token": grant.access_token,
            "token_type": "Bearer",
            "expires_in": grant.expires_in,
            "refresh_token": grant.refresh_token,
            "refresh_expires_in": grant.refresh_expires_in,
        },
        headers={"Cache-Control": "no-store"},
    )


async def refresh_token(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshIn)
    return _grant_response(await sessions.refresh(context(request), body.refresh_token))


async def logout(request: web.Request) -> web.Response:
    body = await read_json(request, LogoutIn)
    await sessions.logout(context(request), principal(request), everywhere=body.all)
    return web.Response(status=204)


async def request_password_reset(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request, PasswordResetIn)
    await users.request_password_reset(ctx, body.email, client_ip(request, ctx.config))
    return web.Response(status=202)


async def confirm_password_reset(request: web.Request) -> web.Response:
    body = await read_json(request, PasswordResetConfirmIn)
    await users.confirm_password_reset(context(request), body.token, body.password)
    return web.Response(status=204)


async def get_profile(request: web.Request) -> web.Response:
    return json_response(render(UserOut, principal(request).user))


async def update_profile(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request, ProfileUpdateIn)
    changes = body.model_dump(exclude_none=True)
    row = await users.update_profile(ctx, principal(request), changes, client_ip(request, ctx.config))
    return json_response(render(UserOut, row))


ROUTES = [
    Route(
        "POST", "/api/users/register", register, "Register a customer", "users",
        body=RegisterIn,
        responses={201: Response("The new user", UserOut, ("Location",))},
        problems={
            409: "A user with this email exists",
            429: "Too many registrations from this address (see Retry-After)",
            503: "Too many passwords being hashed, or the database is unavailable (see Retry-After)",
        },
    ),
    Route(
        "POST", "/api/users/login", login, "Log in for an access token", "users",
        body=LoginIn,
        responses={200: Response("An access token", TokenOut)},
        problems={
            401: "Wrong email or password",
            429: "Too many password attempts (see Retry-After)",
            503: "Too many passwords being hashed, or the database is unavailable (see Retry-After)",
        },
    ),
    Route(
        "POST", "/api/users/token/refresh", refresh_token, "Exchange a refresh token for new tokens", "users",
        body=RefreshIn,
        responses={200: Response("New access and refresh tokens; the one sent is spent", TokenOut)},
        problems={401: "Unknown, expired or spent refresh token (a spent one also ends its session)"},
    ),
    Route(
        "POST", "/api/users/logout", logout, "End this session, or every session", "users",
        auth="user",
        body=LogoutIn,
        responses={204: Response("The session's tokens are rejected from now on")},
    ),
    Route(
        "POST", "/api/users/password-reset", request_password_reset, "Ask for a password-reset token", "users",
        body=PasswordResetIn,
        responses={202: Response("Accepted whether or not the email exists; the token goes out as an event")},
        problems={429: "Too many reset requests for this email or from this address (see Retry-After)"},
    ),
    Route(
        "POST", "/api/users/password-reset/confirm", confirm_password_reset, "Set a new password with a reset token",
        "users",
        body=PasswordResetConfirmIn,
        responses={204: Response("Password set; every session of the user has ended")},
        problems={400: "Unknown, used or expired reset token"},
    ),
    Route(
        "GET", "/api/users/profile", get_profile, "The caller's profile", "users",
        auth="user",
        responses={200: Response("The caller", UserOut)},
    ),
    Route(
        "PUT", "/api/users/profile", update_profile, "Change name, email or password", "users",
        auth="user",
        body=ProfileUpdateIn,
        responses={200: Response("The updated user", UserOut)},
        problems={
            409: "Another user has this email",
            429: "Too many password attempts (see Retry-After)",
        },
    ),
]  # fmt: skip
