"""The route table: each endpoint's handler together with what it accepts and
answers. The app registers routes from it and the OpenAPI document is generated
from it, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["none", "user", "admin"]


@dataclass(frozen=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()
    # OpenAPI links: operations (by handler name) that take this response's `id` as
    # their `{id}`, so that clients and stateful test tools can chain calls.
    links_to: tuple[str, ...] = ()
    # Links whose request body is built from this response (runtime expressions).
    body_links: tuple[tuple[str, dict[str, Any]], ...] = ()


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
    request_headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def register(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
