"""What every handler needs to read a request: body, query and path parsing."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from handlers.routing import PRINCIPAL
from handlers.schemas import MAX_ID
from server.domain.auth import Principal
from server.domain.context import CONTEXT, Context
from server.runtime import jsonio
from server.runtime.problems import (
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


def location(request: web.Request, handler_name: str, resource_id: int | None = None) -> dict[str, str]:
    """A `Location` header for the resource that the named route serves."""
    parts = {} if resource_id is None else {"id": str(resource_id)}
    return {"Location": str(request.app.router[handler_name].url_for(**parts))}


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body as `model`: 415 unless JSON, 413 when too large, 400 when
    not valid JSON, 422 when it does not fit the model."""
    ctx = request.app[CONTEXT]
    config = ctx.config
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
    return [
        {"field": _field_path(e["loc"]) or "body", "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()
    ]


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
