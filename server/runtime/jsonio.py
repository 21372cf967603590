"""JSON in and out: orjson is the service's one codec."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
# Timestamps as RFC 3339 in UTC with a `Z`, as the contract asks.
_DUMPS_OPTIONS = orjson.OPT_UTC_Z

loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_DUMPS_OPTIONS)


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = JSON_CONTENT_TYPE,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=_DUMPS_OPTIONS),
        status=status,
        headers=headers,
        content_type=content_type,
    )
