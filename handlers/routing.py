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
    pattern: str  # a JSON Schema (ECMA 262) pattern, anchored


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
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
