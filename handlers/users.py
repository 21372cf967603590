"""Users: register, login, profile."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, location, principal, read_json
from handlers.routing import Response, Route
from handlers.schemas import LoginIn, ProfileUpdateIn, RegisterIn, TokenOut, UserOut
from server.domain import users
from server.domain.users import user_json
from server.runtime.jsonio import json_response


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    if trust_forwarded_for and (forwarded := request.headers.get("X-Forwarded-For")):
        return forwarded.split(",")[0].strip()[:64]
    return request.remote or "unknown"


async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterIn)
    row = await users.register(context(request), body.email, body.password, body.name)
    return json_response(user_json(row), status=201, headers=location(request, "get_profile"))


async def login(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request, LoginIn)
    token = await users.login(ctx, body.email, body.password, client_ip(request, ctx.config.trust_forwarded_for))
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": ctx.tokens.ttl_seconds})


async def get_profile(request: web.Request) -> web.Response:
    return json_response(user_json(principal(request).user))


async def update_profile(request: web.Request) -> web.Response:
    body = await read_json(request, ProfileUpdateIn)
    row = await users.update_profile(context(request), principal(request), body.model_dump(exclude_none=True))
    return json_response(user_json(row))


ROUTES = [
    Route(
        "POST", "/api/users/register", register, "Register a customer", "users",
        body=RegisterIn,
        responses={201: Response("The new user", UserOut, ("Location",))},
        problems={409: "A user with this email exists"},
    ),
    Route(
        "POST", "/api/users/login", login, "Log in for an access token", "users",
        body=LoginIn,
        responses={200: Response("An access token", TokenOut)},
        problems={401: "Wrong email or password", 429: "Too many failed logins (see Retry-After)"},
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
        problems={409: "Another user has this email"},
    ),
]  # fmt: skip
