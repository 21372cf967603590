"""What every handler needs to read a request: body, query and path parsing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TypeVar

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

from handlers.routing import CONTEXT, PRINCIPAL
from handlers.schemas import MAX_ID
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.shapes import Row, Shape, render
from server.runtime import jsonio
from server.runtime.config import Config, networks
from server.runtime.problems import (
    MAX_ERRORS,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
)

M = TypeVar("M", bound=BaseModel)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def principal(request: web.Request) -> Principal:
    """The caller, authenticated by the routing layer per the route's `auth`."""
    return request[PRINCIPAL]


def maybe_principal(request: web.Request) -> Principal | None:
    """The caller of an "optional" route: None when anonymous."""
    return request.get(PRINCIPAL)


def client_ip(request: web.Request, config: Config) -> str:
    """The client's address: the peer's, or behind proxies the one the nearest
    trusted proxy saw. X-Forwarded-For entries are read from the right: the left ones
    are whatever the client sent, and never believed."""
    peer = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    if not forwarded:
        return peer
    proxies = networks(config.trusted_proxies)
    if proxies:
        if not _is_proxy(peer, proxies):
            return peer
        hops = [hop.strip() for hop in forwarded.split(",")]
        for hop in reversed(hops):
            if hop and not _is_proxy(hop, proxies):
                return hop[:64]
        return peer
    if config.trust_forwarded_for:
        return forwarded.rsplit(",", 1)[-1].strip()[:64] or peer
    return peer


def _is_proxy(address: str, proxies: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def page_response(shape: type[Shape], page: tuple[Sequence[asyncpg.Record], str | None]) -> web.Response:
    """A page of a list: its rows in the resource's shape, and the next page's cursor."""
    rows, next_cursor = page
    return jsonio.json_response({"items": [render(shape, row) for row in rows], "next_cursor": next_cursor})


def created(request: web.Request, handler_name: str, shape: type[Shape], row: Row) -> web.Response:
    """201 with the new resource in its shape, and its `Location`: the URL of the named
    route, with the resource's id (when the route takes one)."""
    parts = {"id": str(row["id"])} if "{id}" in request.app.router[handler_name].canonical else {}
    headers = {"Location": str(request.app.router[handler_name].url_for(**parts))}
    return jsonio.json_response(render(shape, row), status=201, headers=headers)


def location(request: web.Request, handler_name: str, resource_id: int | None = None) -> dict[str, str]:
    """A `Location` header for the resource that the named route serves."""
    parts = {} if resource_id is None else {"id": str(resource_id)}
    return {"Location": str(request.app.router[handler_name].url_for(**parts))}


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body as `model`: 415 unless JSON, 413 when too large, 400 when
    not valid JSON, 422 when it does not fit the model."""
    config = context(request).config
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise PayloadTooLarge(f"the body must not exceed {config.max_body_bytes} bytes")
    try:
        async with asyncio.timeout(config.client_body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout("the body did not arrive in time") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body must not exceed {config.max_body_bytes} bytes") from None
    try:
        data = jsonio.loads(raw)
    except jsonio.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    return validate(model, data)


def validate(model: type[M], data: object) -> M:
    if isinstance(data, dict) and model.model_config.get("extra") == "forbid" and len(data) > len(model.model_fields):
        # More keys than the model has fields: some are unknown. Say which (a few) at
        # once, rather than have every one of possibly many thousands validated.
        unknown = list(itertools.islice((k for k in data if k not in model.model_fields), MAX_ERRORS))
        raise ValidationFailed(
            [{"field": key[:100], "message": "Extra inputs are not permitted"} for key in unknown],
            detail=f"{len(data) - len(model.model_fields)} or more unknown fields",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    query = request.rel_url.query
    # A repeated key is ambiguous: take the last, as most frameworks do.
    return validate(model, {key: query.getall(key)[-1] for key in query})


def path_id(request: web.Request, name: str = "id") -> int:
    """An id from the path; anything that cannot be one of ours is simply not found."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= (value := int(raw)) <= MAX_ID:
        raise NotFound("no such resource")
    return value


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """The first MAX_ERRORS errors, each naming its field."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return [
        {"field": _field_path(e["loc"]) or "body", "message": e["msg"].removeprefix("Value error, ")}
        for e in errors[:MAX_ERRORS]
    ]


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
