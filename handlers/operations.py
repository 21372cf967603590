"""Health, readiness and metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from handlers.common import context
from handlers.routing import Response, Route
from handlers.schemas import HealthOut
from server.runtime import metrics as metrics_module
from server.runtime.jsonio import json_response
from server.runtime.problems import ServiceUnavailable

_READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
            await context(request).db.ping()
    except Exception:
        raise ServiceUnavailable("the database does not answer") from None
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    ctx = context(request)
    ctx.refresh_gauges()
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": metrics_module.CONTENT_TYPE})


ROUTES = [
    Route(
        "GET", "/healthz", healthz, "Liveness: 200 while the process runs", "operations",
        responses={200: Response("Alive", HealthOut)},
    ),
    Route(
        "GET", "/readyz", readyz, "Readiness: 200 when the database answers", "operations",
        responses={200: Response("Ready", HealthOut)},
        problems={503: "The database does not answer (see Retry-After)"},
    ),
    Route(
        "GET", "/metrics", metrics, "Prometheus metrics (METRICS_TOKEN as bearer token, when set)", "operations",
        auth="metrics",
        responses={200: Response("Prometheus text exposition format")},
        content_type="text/plain",
    ),
]  # fmt: skip
