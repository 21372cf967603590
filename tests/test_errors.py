"""Error rules: every failure is an RFC 9457 problem with the right status, and
nothing a client sends gets a 500 or internals back."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from db import users as users_db
from server.app import Options, create_app
from tests.conftest import JWT_SECRET, make_config
from tests.helpers import Api

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status == status, reply
    assert reply.content_type == "application/problem+json"
    body: dict[str, Any] = reply.json
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    return body


async def test_malformed_json_is_400(api: Api) -> None:
    reply = await api.call(
        "POST", "/api/users/register", data=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert_problem(reply, 400)


async def test_body_that_is_not_json_is_415(api: Api) -> None:
    reply = await api.call(
        "POST",
        "/api/users/register",
        data=b"email=a@b.c",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(reply, 415)


async def test_body_without_content_type_is_415(api: Api) -> None:
    reply = await api.call("POST", "/api/users/register", data=b'{"email": "a@b.c"}')
    assert_problem(reply, 415)


@pytest.mark.parametrize("config_overrides", [{"max_body_bytes": 2048}])
async def test_body_over_the_limit_is_413(api: Api) -> None:
    big = {"email": "a@example.com", "password": "password-123", "name": "x" * 4000}
    assert_problem(await api.call("POST", "/api/users/register", json=big), 413)


@pytest.mark.parametrize("config_overrides", [{"max_body_bytes": 2048}])
async def test_chunked_body_over_the_limit_is_413(client: TestClient[Any, Any]) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    async with client.post(
        "/api/users/register", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert response.headers["Content-Type"].startswith("application/problem+json")


async def test_default_body_limit_is_one_mebibyte(api: Api) -> None:
    just_over = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert_problem(
        await api.call("POST", "/api/users/login", data=just_over, headers={"Content-Type": "application/json"}), 413
    )


async def test_validation_failure_lists_every_bad_field(api: Api) -> None:
    reply = await api.call("POST", "/api/users/register", json={"email": "nope", "password": "short", "name": ""})
    body = assert_problem(reply, 422)
    assert {e["field"] for e in body["errors"]} == {"email", "password", "name"}
    assert all(e["message"] for e in body["errors"])


async def test_nested_validation_errors_name_the_path(api: Api) -> None:
    user = await api.customer()
    reply = await api.call(
        "POST", "/api/orders", json={"items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 0}]},
        token=user.token,
    )  # fmt: skip
    body = assert_problem(reply, 422)
    assert body["errors"][0]["field"] == "items[1].quantity"


async def test_body_that_is_json_but_not_an_object_is_422(api: Api) -> None:
    reply = await api.call("POST", "/api/users/login", json=[1, 2, 3])
    body = assert_problem(reply, 422)
    assert body["errors"][0]["field"] == "body"


async def test_unknown_fields_are_rejected(api: Api) -> None:
    reply = await api.call("POST", "/api/users/login", json={"email": "a@b.c", "password": "x", "extra": 1})
    body = assert_problem(reply, 422)
    assert body["errors"][0]["field"] == "extra"


async def test_strings_are_not_numbers(api: Api) -> None:
    product = {"name": "A", "price": "100", "stock": 1}
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/products", json=product, token=admin.token)
    assert_problem(reply, 422)


async def test_unknown_route_is_404_problem(api: Api) -> None:
    assert_problem(await api.call("GET", "/api/nothing-here"), 404)


async def test_wrong_method_is_405_problem_with_allow(api: Api) -> None:
    reply = await api.call("PATCH", "/api/users/profile")
    assert_problem(reply, 405)
    assert "GET" in reply.headers["Allow"] and "PUT" in reply.headers["Allow"]


async def test_unexpected_error_is_500_without_internals_and_logged_with_request_id(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("SELECT secret FROM internals")

    monkeypatch.setattr(users_db, "get", broken)
    user = await api.customer()
    with caplog.at_level(logging.ERROR):
        reply = await api.call("GET", "/api/users/profile", token=user.token, headers={"X-Request-ID": "trace-me-42"})
    body = assert_problem(reply, 500)
    assert "SELECT" not in reply.body.decode() and "Traceback" not in reply.body.decode()
    assert body["request_id"] == "trace-me-42"
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and "SELECT secret" in "".join(str(r.exc_info) for r in logged)


async def test_database_down_is_503_with_retry_after(aiohttp_client: Any, clean_db: str) -> None:
    config = make_config("postgresql://postgres@127.0.0.1:1/nothing", db_pool_min_size=0, db_connect_timeout=1)
    app = create_app(config, Options(dsn=config.database_url or "", jwt_secret=JWT_SECRET, ensure_admin=False))
    api = Api(await aiohttp_client(app))
    reply = await api.call("GET", "/api/products")
    assert_problem(reply, 503)
    assert reply.headers["Retry-After"] == "1"
    ready = await api.call("GET", "/readyz")
    assert ready.status == 503
    assert (await api.call("GET", "/healthz")).status == 200


async def test_request_id_is_generated_or_echoed(api: Api) -> None:
    generated = await api.call("GET", "/healthz")
    assert len(generated.headers["X-Request-ID"]) >= 8
    echoed = await api.call("GET", "/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    unsafe = await api.call("GET", "/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert unsafe.headers["X-Request-ID"] != "a b\tc" + "x" * 200


async def test_api_headers_nosniff_and_no_store_for_authenticated(api: Api) -> None:
    user = await api.customer()
    public = await api.call("GET", "/api/products")
    assert public.headers["X-Content-Type-Options"] == "nosniff"
    private = await api.call("GET", "/api/users/profile", token=user.token)
    assert private.headers["Cache-Control"] == "no-store"
