"""The route table: each endpoint's handler together with who may call it and what
it accepts and answers. The app registers routes from it, the routing layer
enforces each route's `auth` before its handler runs, and the OpenAPI document is
generated from it, so the three cannot drift apart."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from db.refusals import Refusal
from handlers.refusals import problem_for
from server.domain.auth import Principal, bearer_token
from server.domain.context import Context
from server.domain.users import authenticate
from server.runtime.problems import Forbidden, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# "optional": anyone; a request that carries Authorization must carry a valid access
# token (401 otherwise), and its caller is then known to the handler.
# "metrics": the METRICS_TOKEN bearer token, when one is configured (else open).
Auth = Literal["none", "optional", "user", "admin", "metrics"]

# What a worker's handlers share, set on the app by the composition root (server/app.py).
CONTEXT: web.AppKey[Context] = web.AppKey("context", Context)
# The caller of a route whose auth is "user" or "admin", set by the routing layer.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: an operation (by handler name) that can follow this response,
    its `parameters` and/or `requestBody` taken from the response by runtime
    expressions, so that clients and stateful test tools can chain calls. Only values
    read from the response belong here, never sample data (the document is public)."""

    operation: str
    parameters: dict[str, str] | None = None
    request_body: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        link: dict[str, Any] = {"operationId": self.operation}
        if self.parameters is not None:
            link["parameters"] = self.parameters
        if self.request_body is not None:
            link["requestBody"] = self.request_body
        return link


def id_links(*operations: str) -> tuple[Link, ...]:
    """Links to operations that take this response's `id` as their `{id}`."""
    return tuple(Link(operation, parameters={"id": "$response.body#/id"}) for operation in operations)


@dataclass(frozen=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class RequestHeader:
    description: str
    # A JSON Schema (ECMA 262) pattern, anchored, when the service checks one; None:
    # any value is taken.
    pattern: str | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: Auth = "none"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, Response] = field(default_factory=dict)
    # Problem responses this endpoint can give besides the ones implied by `auth`,
    # `body` and `query` (see handlers/openapi.py), with what they mean here.
    problems: dict[int, str] = field(default_factory=dict)
    request_headers: dict[str, RequestHeader] = field(default_factory=dict)
    content_type: str = "application/json"


def register(app: web.Application, routes: list[Route]) -> None:
    """Add every route, its handler behind the check its `auth` declares, named
    after its handler (so `Location` headers are built from the route table)."""
    for route in routes:
        app.router.add_route(route.method, route.path, guarded(route), name=route.handler.__name__)


def guarded(route: Route) -> Handler:
    """The route's handler behind its declared check, with every refusal of the
    domain answered as its problem document (handlers/refusals.py)."""
    handler = _authorized(route)

    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            raise problem_for(refusal) from None

    return answering


def _authorized(route: Route) -> Handler:
    """The route's handler behind its declared check: "user" needs a valid access
    token (401 otherwise), "admin" an admin's (403 for anyone else), "optional" a
    valid one only when Authorization is sent, "metrics" the METRICS_TOKEN when set.
    The handler finds its caller under PRINCIPAL (absent for an anonymous caller of
    an "optional" route) and never reads `Authorization` itself."""
    if route.auth == "none":
        return route.handler
    handler, admin_only = route.handler, route.auth == "admin"
    if route.auth == "optional":

        async def identified(request: web.Request) -> web.StreamResponse:
            if "Authorization" in request.headers:
                request[PRINCIPAL] = await authenticate(request.app[CONTEXT], request.headers["Authorization"])
            return await handler(request)

        return identified
    if route.auth == "metrics":

        async def scraper(request: web.Request) -> web.StreamResponse:
            expected = request.app[CONTEXT].config.metrics_token
            if expected is not None:
                token = bearer_token(request.headers.get("Authorization"))
                if not hmac.compare_digest(token.encode(), expected.encode()):
                    raise Unauthorized("this needs the metrics token")
            return await handler(request)

        return scraper

    async def authenticated(request: web.Request) -> web.StreamResponse:
        principal = await authenticate(request.app[CONTEXT], request.headers.get("Authorization"))
        if admin_only and not principal.is_admin:
            raise Forbidden("this needs an admin")
        request[PRINCIPAL] = principal
        return await handler(request)

    return authenticated
