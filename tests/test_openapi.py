"""The OpenAPI document matches the routes and the responses; the docs page is offline."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import web
from pydantic import BaseModel

from handlers.schemas import IDEMPOTENCY_KEY_PATTERN, Page, Problem, TokenOut
from server.domain.shapes import OrderOut, PaymentOut, ProductOut, RefundOut, UserOut
from tests.helpers import Api, unique_email

CONTRACT_OPERATIONS = {
    ("post", "/api/users/register"), ("post", "/api/users/login"), ("get", "/api/users/profile"),
    ("put", "/api/users/profile"), ("get", "/api/products"), ("get", "/api/products/{id}"),
    ("post", "/api/products"), ("put", "/api/products/{id}"), ("delete", "/api/products/{id}"),
    ("get", "/api/orders"), ("get", "/api/orders/{id}"), ("post", "/api/orders"), ("put", "/api/orders/{id}"),
    ("delete", "/api/orders/{id}"), ("post", "/api/payments"), ("get", "/api/payments/{id}"),
    ("post", "/api/users/token/refresh"), ("post", "/api/users/logout"), ("post", "/api/users/password-reset"),
    ("post", "/api/users/password-reset/confirm"), ("post", "/api/payments/{id}/refunds"),
    ("get", "/api/payments/{id}/refunds"), ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"),
    ("get", "/api/openapi.json"), ("get", "/api/docs"),
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
            public |= path in {"/api/users/token/refresh", "/api/users/password-reset"}
            public |= path == "/api/users/password-reset/confirm"
            public |= path.startswith("/api/docs") or path == "/api/openapi.json"
            public |= path == "/metrics"  # no METRICS_TOKEN here: open, and the document says so
            public |= path == "/api/payments/stripe/webhook"  # its signature is its authentication
            if method == "get" and (path.startswith("/api/products") or path.startswith("/api/shipping-methods")):
                # anyone; a token, when sent, must be valid or it is a 401 (a fresh read; an
                # admin sees disabled shipping methods too)
                assert operation["security"] == [{}, {"bearerAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
            elif public:
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


@pytest.mark.parametrize("config_overrides", [{"metrics_token": "scrape-token-0123456789"}])
async def test_metrics_declare_bearer_auth_and_401_when_a_metrics_token_is_set(api: Api) -> None:
    operation = (await _document(api))["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert "401" in operation["responses"]


async def test_metrics_without_a_metrics_token_declare_no_auth(api: Api) -> None:
    operation = (await _document(api))["paths"]["/metrics"]["get"]
    assert "security" not in operation and "401" not in operation["responses"]
    assert (await api.call("GET", "/metrics")).status == 200


async def test_every_status_of_the_contract_is_documented_where_it_can_happen(api: Api) -> None:
    paths = (await _document(api))["paths"]
    expectations = {
        ("post", "/api/users/register"): {"201", "400", "409", "413", "415", "422"},
        ("post", "/api/users/login"): {"200", "401", "429"},
        ("post", "/api/users/token/refresh"): {"200", "401", "422"},
        ("post", "/api/users/logout"): {"204", "401"},
        ("post", "/api/users/password-reset"): {"202", "422", "429"},
        ("post", "/api/users/password-reset/confirm"): {"204", "400", "422"},
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
    login = (await api.login(user.email, user.password)).json
    _validate(TokenOut, login)
    _validate(
        TokenOut,
        (await api.call("POST", "/api/users/token/refresh", json={"refresh_token": login["refresh_token"]})).json,
    )
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


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


async def test_profile_update_schema_requires_current_password_as_the_server_does(api: Api) -> None:
    schema = _schema(await _document(api), "ProfileUpdateIn")
    assert schema["dependentRequired"] == {"email": ["current_password"], "password": ["current_password"]}
    assert all(p.get("type") == "string" for p in schema["properties"].values())  # never null
    user = await api.customer()
    for body in ({"name": "New", "email": unique_email()}, {"password": "another-password"}, {"name": None}):
        reply = await api.call("PUT", "/api/users/profile", json=body, token=user.token)
        assert reply.status == 422, (body, reply)
    renamed = await api.call(
        "PUT", "/api/users/profile", json={"name": "New", "current_password": user.password}, token=user.token
    )
    assert renamed.status == 200, renamed


async def test_order_update_schema_and_server_agree_that_null_is_not_a_value(api: Api) -> None:
    schema = _schema(await _document(api), "OrderUpdateIn")
    # status alone; items with (or without) the checkout's members (2026-12-05)
    assert schema["minProperties"] == 1 and schema["dependentSchemas"]["status"] == {"maxProperties": 1}
    assert schema["properties"]["items"]["type"] == "array"
    assert schema["properties"]["status"]["type"] == "string"
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    path = f"/api/orders/{order['id']}"
    for body in ({"items": None}, {"status": None}, {"items": None, "status": "cancelled"}, {}):
        assert (await api.call("PUT", path, json=body, token=user.token)).status == 422, body
    cancelled = await api.call("PUT", path, json={"status": "cancelled"}, token=user.token)
    assert cancelled.status == 200, cancelled


async def test_integers_written_with_a_zero_fraction_are_integers_as_json_schema_says(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    whole = await api.call("POST", "/api/orders", json={"items": [{"product_id": product["id"], "quantity": 2.0}]},
                           token=user.token)  # fmt: skip
    assert whole.status == 201, whole
    assert whole.json["items"][0]["quantity"] == 2
    for quantity in (2.5, "2", True):
        body = {"items": [{"product_id": product["id"], "quantity": quantity}]}
        assert (await api.call("POST", "/api/orders", json=body, token=user.token)).status == 422, quantity


async def test_the_document_carries_no_test_card_and_links_are_built_one_way(api: Api) -> None:
    document = await _document(api)
    assert "tok_" not in orjson.dumps(document).decode()
    links = document["paths"]["/api/orders"]["post"]["responses"]["201"]["links"]
    assert links["create_payment"] == {
        "operationId": "create_payment",
        "requestBody": {"order_id": "$response.body#/id"},
    }
    assert links["get_order"] == {"operationId": "get_order", "parameters": {"id": "$response.body#/id"}}


async def test_problem_schema_declares_its_members_and_allows_extensions(api: Api) -> None:
    schema = _schema(await _document(api), "Problem")
    assert schema["additionalProperties"] is True  # RFC 9457 extension members
    assert set(schema["required"]) == {"type", "title", "status", "detail"}
    assert {"errors", "product_id", "request_id"} <= set(schema["properties"])
    assert "null" not in orjson.dumps(schema["properties"]).decode()  # members are absent, never null


async def test_idempotency_key_pattern_is_the_one_the_server_enforces(api: Api) -> None:
    document = await _document(api)
    [header] = [p for p in document["paths"]["/api/payments"]["post"]["parameters"] if p["in"] == "header"]
    assert header["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    for key in ("k" * 256, "tab\there"):
        assert not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key)
        assert (await api.pay(user, order["id"], key=key)).status == 422, key
    assert re.fullmatch(IDEMPOTENCY_KEY_PATTERN, "k" * 255)
    assert (await api.pay(user, order["id"], key="k" * 255)).status == 201


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("Ann", True),
        ("  Ann\t", True),
        (" " * 3, False),  # nothing left after trimming
        ("\u3000" + "a" * 100 + "\n", True),  # 100 characters once trimmed
        ("a" * 101, False),
        ("\ufeffAnn", True),  # U+FEFF is not trimmed, so it counts as a character
        ("\ufeff", True),
        ("A\x00n", False),
    ],
)
async def test_trimmed_text_patterns_accept_what_the_server_accepts(api: Api, value: str, accepted: bool) -> None:
    """Names are trimmed before their length is checked: the document's pattern says
    so, in characters both JSON Schema (ECMA 262) and Python read alike."""
    pattern = _schema(await _document(api), "RegisterIn")["properties"]["name"]["pattern"]
    assert bool(re.search(pattern, value)) is accepted
    reply = await api.register(name=value)
    assert reply.status == (201 if accepted else 422), reply


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("abc", True),
        ("%a_b c", True),
        ("ab", False),
        ("%%__  ab", False),  # wildcards and spaces do not count
        ("a\x00bc", False),
    ],
)
async def test_search_text_pattern_accepts_what_the_server_searches(api: Api, value: str, accepted: bool) -> None:
    """A search of fewer than 3 characters besides %, _ and spaces is 422 (no index
    can serve it): the document's pattern says the same."""
    document = await _document(api)
    (q,) = [p for p in document["paths"]["/api/products"]["get"]["parameters"] if p["name"] == "q"]
    assert bool(re.search(q["schema"]["pattern"].replace("\\u0000", "\\x00"), value)) is accepted
    reply = await api.call("GET", f"/api/products?{urlencode({'q': value})}")
    assert reply.status == (200 if accepted else 422), reply
