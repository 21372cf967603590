"""HTTP caching of the catalog reads: ETag, If-None-Match, Cache-Control."""

from __future__ import annotations

from aiohttp import web

from handlers.routing import PRINCIPAL, RequestHeader
from server.domain.catalog_cache import Representation
from server.runtime.config import Config

# Any value is taken (one that means nothing here is ignored): no pattern.
CACHING_HEADERS = {
    "If-None-Match": RequestHeader("ETags the client holds (or `*`); when one matches the current one: 304, no body"),
    "Cache-Control": RequestHeader("`no-cache` (what a reload sends): the current representation, never a cached one"),
}

# What catalog answers (200 and 304) send, for the document.
CACHING_ANSWER_HEADERS = ("ETag", "Cache-Control", "Vary")


def cache_control(config: Config) -> str:
    """What anonymous catalog reads send (an authenticated answer gets no-store from
    the middleware instead; errors send none)."""
    if config.catalog_max_age_seconds == 0:
        return "no-cache"
    # max-age is whole seconds (RFC 9111): a fraction is rounded down.
    return f"public, max-age={int(config.catalog_max_age_seconds)}"


def wants_fresh(request: web.Request) -> bool:
    """A reload (`Cache-Control: no-cache`, or the older `Pragma: no-cache`) and an
    authenticated read (a valid token: the route's "optional" auth answered any other
    Authorization with 401) ask for the database's current answer, not the cache's."""
    if PRINCIPAL in request:
        return True
    headers = request.headers
    control = headers.get("Cache-Control")
    if control is not None and "no-cache" in control.lower():
        return True
    return headers.get("Pragma", "").lower() == "no-cache"


def matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed tag equal to `etag` under the weak
    comparison (a `W/` prefix on either side is ignored)."""
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


def respond(request: web.Request, entry: Representation, control: str) -> web.Response:
    # The answer depends on Authorization (a token makes it a fresh, private read, a
    # bad one a 401): shared caches must not answer one caller with another's.
    headers = {"ETag": entry.etag, "Cache-Control": control, "Vary": "Authorization"}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and matches(if_none_match, entry.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=entry.body, content_type="application/json", headers=headers)
