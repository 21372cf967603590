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
from ipaddress import ip_address

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, set_span_in_context

from db.pool import Overloaded, end_request, is_outage, new_request
from server.runtime.config import Config, networks
from server.runtime.logs import request_id_var
from server.runtime.metrics import Metrics
from server.runtime.problems import ApiError, problem, problem_response
from server.runtime.tracing import UNSAMPLED, Tracing, current_trace_id

log = logging.getLogger("storefront.http")
access_log = logging.getLogger("storefront.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_id_prefix = secrets.token_hex(4)
_id_counter = itertools.count(1)
_EXPOSED_HEADERS = "Location, Retry-After, X-Request-ID, WWW-Authenticate"
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
_ALLOWED_METHODS = "GET, POST, PUT, DELETE"
# Instead of aiohttp's "Python/3.x aiohttp/y": no versions to look up exploits for.
SERVER_NAME = "storefront"


def _new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):08x}"


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) as problems."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    detail = {
        404: "no such resource",
        405: f"{exc.headers.get('Allow', '')} allowed here".strip(),
        413: "the body is larger than the limit",
    }.get(exc.status, exc.reason)
    return problem_response(problem(exc.status, detail, title=exc.reason), headers)


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    # Unmatched paths share one label: the label set must stay bounded.
    return resource.canonical if resource is not None else "unmatched"


def make_middleware(config: Config, metrics: Metrics, tracing: Tracing | None = None) -> Middleware:
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
            return exc.response()
        except web.HTTPException as exc:
            return _from_http_exception(exc)
        except Overloaded:
            # Shed at the door (DB_POOL_SHED_AFTER): expected under overload, so not logged
            # one by one; the latency histogram counts these 503s by route.
            return problem_response(problem(503, "the service is busy; retry shortly"), {"Retry-After": "1"})
        except Exception as exc:
            if is_outage(exc):
                log.warning("database unavailable", extra={"error": type(exc).__name__, "path": request.path})
                return problem_response(
                    problem(503, "the database is unavailable; retry shortly"), {"Retry-After": "1"}
                )
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
            ids: dict[str, object] = {"request_id": request_id_var.get()}
            if (trace_id := current_trace_id()) is not None:
                ids["trace_id"] = trace_id
            return problem_response(
                problem(500, "an unexpected error occurred; quote the request id when reporting it", extra=ids)
            )  # fmt: skip

    def preflight(request: web.Request) -> web.Response:
        origin = cors_origin(request)
        if origin is None:
            return problem_response(problem(403, "this origin may not call the API"))
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

    async def handle(request: web.Request, handler: Handler, route: str | None = None) -> web.StreamResponse:
        """The request; `route` is its route's name when the caller has it already."""
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID")
        if request_id is None or not _REQUEST_ID.match(request_id):
            request_id = _new_request_id()
        token = request_id_var.set(request_id)
        # Requests share a task per keep-alive connection: each starts as new work
        # for the connection line (db/pool.py).
        admission = new_request()
        try:
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                response: web.StreamResponse = preflight(request)
            else:
                response = await run(request, handler)
            headers = response.headers
            headers["X-Request-ID"] = request_id
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Server"] = SERVER_NAME
            if "Authorization" in request.headers:
                headers["Cache-Control"] = "no-store"
            if origins and (origin := cors_origin(request)) is not None:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
                headers["Vary"] = f"{headers['Vary']}, Origin" if "Vary" in headers else "Origin"
            if record_metrics or log_access:
                elapsed = time.perf_counter() - started
                if record_metrics:
                    metrics.observe_request(route or _route_name(request), request.method, response.status, elapsed)
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
            end_request(admission)
            request_id_var.reset(token)

    if tracing is None:
        return web.middleware(handle)
    tracer = tracing.tracer

    trust_any, proxies = config.otel_trust_incoming_context, networks(config.trusted_proxies)

    def parent(request: web.Request) -> Context | None:
        """The trace context of the caller's `traceparent` when it may be believed:
        from anyone with OTEL_TRUST_INCOMING_CONTEXT, else only from a trusted proxy;
        None for anyone else, whose request is a new root that our sampler decides on:
        a client's `traceparent` must not choose the trace id, nor have spans exported
        that the sampling would not keep."""
        if not trust_any:
            if not proxies:
                return None
            try:
                peer = ip_address(request.remote or "")
            except ValueError:
                return None
            if not any(peer in network for network in proxies):
                return None
        return propagate.extract(request.headers, context=Context())

    @web.middleware
    def traced(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        """The request in a server span named by route template (continuing the
        caller's trace when it sent a `traceparent` and may be believed), current while
        the handler runs and while its log lines are written. A new root the sampler
        drops gets no span at all (Tracing.sampled_root).

        Most requests take the dropped path (nine in ten at 10%), so it makes as few
        calls as it can: the decision is made here, in a plain function that hands back
        `handle`'s coroutine (aiohttp awaits what a middleware returns), so a dropped
        request runs in one coroutine, not two; the dropped context is attached and
        never detached. aiohttp runs each request in a task of its own, on a copy of the
        connection's context, so what is attached here ends with the request; and every
        later request sets its own context here first (a continued trace starts from an
        empty one), so nothing of it could leak into another anyway."""
        route = _route_name(request)
        name = f"{request.method} {route}"
        context = parent(request) if "traceparent" in request.headers else None
        if context is not None:
            return in_span(request, handler, route, name, context, None)
        trace_id = tracing.sampled_root(name)
        if trace_id is None:
            otel_context.attach(UNSAMPLED)
            return handle(request, handler, route)
        return in_span(request, handler, route, name, Context(), tracing.preset(trace_id))

    async def in_span(
        request: web.Request, handler: Handler, route: str, name: str, context: Context, preset: object | None
    ) -> web.StreamResponse:
        """The request in its server span, a child of `context`'s span if it has one.

        The span is made current as the dropped context is (attached, never detached:
        see `traced`) and ended here, instead of through `start_as_current_span`: its
        two generator context managers, and the detach, were 12% of what a sampled span
        cost the event loop (callgrind: 27k of 225k instructions), and what they would
        add here is nothing: `handle` answers every exception a handler raises, so none
        reaches the span."""
        attributes = {"http.request.method": request.method, "http.route": route, "url.path": request.path}
        span = tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        if preset is not None:
            tracing.unpreset(preset)  # the span has its trace id: later ones draw their own
        otel_context.attach(set_span_in_context(span))
        try:
            response = await handle(request, handler, route)
            span.set_attribute("http.response.status_code", response.status)
            return response
        finally:
            span.end()

    return traced
