"""What operators rely on: health, metrics, structured logs, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, Api, ServerProcess, scrape, session

FAMILIES = [
    'http_request_duration_seconds_count{method="GET",route="/api/products/{id}",status="200"}',
    "http_request_duration_seconds_bucket",
    "db_pool_connections ",
    "db_pool_idle_connections ",
    "db_pool_in_use_connections ",
    "db_pool_max_connections ",
    "db_pool_acquire_wait_seconds_count",
    "order_actors_live ",
    "order_actor_mailbox_depth ",
    'payments_total{outcome="succeeded"}',
    'payments_total{outcome="declined"}',
    'order_transitions_total{from_status="pending",to_status="paid"}',
    'order_transitions_total{from_status="new",to_status="pending"}',
]


async def _short_load(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=50)
    for _ in range(3):
        await api.call("GET", f"/api/products/{product['id']}")
    paid = (await api.order(user, (product["id"], 1))).json
    await api.pay(user, paid["id"])
    declined = (await api.order(user, (product["id"], 1))).json
    await api.pay(user, declined["id"], card="tok_chargeDeclined")


async def test_metrics_show_every_family_after_a_short_load(api: Api) -> None:
    await _short_load(api)
    reply = await api.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    for family in FAMILIES:
        assert family in text, family


async def test_metrics_use_route_templates_not_raw_paths(api: Api) -> None:
    for product_id in (11, 12, 13):
        await api.call("GET", f"/api/products/{product_id}")
    text = (await api.call("GET", "/metrics")).body.decode()
    assert 'route="/api/products/{id}"' in text
    assert "/api/products/11" not in text


async def test_metrics_add_up_across_workers(clean_db: str) -> None:
    server = ServerProcess(clean_db, env={"WORKERS": "2"}).start()
    try:
        await asyncio.sleep(1.0)  # both workers up
        async with session(server.url) as http:
            api = Api(http)
            for _ in range(40):
                await api.call("GET", "/healthz", headers={"Connection": "close"})
            metrics = await scrape(api)
        assert metrics.value("http_request_duration_seconds_count", method="GET", route="/healthz") >= 40
        assert metrics.samples("db_pool_max_connections")
    finally:
        server.stop()


async def test_logs_are_json_lines_with_the_request_id_on_every_line(clean_db: str, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(clean_db, env={"LOG_LEVEL": "INFO", "ACCESS_LOG": "true"}, log_path=log_path).start()
    try:
        async with session(server.url) as http:
            await Api(http).call(
                "POST", "/api/users/login", json={"email": "nobody@example.com", "password": "wrong-password"},
                headers={"X-Request-ID": "req-abc-123"},
            )  # fmt: skip
    finally:
        server.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    mine = [entry for entry in lines if entry.get("request_id") == "req-abc-123"]
    assert {entry["msg"] for entry in mine} >= {"login failed", "request"}
    access = next(entry for entry in mine if entry["msg"] == "request")
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/users/login", 401)
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)


async def test_no_access_log_by_default(clean_db: str, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(clean_db, env={"LOG_LEVEL": "INFO"}, log_path=log_path).start()
    try:
        async with session(server.url) as http:
            await Api(http).call("GET", "/healthz")
    finally:
        server.stop()
    assert '"msg":"request"' not in log_path.read_text()


@pytest.mark.parametrize("command", [[], ["serve"], ["migrate"], ["create-admin"], ["seed-demo"], ["check-invariants"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "usage: python -m server" in result.stdout


def test_seed_demo_loads_products_and_check_invariants_passes(clean_db: str) -> None:
    env = {"DATABASE_URL": clean_db, "PATH": "/usr/bin:/bin"}
    seeded = subprocess.run(
        [sys.executable, "-m", "server", "seed-demo", "--products", "2000", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    assert "seeded 2000 products" in seeded.stdout
    checked = subprocess.run(
        [sys.executable, "-m", "server", "check-invariants", "--settled"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout
    assert "0 invariant violation(s)" in checked.stdout


def test_create_admin_makes_an_admin_who_can_log_in(clean_db: str) -> None:
    env = {"DATABASE_URL": clean_db, "PATH": "/usr/bin:/bin", "PASSWORD_HASH_MEMORY_KIB": "1024"}
    result = subprocess.run(
        [sys.executable, "-m", "server", "create-admin", "--email", "Ops@Example.com", "--password", "ops-password-1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import asyncpg

    async def role() -> str:
        conn = await asyncpg.connect(clean_db)
        try:
            value: str = await conn.fetchval("SELECT role FROM users WHERE email = 'ops@example.com'")
            return value
        finally:
            await conn.close()

    assert asyncio.run(role()) == "admin"
