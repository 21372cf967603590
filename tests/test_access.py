"""Who may call each route, generated from the route table: a route is checked the
day it is added, with no line to write here.

For every route: with no token, a route whose `auth` is "user" or "admin" answers
401 with `WWW-Authenticate: Bearer`; a customer's token on an "admin" route gets
403; an admin passes the check (whatever the handler then answers). Routes with no
auth never answer 401; routes whose auth is "optional" answer anyone, but 401 to a
token that is not a valid one. Object-level rules (an owner's order is 404 for others) are in
tests/test_security.py's matrix.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web

from handlers import api as api_routes
from handlers.routing import Route, register
from tests.helpers import Api, User

_PATH_PARAMETER = re.compile(r"\{[^}]+\}")
# An id no row has: the check must answer before the handler would look it up.
_UNKNOWN_ID = "999999"


def _concrete(path: str) -> str:
    return _PATH_PARAMETER.sub(_UNKNOWN_ID, path)


async def access_violations(api: Api, routes: list[Route], customer: User, admin: User) -> list[str]:
    """Every way in which the service's answers break the routes' declared `auth`."""
    violations = []
    for route in routes:
        path = _concrete(route.path)
        body: dict[str, Any] | None = {} if route.body is not None else None
        anonymous = await api.call(route.method, path, json=body)
        as_customer = await api.call(route.method, path, json=body, token=customer.token)
        as_admin = await api.call(route.method, path, json=body, token=admin.token)
        name = f"{route.method} {route.path} (auth={route.auth})"
        if route.auth in ("none", "metrics", "optional"):  # metrics: open without METRICS_TOKEN
            if anonymous.status in (401, 403):
                violations.append(f"{name}: anonymous got {anonymous.status}")
            if route.auth == "optional":  # anyone, but a token that is sent must be valid
                for who, reply in (("a customer", as_customer), ("an admin", as_admin)):
                    if reply.status in (401, 403):
                        violations.append(f"{name}: {who} got {reply.status}")
                forged = await api.call(route.method, path, json=body, token="x")
                if forged.status != 401 or not forged.headers.get("WWW-Authenticate", "").startswith("Bearer"):
                    violations.append(f"{name}: a token that is not one got {forged.status}, not 401")
            continue
        if anonymous.status != 401 or not anonymous.headers.get("WWW-Authenticate", "").startswith("Bearer"):
            violations.append(f"{name}: anonymous got {anonymous.status}, not 401 with WWW-Authenticate")
        if route.auth == "admin" and as_customer.status != 403:
            violations.append(f"{name}: a customer got {as_customer.status}, not 403")
        if route.auth == "user" and as_customer.status == 401:
            violations.append(f"{name}: a customer was refused (401)")
        if as_admin.status in (401, 403):
            violations.append(f"{name}: an admin got {as_admin.status}")
    return violations


@pytest.mark.parametrize("route", api_routes.ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_each_route_enforces_the_auth_its_table_entry_declares(api: Api, route: Route) -> None:
    customer, admin = await api.customer(), await api.admin_user()
    assert await access_violations(api, [route], customer, admin) == []


async def _open_handler(request: web.Request) -> web.Response:
    return web.json_response({"anyone": "got in"})


_UNGUARDED_ADMIN_ROUTE = Route("POST", "/api/unguarded", _open_handler, "Deliberately broken", "tests", auth="admin")
_GUARDED_ADMIN_ROUTE = Route("POST", "/api/guarded", _open_handler, "Guarded", "tests", auth="admin")


@pytest.fixture
def app(app: web.Application) -> web.Application:
    # One route added behind the routing layer's check, one around it: what a route
    # that forgot its check would look like if handlers did the checking.
    register(app, [_GUARDED_ADMIN_ROUTE])
    app.router.add_post(_UNGUARDED_ADMIN_ROUTE.path, _UNGUARDED_ADMIN_ROUTE.handler)
    return app


async def test_the_access_check_reports_a_route_whose_declared_auth_is_not_enforced(api: Api) -> None:
    customer, admin = await api.customer(), await api.admin_user()
    violations = await access_violations(api, [_UNGUARDED_ADMIN_ROUTE, _GUARDED_ADMIN_ROUTE], customer, admin)
    assert violations == [
        "POST /api/unguarded (auth=admin): anonymous got 200, not 401 with WWW-Authenticate",
        "POST /api/unguarded (auth=admin): a customer got 200, not 403",
    ]


def test_no_handler_reads_the_authorization_header_or_authenticates() -> None:
    import inspect

    import handlers.operations
    import handlers.orders
    import handlers.payments
    import handlers.products
    import handlers.users

    for module in (handlers.users, handlers.products, handlers.orders, handlers.payments, handlers.operations):
        source = inspect.getsource(module)
        assert "Authorization" not in source, module.__name__
        assert "authenticate" not in source, module.__name__
