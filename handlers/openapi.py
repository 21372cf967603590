"""The OpenAPI 3.1 document, generated from the route table and the pydantic
models the handlers validate with, and an offline Swagger UI page for it."""

from __future__ import annotations

import functools
from typing import Any

import openapi_ui_bundles.swagger_ui
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from handlers.routing import Response, Route
from handlers.schemas import Problem
from server.runtime.problems import NotFound

DOCS_ASSETS = "/api/docs/assets"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_STANDARD_PROBLEMS = {
    400: "The body is not valid JSON",
    401: "Missing, malformed, expired or revoked access token",
    403: "Authenticated, but the role does not allow this",
    413: "The body is larger than the limit",
    415: "The body is not application/json",
    422: "The request failed validation (see `errors`)",
    500: "Unexpected error (quote the request id)",
    503: "The database is unavailable (see Retry-After)",
}
_HEADER_DOCS = {
    "Cache-Control": "`public, max-age=N` on anonymous reads (`no-cache` when N is 0); `no-store` when authenticated",
    "ETag": "The representation's version; send it back in If-None-Match",
    "Location": "URL of the created resource",
    "Retry-After": "Seconds to wait before retrying",
    "WWW-Authenticate": "Bearer",
    "X-Request-ID": "The request's id (the client's, when it sent a valid one)",
    "Vary": "`Authorization`: the answer depends on it (shared caches keep one per value)",
}


def _problem_codes(route: Route, open_access: bool) -> dict[int, str]:
    codes: dict[int, str] = {500: _STANDARD_PROBLEMS[500]}
    if route.path.startswith("/api/"):
        codes[503] = _STANDARD_PROBLEMS[503]
    if route.auth != "none" and not open_access:
        codes[401] = _STANDARD_PROBLEMS[401]
    if route.auth == "admin":
        codes[403] = _STANDARD_PROBLEMS[403]
    if route.body is not None:
        codes.update({c: _STANDARD_PROBLEMS[c] for c in (400, 413, 415, 422)})
    if route.query is not None:
        codes[422] = _STANDARD_PROBLEMS[422]
    if "{" in route.path:
        codes[404] = "No such resource"
    codes.update(route.problems)
    return codes


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    headers = {"X-Request-ID": {"description": _HEADER_DOCS["X-Request-ID"], "schema": {"type": "string"}}}
    for name in names:
        headers[name] = {"description": _HEADER_DOCS[name], "schema": {"type": "string"}}
    return headers


def build_document(routes: list[Route], metrics_protected: bool = True) -> dict[str, Any]:
    """The document of `routes`. `metrics_protected`: whether METRICS_TOKEN is set, so
    that the document says whether `/metrics` needs a bearer token in this deployment."""
    models: set[type[BaseModel]] = {Problem}
    for route in routes:
        models.update(m for m in (route.body, *(r.model for r in route.responses.values())) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schemas = models_json_schema([(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{model.__name__.replace('[', '_').replace(']', '_')}"}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        open_metrics = route.auth == "metrics" and not metrics_protected
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref, open_metrics)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Storefront API",
            "version": "1.0.0",
            "description": "Users, catalog, orders, payments and refunds. Errors are RFC 9457 problem documents "
            "(application/problem+json); 402 answers carry the failed payment or refund instead.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "tags": [{"name": t} for t in ("users", "products", "checkout", "orders", "payments", "operations")],
    }


def _operation(route: Route, ref: Any, open_access: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": [route.tag],
        "responses": {},
    }
    if route.auth == "optional":
        operation["security"] = [{}, {"bearerAuth": []}]
    elif route.auth != "none" and not open_access:
        operation["security"] = [{"bearerAuth": []}]
    parameters = []
    if "{id}" in route.path:
        parameters.append({"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}})
    if "{name}" in route.path:
        parameters.append({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}})
    if route.query is not None:
        schema = route.query.model_json_schema()
        for name, prop in schema["properties"].items():
            parameters.append({"name": name, "in": "query", "required": False, "schema": prop})
    for name, header in route.request_headers.items():
        header_schema = {"type": "string"} if header.pattern is None else {"type": "string", "pattern": header.pattern}
        parameters.append({"name": name, "in": "header", "required": False, "description": header.description,
                           "schema": header_schema})  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(route.body)}}}
    for status, response in route.responses.items():
        operation["responses"][str(status)] = _response(route, response, ref)
    for status, description in sorted(_problem_codes(route, open_access).items()):
        if str(status) in operation["responses"]:
            continue
        headers: tuple[str, ...] = {401: ("WWW-Authenticate",), 429: ("Retry-After",), 503: ("Retry-After",)}.get(
            status, ()
        )
        operation["responses"][str(status)] = {
            "description": description,
            "headers": _headers(headers),
            "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
        }
    return operation


def _response(route: Route, response: Response, ref: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"description": response.description, "headers": _headers(response.headers)}
    if response.model is not None:
        body["content"] = {"application/json": {"schema": ref(response.model)}}
    elif route.content_type != "application/json":
        body["content"] = {route.content_type: {"schema": {"type": "string"}}}
    if response.links:
        body["links"] = {link.operation: link.document() for link in response.links}
    return body


_DOCS_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Storefront API</title>
  <link rel="stylesheet" href="{DOCS_ASSETS}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{DOCS_ASSETS}/swagger-ui-standalone-preset.js"></script>
  <script src="{DOCS_ASSETS}/storefront-init.js"></script>
</body>
</html>
""".encode()

# Served beside the bundle's own files (an inline script would need a laxer CSP).
_INIT_SCRIPT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,  // the default asks validator.swagger.io: no outside calls
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
"""
_ASSET_TYPES = {".css": "text/css", ".js": "application/javascript", ".png": "image/png"}
OPENAPI_DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi_document", bytes)


# The only names served: the bundle's files of the types above, listed once at start,
# so a request names an entry of this list or gets 404 (no file system lookups, and
# a cache that cannot grow).
_BUNDLE_FILES = frozenset(
    path.name
    for path in openapi_ui_bundles.swagger_ui.static_path.iterdir()
    if path.suffix in _ASSET_TYPES and path.is_file() and not path.name.startswith(".")
)
# The docs page may load its own assets and call the API, nothing else; no framing.
_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    if name == "storefront-init.js":
        return _INIT_SCRIPT, _ASSET_TYPES[".js"]
    path = openapi_ui_bundles.swagger_ui.static_path / name
    return path.read_bytes(), _ASSET_TYPES[path.suffix]


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(body=_DOCS_PAGE, content_type="text/html", headers=_DOCS_HEADERS)


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name != "storefront-init.js" and name not in _BUNDLE_FILES:
        raise NotFound("no such file")
    body, content_type = _asset(name)
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "public, max-age=86400"})


ROUTES = [
    Route(
        "GET", "/api/openapi.json", openapi_json, "This document", "operations",
        responses={200: Response("The OpenAPI 3.1 document")}, content_type="application/json",
    ),
    Route(
        "GET", "/api/docs", docs, "Interactive documentation (works offline)", "operations",
        responses={200: Response("An HTML page")}, content_type="text/html",
    ),
    Route(
        "GET", "/api/docs/assets/{name}", docs_asset, "A file of the documentation page", "operations",
        responses={200: Response("CSS, JavaScript or an image")}, content_type="application/octet-stream",
        problems={404: "No such file"},
    ),
]  # fmt: skip
