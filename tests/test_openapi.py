"""The OpenAPI document matches the routes and the responses; the docs page is offline."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from handlers.schemas import OrderOut, Page, PaymentOut, Problem, ProductOut, RefundOut, TokenOut, UserOut
from tests.helpers import Api

CONTRACT_OPERATIONS = {
    ("post", "/api/users/register"), ("post", "/api/users/login"), ("get", "/api/users/profile"),
    ("put", "/api/users/profile"), ("get", "/api/products"), ("get", "/api/products/{id}"),
    ("post", "/api/products"), ("put", "/api/products/{id}"), ("delete", "/api/products/{id}"),
    ("get", "/api/orders"), ("get", "/api/orders/{id}"), ("post", "/api/orders"), ("put", "/api/orders/{id}"),
    ("delete", "/api/orders/{id}"), ("post", "/api/payments"), ("get", "/api/payments/{id}"),
    ("post", "/api/payments/{id}/refunds"), ("get", "/api/payments/{id}/refunds"),
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/api/openapi.json"), ("get", "/api/docs"),
}  # fmt: skip


async def _document(api: Api) -> dict[str, Any]:
    reply = await api.call("GET", "/api/openapi.json")
    assert reply.status == 200
    document: dict[str, Any] = reply.json
    return document


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


async def test_every_route_is_documented_and_every_documented_route_exists(api: Api, app: web.Application) -> None:
    document = await _document(api)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == _operations(document)


async def test_the_document_covers_the_contract(api: Api) -> None:
    document = await _document(api)
    assert document["openapi"] == "3.1.0"
    order_statuses = document["components"]["schemas"]["OrderOut"]["properties"]["status"]["enum"]
    assert "refunded" in order_statuses
    assert _operations(document) >= CONTRACT_OPERATIONS
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_protected_operations_declare_bearer_auth_and_401(api: Api) -> None:
    document = await _document(api)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = path in {"/api/users/register", "/api/users/login", "/healthz", "/readyz"}
            public |= path.startswith("/api/docs") or path == "/api/openapi.json"
            public |= method == "get" and path.startswith("/api/products")
            if public:
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


async def test_every_status_of_the_contract_is_documented_where_it_can_happen(api: Api) -> None:
    paths = (await _document(api))["paths"]
    expectations = {
        ("post", "/api/users/register"): {"201", "400", "409", "413", "415", "422"},
        ("post", "/api/users/login"): {"200", "401", "429"},
        ("post", "/api/products"): {"201", "401", "403", "409", "422"},
        ("delete", "/api/products/{id}"): {"204", "401", "403", "404"},
        ("post", "/api/orders"): {"201", "401", "409", "422"},
        ("put", "/api/orders/{id}"): {"200", "403", "404", "409", "422", "503"},
        ("delete", "/api/orders/{id}"): {"204", "404", "409"},
        ("post", "/api/payments"): {"201", "402", "404", "409", "422", "503"},
        ("get", "/api/payments/{id}"): {"200", "401", "404"},
        ("post", "/api/payments/{id}/refunds"): {"201", "402", "401", "403", "404", "409", "422", "503"},
        ("get", "/api/payments/{id}/refunds"): {"200", "401", "404", "422"},
        ("get", "/readyz"): {"200", "503"},
    }
    for (method, path), statuses in expectations.items():
        assert statuses <= set(paths[path][method]["responses"]), (method, path)
    for item in paths.values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "402" and "content" in response:
                    assert "application/problem+json" in response["content"] or status == "503"


def _validate(model: type[BaseModel], body: Any) -> None:
    model.model_validate(body)


async def test_responses_match_the_documented_models(api: Api) -> None:
    """The handlers send what the document (generated from these models) says."""
    user = await api.customer()
    _validate(UserOut, (await api.call("GET", "/api/users/profile", token=user.token)).json)
    _validate(TokenOut, (await api.login(user.email, user.password)).json)
    product = await api.product()
    _validate(ProductOut, product)
    _validate(Page[ProductOut], (await api.call("GET", "/api/products")).json)
    order = await api.order(user, (product["id"], 1))
    _validate(OrderOut, order.json)
    _validate(Page[OrderOut], (await api.call("GET", "/api/orders", token=user.token)).json)
    payment = (await api.pay(user, order.json["id"])).json
    _validate(PaymentOut, payment)
    admin = await api.admin_user()
    refunds_path = f"/api/payments/{payment['id']}/refunds"
    _validate(RefundOut, (await api.call("POST", refunds_path, json={}, token=admin.token)).json)
    _validate(Page[RefundOut], (await api.call("GET", refunds_path, token=user.token)).json)
    _validate(OrderOut, (await api.call("GET", f"/api/orders/{order.json['id']}", token=user.token)).json)
    _validate(Problem, (await api.call("GET", "/api/products/999999")).json)
    _validate(Problem, (await api.register("bad")).json)


async def test_the_docs_page_loads_nothing_from_other_hosts(api: Api) -> None:
    page = await api.call("GET", "/api/docs")
    assert page.status == 200
    html = page.body.decode()
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references
    assert not [r for r in references if not r.startswith("/api/docs/assets/")]
    for reference in references:
        asset = await api.call("GET", reference)
        assert asset.status == 200, reference
    init = (await api.call("GET", "/api/docs/assets/storefront-init.js")).body.decode()
    assert '"/api/openapi.json"' in init
    assert "validatorUrl: null" in init
    assert not re.findall(r"https?://", init)


async def test_docs_assets_cannot_escape_their_folder(api: Api) -> None:
    for name in ("..%2F..%2Fhandlers%2Fopenapi.py", "%2Fetc%2Fpasswd", ".hidden", "index.html"):
        assert (await api.call("GET", f"/api/docs/assets/{name}")).status == 404


async def test_links_name_operations_that_exist(api: Api) -> None:
    document = await _document(api)
    operation_ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    links = [
        link
        for item in document["paths"].values()
        for op in item.values()
        for response in op["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(links) >= 7
    assert {link["operationId"] for link in links} <= operation_ids
