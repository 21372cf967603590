"""Health, readiness and metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from handlers.common import context
from handlers.routing import Response, Route
from handlers.schemas import HealthOut
from server.runtime import metrics as metrics_module
from server.runtime.jsonio import json_response

_READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
            await context(request).db.fetchval("SELECT 1")
    except Exception:
        return json_response({"status": "unavailable"}, status=503, headers={"Retry-After": "1"})
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
        responses={
            200: Response("Ready", HealthOut),
            503: Response("The database does not answer", HealthOut, ("Retry-After",)),
        },
    ),
    Route(
        "GET", "/metrics", metrics, "Prometheus metrics", "operations",
        responses={200: Response("Prometheus text exposition format")},
        content_type="text/plain",
    ),
]  # fmt: skip
