"""Webhooks through HTTP, delivering to a real receiver on 127.0.0.1: CRUD and the
secret, target checks, Standard Webhooks signatures (checked with the reference
library), retries, per-resource order, isolation of a slow receiver, what a new or
disabled webhook gets, and the delivery log."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import WebhookVerificationError

from db import webhooks as webhooks_db
from db.pool import Database
from handlers.routing import CONTEXT
from server.domain import webhooks
from server.runtime.config import load
from tests.helpers import Api
from tests.webhook_receiver import Received, Receiver

FAST_DELIVERY = {
    "webhook_allow_private_targets": True,
    "webhook_poll_interval_seconds": 0.05,
    "webhook_retry_base_seconds": 0.1,
    "webhook_timeout_seconds": 2,
    "webhook_max_attempts": 3,
}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return dict(FAST_DELIVERY)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    try:
        yield running
    finally:
        await running.stop()


async def add_webhook(api: Api, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    admin = await api.admin_user()
    reply = await api.call(
        "POST", "/api/webhooks", json={"url": url, "events": events or ["*"], **extra}, token=admin.token
    )
    assert reply.status == 201, reply
    created: dict[str, Any] = reply.json
    return created


async def deliveries(api: Api, webhook_id: int) -> list[dict[str, Any]]:
    admin = await api.admin_user()
    reply = await api.call("GET", f"/api/webhooks/{webhook_id}/deliveries?limit=100", token=admin.token)
    assert reply.status == 200, reply
    items: list[dict[str, Any]] = reply.json["items"]
    return items


async def log_of(api: Api, webhook_id: int, entries: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The delivery log once it holds `entries` attempts: the receiver gets a request
    before its outcome is recorded, so a test waits for the record, not for a while."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(log := await deliveries(api, webhook_id)) < entries:
        assert asyncio.get_running_loop().time() < deadline, f"the log has {log}, not {entries} entries"
        await asyncio.sleep(0.05)
    return log


def types_of(events: list[Any], resource_id: int | None = None) -> list[str]:
    return [
        e["type"]
        for e in events
        if resource_id is None or e["data"].get("id", e["data"].get("order_id")) == resource_id
    ]


# --- CRUD and the secret ---------------------------------------------------------------


async def test_the_secret_is_shown_in_the_create_answer_only(api: Api, receiver: Receiver) -> None:
    admin = await api.admin_user()
    created = await add_webhook(api, receiver.url, ["order.created"], description="mailer")
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    assert {k: created[k] for k in ("url", "events", "description", "enabled")} == {
        "url": receiver.url, "events": ["order.created"], "description": "mailer", "enabled": True,
    }  # fmt: skip
    one = await api.call("GET", f"/api/webhooks/{created['id']}", token=admin.token)
    listed = await api.call("GET", "/api/webhooks", token=admin.token)
    changed = await api.call("PUT", f"/api/webhooks/{created['id']}", json={"description": "x"}, token=admin.token)
    assert one.status == listed.status == changed.status == 200
    for body in (one.body, listed.body, changed.body):
        assert b"secret" not in body and created["secret"].encode() not in body
    assert changed.json["description"] == "x" and changed.json["events"] == ["order.created"]


async def test_a_deleted_webhook_is_gone(api: Api, receiver: Receiver) -> None:
    admin = await api.admin_user()
    created = await add_webhook(api, receiver.url)
    assert (await api.call("DELETE", f"/api/webhooks/{created['id']}", token=admin.token)).status == 204
    assert (await api.call("GET", f"/api/webhooks/{created['id']}", token=admin.token)).status == 404
    assert (await api.call("GET", f"/api/webhooks/{created['id']}/deliveries", token=admin.token)).status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/hook", "events": ["*"]},
        {"url": "not a url", "events": ["*"]},
        {"url": "http://93.184.215.14/hook", "events": ["order.nonsense"]},
        {"url": "http://93.184.215.14/hook", "events": []},
    ],
)
async def test_a_bad_url_or_event_type_is_422(api: Api, body: dict[str, Any]) -> None:
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/webhooks", json=body, token=admin.token)
    assert reply.status == 422, reply


@pytest.mark.parametrize("config_overrides", [{"webhook_allow_private_targets": False}])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
async def test_private_targets_are_refused(api: Api, url: str) -> None:
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/webhooks", json={"url": url, "events": ["*"]}, token=admin.token)
    assert reply.status == 422, reply


@pytest.mark.parametrize("config_overrides", [{"webhook_allow_private_targets": False}])
@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]/hook",  # IPv4-compatible
        "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254 (cloud metadata)
        "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "http://[2002:c0a8:1::1]/hook",  # 6to4 of 192.168.0.1
        "http://[fec0::1]/hook",  # site-local
    ],
)
async def test_ipv6_targets_are_judged_by_the_ipv4_address_they_embed_and_site_local_is_refused(
    api: Api, url: str
) -> None:
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/webhooks", json={"url": url, "events": ["*"]}, token=admin.token)
    assert reply.status == 422, reply


@pytest.mark.parametrize("config_overrides", [{"webhook_allow_private_targets": False}])
@pytest.mark.parametrize("url", ["http://[64:ff9b::5db8:d70e]/hook", "http://[2002:5db8:d70e::1]/hook"])
async def test_ipv6_targets_that_embed_a_public_ipv4_address_are_accepted(api: Api, url: str) -> None:
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/webhooks", json={"url": url, "events": ["*"]}, token=admin.token)
    assert reply.status == 201, reply


@pytest.mark.parametrize(
    "url", ["https://93.184.215.14/a\r\nX-Injected: 1", "https://93.184.215.14/\n", "https://93.184.215.14/a\tb"]
)
async def test_control_characters_in_a_webhook_url_are_422(api: Api, url: str) -> None:
    admin = await api.admin_user()
    created = await api.call("POST", "/api/webhooks", json={"url": url, "events": ["*"]}, token=admin.token)
    assert created.status == 422, created
    hook = await add_webhook(api, "https://93.184.215.14/hook")
    changed = await api.call("PUT", f"/api/webhooks/{hook['id']}", json={"url": url}, token=admin.token)
    assert changed.status == 422, changed


@pytest.mark.parametrize("config_overrides", [{"webhook_allow_private_targets": False}])
async def test_a_public_target_is_accepted(api: Api) -> None:
    admin = await api.admin_user()
    reply = await api.call(
        "POST", "/api/webhooks", json={"url": "https://93.184.215.14/hook", "events": ["*"]}, token=admin.token
    )
    assert reply.status == 201, reply


# --- delivery --------------------------------------------------------------------------


async def test_a_delivery_is_signed_per_standard_webhooks(api: Api, receiver: Receiver) -> None:
    hook = await add_webhook(api, receiver.url, ["product.created"])
    product = await api.product(name="Signed")
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    got = receiver.received[0]
    event = got.verified(hook["secret"])
    assert event["type"] == "product.created" and event["data"] == product
    assert got.headers["webhook-id"] == str(event["id"])
    assert got.headers["Content-Type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        got.verified("whsec_" + base64.b64encode(b"another secret of 24 bytes!!").decode())


async def test_the_reset_token_reaches_only_a_webhook_subscribed_to_it_by_name(api: Api, receiver: Receiver) -> None:
    """The second audit's row 3: reset tokens went to every `*` webhook (and the feed)."""
    mailer = await add_webhook(api, receiver.url.replace("/hook", "/mailer"), ["user.password_reset_requested"])
    everything = await add_webhook(api, receiver.url, ["*"])
    user = await api.customer()
    assert (await api.call("POST", "/api/users/password-reset", json={"email": user.email})).status == 202
    await receiver.wait_for(lambda: len(receiver.events("/mailer")) == 1 and len(receiver.events()) == 1)
    to_mailer = next(r for r in receiver.received if r.path == "/mailer").verified(mailer["secret"])
    to_all = next(r for r in receiver.received if r.path == "/hook").verified(everything["secret"])
    assert set(to_mailer["data"]) == {"user_id", "email", "expires_at", "token"}
    assert set(to_all["data"]) == {"user_id", "email", "expires_at"}


@pytest.mark.parametrize(
    ("subscribed", "url", "private_allowed", "gets_token"),
    [
        (["user.password_reset_requested"], "https://mailer.example.com/hook", False, True),
        (["user.password_reset_requested"], "http://mailer.example.com/hook", False, False),
        (["user.password_reset_requested"], "http://127.0.0.1:9000/hook", True, True),
        (["*"], "https://mailer.example.com/hook", False, False),
        (["order.created"], "https://mailer.example.com/hook", False, False),
    ],
)
def test_only_a_named_subscription_over_https_is_the_mailer(
    subscribed: list[str], url: str, private_allowed: bool, gets_token: bool
) -> None:
    config = load(environ={}, webhook_allow_private_targets=private_allowed)
    assert webhooks.is_mailer(subscribed, "user.password_reset_requested", url, config) is gets_token


@pytest.mark.parametrize("config_overrides", [{**FAST_DELIVERY, "webhook_poll_interval_seconds": 3600}])
async def test_an_event_goes_out_at_once_not_at_the_next_poll(api: Api, receiver: Receiver) -> None:
    """The process that commits an event wakes its deliverer: no poll round trip (the
    poll here is an hour away, the receiver's wait 60 s)."""
    await add_webhook(api, receiver.url, ["product.created"])
    product = await api.product(name="At once")
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    assert receiver.events()[0]["data"] == product


@pytest.mark.parametrize("config_overrides", [{**FAST_DELIVERY, "webhook_poll_interval_seconds": 3600}])
async def test_a_webhook_enabled_by_another_process_gets_the_next_event_without_a_poll(
    api: Api, receiver: Receiver, clean_db: str
) -> None:
    """With no webhook enabled at its first turn, the deliverer's wake at a commit only
    asks whether one is enabled now (and fans nothing out). One added behind its back,
    as another process would, is found by such a look: not left to the poll, an hour
    away. The event from before it is not sent to it."""
    await api.product(name="Before any webhook")
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute(
            "INSERT INTO webhooks (url, events, description, secret) VALUES ($1, $2, '', $3)",
            receiver.url,
            ["product.created"],
            webhooks.new_secret(),
        )
    finally:
        await conn.close()
    product = await api.product(name="After the webhook")
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    assert receiver.events()[0]["data"] == product


async def _older_transaction(dsn: str) -> tuple[asyncpg.Connection, Any]:
    """A connection with a transaction that holds a transaction id and stays open: every
    event committed after it is held back from the feed until it ends."""
    conn = await asyncpg.connect(dsn)
    transaction = conn.transaction()
    await transaction.start()
    await conn.fetchval("SELECT pg_current_xact_id()")
    return conn, transaction


async def test_events_committed_behind_an_older_open_transaction_are_held_back_until_it_ends(
    api: Api, clean_db: str
) -> None:
    store = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), 5)
    try:
        # The dispatch position (the deliverer makes it on its first turn).
        await store.execute("INSERT INTO webhook_dispatch VALUES (1, '0', 0) ON CONFLICT DO NOTHING")
        conn, older = await _older_transaction(clean_db)
        try:
            await api.product(name="Behind")
            assert await webhooks_db.held_back(store)
        finally:
            await older.rollback()
            await conn.close()
        released = False
        for _ in range(400):  # until whatever else began before it is over too (20 s at most)
            released = not await webhooks_db.held_back(store)
            if released:
                break
            await asyncio.sleep(0.05)
        assert released
    finally:
        await store.close(5)


@pytest.mark.parametrize("config_overrides", [{**FAST_DELIVERY, "webhook_poll_interval_seconds": 3600}])
async def test_an_event_held_back_by_an_older_transaction_goes_out_when_it_ends_not_at_the_next_poll(
    api: Api, receiver: Receiver, clean_db: str
) -> None:
    """The commit's wake finds the event held back (an older transaction is open): the
    deliverer looks again shortly instead of leaving it to the poll, an hour away."""
    await add_webhook(api, receiver.url, ["product.created"])
    conn, older = await _older_transaction(clean_db)
    try:
        product = await api.product(name="Held back")
        for _ in range(400):  # until a turn has found it held back (20 s at most)
            text = (await api.call("GET", "/metrics")).body.decode()
            if "\nwebhook_events_held_back_total 0.0" not in text:
                break
            await asyncio.sleep(0.05)
        assert "\nwebhook_events_held_back_total 0.0" not in text
    finally:
        await older.rollback()
        await conn.close()
    # No commit wakes the deliverer from now on, and the poll is an hour away.
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    assert receiver.events()[0]["data"] == product


@pytest.mark.parametrize(
    "config_overrides",
    [{**FAST_DELIVERY, "webhook_poll_interval_seconds": 3600, "webhook_max_in_flight_per_webhook": 1}],
)
async def test_a_freed_slot_takes_the_next_due_delivery_at_once(api: Api, receiver: Receiver) -> None:
    """One delivery at a time to this webhook: each one done claims the next, about
    another resource, without waiting for a poll."""
    release = asyncio.Event()

    async def held(got: Received) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=204)

    receiver.answer = held
    await add_webhook(api, receiver.url, ["product.created"])
    made = [await api.product(name=f"One by one {n}") for n in range(6)]
    await receiver.wait_for(lambda: len(receiver.received) == 1)  # the one slot is taken, held
    release.set()  # from now on no event is committed: only freed slots can claim the rest
    await receiver.wait_for(lambda: len(receiver.received) == 6)
    assert sorted(e["data"]["id"] for e in receiver.events()) == sorted(p["id"] for p in made)


async def test_retries_keep_the_webhook_id_and_deliver(api: Api, receiver: Receiver) -> None:
    calls = 0

    async def fail_twice(_: Received) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.Response(status=503 if calls <= 2 else 200)

    receiver.answer = fail_twice
    hook = await add_webhook(api, receiver.url, ["product.created"])
    await api.product()
    await receiver.wait_for(lambda: len(receiver.received) == 3)
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    for got in receiver.received:
        got.verified(hook["secret"])
    log = await log_of(api, hook["id"], 3)
    assert [(a["attempt"], a["response_status"]) for a in log] == [(3, 200), (2, 503), (1, 503)]
    assert log[1]["next_attempt_at"] is not None and log[0]["next_attempt_at"] is None


async def test_each_attempt_shows_its_own_outcome_also_when_a_retry_follows(api: Api, receiver: Receiver) -> None:
    calls = 0

    async def fail_twice(_: Received) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.Response(status=503 if calls <= 2 else 200)

    receiver.answer = fail_twice
    hook = await add_webhook(api, receiver.url, ["product.created"])
    await api.product()
    log = await log_of(api, hook["id"], 3)
    assert [(a["attempt"], a["status"]) for a in log] == [(3, "succeeded"), (2, "failed"), (1, "failed")]
    # a failed attempt followed by a retry says when the retry is due
    assert all(a["next_attempt_at"] is not None for a in log[1:])


async def test_a_failed_first_attempt_of_order_created_still_comes_before_order_paid(
    api: Api, receiver: Receiver
) -> None:
    failed_once = False

    async def fail_first_order_created(got: Received) -> web.StreamResponse:
        nonlocal failed_once
        if got.event["type"] == "order.created" and not failed_once:
            failed_once = True
            return web.Response(status=500)
        return web.Response(status=200)

    receiver.answer = fail_first_order_created
    await add_webhook(api, receiver.url, ["order.created", "order.paid", "payment.succeeded"])
    product = await api.product()
    user = await api.customer()
    order = (await api.order(user, (product["id"], 1))).json
    assert (await api.pay(user, order["id"])).status == 201
    await receiver.wait_for(lambda: len(receiver.received) == 4)
    assert types_of(receiver.events(), order["id"]) == [
        "order.created", "order.created", "payment.succeeded", "order.paid",
    ]  # fmt: skip


async def test_a_delivery_that_keeps_failing_is_recorded_failed_and_the_queue_goes_on(
    api: Api, receiver: Receiver
) -> None:
    async def refuse_created(got: Received) -> web.StreamResponse:
        return web.Response(status=500 if got.event["type"] == "product.created" else 200, text="nope")

    receiver.answer = refuse_created
    hook = await add_webhook(api, receiver.url, ["product.created", "product.updated"])
    product = await api.product()
    admin = await api.admin_user()
    await api.call("PUT", f"/api/products/{product['id']}", json={"price": 5}, token=admin.token)
    await receiver.wait_for(lambda: len(receiver.received) == 4)  # 3 attempts, then the update
    assert types_of(receiver.events()) == ["product.created"] * 3 + ["product.updated"]
    log = await log_of(api, hook["id"], 4)
    assert [(a["event_type"], a["status"]) for a in log] == [
        ("product.updated", "succeeded"), ("product.created", "failed"),
        ("product.created", "failed"), ("product.created", "failed"),
    ]  # fmt: skip
    assert log[1]["next_attempt_at"] is None  # given up: no retry follows
    assert log[1]["error"].startswith("HTTP 500: nope")


async def test_redirects_are_not_followed(api: Api, receiver: Receiver) -> None:
    async def redirect(got: Received) -> web.StreamResponse:
        if got.path == "/hook":
            return web.Response(status=307, headers={"Location": "/elsewhere"})
        return web.Response(status=200)

    receiver.answer = redirect
    hook = await add_webhook(api, receiver.url, ["product.created"])
    await api.product()
    await receiver.wait_for(lambda: len(receiver.received) == 3)
    log = await log_of(api, hook["id"], 3)
    assert {r.path for r in receiver.received} == {"/hook"}
    assert {a["response_status"] for a in log} == {307}


async def test_a_hanging_receiver_delays_only_its_own_webhook(api: Api, receiver: Receiver) -> None:
    release = asyncio.Event()

    async def hang(got: Received) -> web.StreamResponse:
        if got.path == "/slow":
            await release.wait()
        return web.Response(status=200)

    receiver.answer = hang
    await add_webhook(api, receiver.url.replace("/hook", "/slow"), ["product.created"])
    await add_webhook(api, receiver.url, ["product.created"])
    try:
        products = [await api.product(name=f"P{i}") for i in range(5)]
        await receiver.wait_for(lambda: len(receiver.events("/hook")) == 5)
        # The slow one got its first request(s) and is still holding them.
        assert 1 <= len([r for r in receiver.received if r.path == "/slow"]) <= 5
        assert not release.is_set()
        assert [e["data"]["id"] for e in receiver.events("/hook")] == [p["id"] for p in products]
    finally:
        release.set()


async def test_a_webhook_created_after_an_event_does_not_receive_it(api: Api, receiver: Receiver) -> None:
    before = await api.product(name="before")
    await add_webhook(api, receiver.url, ["product.created"])
    after = await api.product(name="after")
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.3)
    assert [e["data"]["id"] for e in receiver.events()] == [after["id"]]
    assert before["id"] != after["id"]


async def test_a_disabled_webhook_gets_nothing_until_enabled_nor_what_happened_meanwhile(
    api: Api, receiver: Receiver
) -> None:
    admin = await api.admin_user()
    hook = await add_webhook(api, receiver.url, ["product.created"])
    off = await api.call("PUT", f"/api/webhooks/{hook['id']}", json={"enabled": False}, token=admin.token)
    assert off.status == 200 and off.json["enabled"] is False
    await api.product(name="while disabled")
    await asyncio.sleep(0.3)
    assert receiver.received == []
    on = await api.call("PUT", f"/api/webhooks/{hook['id']}", json={"enabled": True}, token=admin.token)
    assert on.status == 200
    later = await api.product(name="after enabling")
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.3)
    assert [e["data"]["id"] for e in receiver.events()] == [later["id"]]


@pytest.mark.parametrize("config_overrides", [{**FAST_DELIVERY, "webhook_allow_private_targets": False}])
async def test_a_target_that_now_resolves_privately_is_refused_at_send_time(
    api: Api, receiver: Receiver, db: asyncpg.Connection
) -> None:
    # As if the name resolved to a public address when the webhook was saved and to
    # an internal one now (DNS rebinding): the row is written directly.
    for url in (f"http://localhost:{receiver.port}/hook", receiver.url):
        await db.execute(
            "INSERT INTO webhooks (url, events, secret) VALUES ($1, '{*}', $2)",
            url,
            "whsec_" + base64.b64encode(b"x" * 24).decode(),
        )
    await api.product()
    admin = await api.admin_user()

    async def attempts() -> list[dict[str, Any]]:
        rows = await db.fetch("SELECT error FROM webhook_attempts ORDER BY id")
        return [dict(r) for r in rows]

    for _ in range(200):
        if len(await attempts()) >= 2:
            break
        await asyncio.sleep(0.05)
    errors = [a["error"] for a in await attempts()]
    assert len(errors) >= 2 and all("public address" in (e or "") for e in errors), errors
    # What the name resolved to (the internal network's DNS answers) is not shown to the admin.
    by_name = await db.fetch(
        "SELECT a.error FROM webhook_attempts a JOIN webhooks w ON w.id = a.webhook_id WHERE w.url LIKE '%localhost%'"
    )
    assert by_name and not any("127.0.0.1" in r["error"] or "::1" in r["error"] for r in by_name), by_name
    assert receiver.received == []
    assert admin.token


async def test_the_delivery_log_is_newest_first_and_paged(api: Api, receiver: Receiver) -> None:
    admin = await api.admin_user()
    hook = await add_webhook(api, receiver.url, ["product.created"])
    for i in range(3):
        await api.product(name=f"P{i}")
    await receiver.wait_for(lambda: len(receiver.received) == 3)
    await log_of(api, hook["id"], 3)
    first = await api.call("GET", f"/api/webhooks/{hook['id']}/deliveries?limit=2", token=admin.token)
    assert first.status == 200 and len(first.json["items"]) == 2
    rest = await api.call(
        "GET", f"/api/webhooks/{hook['id']}/deliveries?limit=2&cursor={first.json['next_cursor']}", token=admin.token
    )
    log = first.json["items"] + rest.json["items"]
    assert [a["id"] for a in log] == sorted((a["id"] for a in log), reverse=True)
    assert [a["status"] for a in log] == ["succeeded"] * 3 and rest.json["next_cursor"] is None
    assert set(log[0]) == {
        "id", "event_id", "event_type", "attempt", "status", "response_status", "error", "created_at", "next_attempt_at",
    }  # fmt: skip


async def test_metrics_show_outbox_lag_outcomes_and_queues(api: Api, receiver: Receiver) -> None:
    await add_webhook(api, receiver.url, ["product.created"])
    await api.product()
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    for _ in range(400):  # until the outcome is recorded (20 s at most)
        text = (await api.call("GET", "/metrics")).body.decode()
        if 'webhook_delivery_attempts_total{outcome="succeeded"} 1.0' in text:
            break
        await asyncio.sleep(0.05)
    assert 'webhook_delivery_attempts_total{outcome="succeeded"} 1.0' in text
    for name in ("webhook_outbox_lag_seconds", "webhook_pending_deliveries", "webhook_in_flight_deliveries"):
        assert f"\n{name} " in text, name


@pytest.mark.parametrize("config_overrides", [{**FAST_DELIVERY, "webhook_timeout_seconds": 0.5}])
async def test_an_attempt_without_an_answer_in_time_fails_and_is_retried(api: Api, receiver: Receiver) -> None:
    release = asyncio.Event()

    async def hang_first(_: Received) -> web.StreamResponse:
        if len(receiver.received) == 1:
            await release.wait()
        return web.Response(status=200)

    receiver.answer = hang_first
    hook = await add_webhook(api, receiver.url, ["product.created"])
    try:
        await api.product()
        await receiver.wait_for(lambda: len(receiver.received) == 2)
        log = await log_of(api, hook["id"], 2)
        assert [(a["attempt"], a["status"]) for a in log] == [(2, "succeeded"), (1, "failed")]
        assert log[1]["error"] == "no answer within 0.5 s" and log[1]["response_status"] is None
    finally:
        release.set()


async def test_a_large_answer_is_read_only_up_to_a_limit(api: Api, receiver: Receiver) -> None:
    async def huge(_: Received) -> web.StreamResponse:
        return web.Response(status=500, body=b"x" * 5_000_000)

    receiver.answer = huge
    hook = await add_webhook(api, receiver.url, ["product.created"])
    await api.product()
    await receiver.wait_for(lambda: len(receiver.received) == 3)
    log = await log_of(api, hook["id"], 3)
    assert [a["status"] for a in log] == ["failed", "failed", "failed"]
    assert all(a["response_status"] == 500 and len(a["error"]) <= 300 for a in log)


@pytest.mark.parametrize(
    "config_overrides", [{**FAST_DELIVERY, "webhook_retention_seconds": 0.5, "webhook_max_attempts": 100}]
)
async def test_retention_purges_what_was_delivered_and_keeps_what_is_owed(
    api: Api, receiver: Receiver, app: web.Application, db: asyncpg.Connection
) -> None:
    async def refuse_second(got: Received) -> web.StreamResponse:
        return web.Response(status=500 if got.event["data"]["name"] == "owed" else 200)

    receiver.answer = refuse_second
    hook = await add_webhook(api, receiver.url, ["product.created"])
    await api.product(name="delivered")
    await log_of(api, hook["id"], 1)
    await api.product(name="owed")
    await log_of(api, hook["id"], 2)
    await asyncio.sleep(0.6)  # older than the retention (0.5 s): the delivered event's rows
    purged = await webhooks.purge(app[CONTEXT])
    names = [r["name"] for r in await db.fetch("SELECT data->>'name' AS name FROM events ORDER BY id")]
    assert names == ["owed"] and purged >= 3  # the event, its delivery and its attempt
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == 1
