"""The one middleware: request ids, errors as problem responses, API headers,
CORS, metrics and the optional access log.

Everything a request goes through is here, in one function, because each layer of
aiohttp middleware costs a call and an await on every request.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from db.pool import is_outage
from server.runtime.config import Config
from server.runtime.jsonio import json_response
from server.runtime.logs import request_id_var
from server.runtime.metrics import Metrics
from server.runtime.problems import PROBLEM_CONTENT_TYPE, ApiError, problem_body

log = logging.getLogger("storefront.http")
access_log = logging.getLogger("storefront.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_id_prefix = secrets.token_hex(4)
_id_counter = itertools.count(1)
_EXPOSED_HEADERS = "Location, Retry-After, X-Request-ID, WWW-Authenticate"
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
_ALLOWED_METHODS = "GET, POST, PUT, DELETE"


def _new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):08x}"


def problem_response(
    status: int,
    title: str,
    detail: str,
    type_uri: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: object,
) -> web.Response:
    body = problem_body(status, title, detail, type_uri, extra=extra or None)
    return json_response(body, status=status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def _from_api_error(exc: ApiError) -> web.Response:
    return json_response(exc.body(), status=exc.status, headers=exc.headers, content_type=PROBLEM_CONTENT_TYPE)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) as problems."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    detail = {
        404: "no such resource",
        405: f"{exc.headers.get('Allow', '')} allowed here".strip(),
        413: "the body is larger than the limit",
    }.get(exc.status, exc.reason)
    return problem_response(exc.status, exc.reason, detail, headers=headers)


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    # Unmatched paths share one label: the label set must stay bounded.
    return resource.canonical if resource is not None else "unmatched"


def make_middleware(config: Config, metrics: Metrics) -> Middleware:
    record_metrics = config.metrics_enabled
    log_access = config.access_log
    origins = config.cors_origins
    any_origin = "*" in origins

    def cors_origin(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not origins:
            return None
        return origin if any_origin or origin in origins else None

    async def run(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _from_api_error(exc)
        except web.HTTPException as exc:
            return _from_http_exception(exc)
        except Exception as exc:
            if is_outage(exc):
                log.warning("database unavailable", extra={"error": type(exc).__name__, "path": request.path})
                return problem_response(
                    503, "Service Unavailable", "the database is unavailable; retry shortly",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
            return problem_response(
                500, "Internal Server Error", "an unexpected error occurred; quote the request id when reporting it",
                request_id=request_id_var.get(),
            )  # fmt: skip

    def preflight(request: web.Request) -> web.Response:
        origin = cors_origin(request)
        if origin is None:
            return problem_response(403, "Forbidden", "this origin may not call the API")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": _ALLOWED_METHODS,
                "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID")
        if request_id is None or not _REQUEST_ID.match(request_id):
            request_id = _new_request_id()
        token = request_id_var.set(request_id)
        try:
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                response: web.StreamResponse = preflight(request)
            else:
                response = await run(request, handler)
            headers = response.headers
            headers["X-Request-ID"] = request_id
            headers["X-Content-Type-Options"] = "nosniff"
            if "Authorization" in request.headers:
                headers["Cache-Control"] = "no-store"
            if origins and (origin := cors_origin(request)) is not None:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
                headers["Vary"] = "Origin"
            if record_metrics or log_access:
                elapsed = time.perf_counter() - started
                if record_metrics:
                    metrics.observe_request(_route_name(request), request.method, response.status, elapsed)
                if log_access:
                    access_log.info(
                        "request",
                        extra={
                            "method": request.method,
                            "path": request.path,
                            "status": response.status,
                            "duration_ms": round(elapsed * 1000, 3),
                        },
                    )
            return response
        finally:
            request_id_var.reset(token)

    return middleware
