"""The contract's "Abuse limits": each test reproduces an attack of the hardening
audit (issue 19, row N of its table) and checks that it no longer works."""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from handlers.routing import CONTEXT
from server.app import Options, create_app
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET, make_config
from tests.helpers import Api, Reply, User, unique_email

REAL_HASHING = [{"password_hash_time_cost": 2, "password_hash_memory_kib": 32768, "password_hash_parallelism": 1}]


def _from(address: str) -> dict[str, str]:
    """Headers of a request that a trusted load balancer forwarded for `address`."""
    return {"X-Forwarded-For": address}


async def _login(api: Api, email: str, password: str, address: str | None = None) -> int:
    headers = _from(address) if address else None
    body = {"email": email, "password": password}
    return (await api.call("POST", "/api/users/login", json=body, headers=headers)).status


# --- 1: a burst of wrong passwords gets no more guesses than the limit ---------------


async def test_a_burst_of_wrong_passwords_gets_at_most_the_limit_of_401s(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    statuses = collections.Counter(await asyncio.gather(*(_login(api, email, "wrong-pass") for _ in range(40))))
    assert statuses[401] <= 5, statuses
    assert statuses[401] + statuses[429] == 40, statuses


@pytest.fixture
def server_env() -> dict[str, str]:
    # Connections opened at start: the burst measures the throttle, not how fast a
    # busy machine opens 16 more connections per process.
    return {"DB_POOL_MIN_SIZE": "20"}


async def test_a_burst_of_wrong_passwords_on_two_processes_gets_at_most_the_limit_of_401s(apis: list[Api]) -> None:
    email = unique_email()
    assert (await apis[0].register(email, "password-123")).status == 201
    burst = [_login(apis[i % 2], email, "wrong-pass") for i in range(40)]
    statuses = collections.Counter(await asyncio.gather(*burst))
    assert statuses[401] <= 5, statuses
    assert statuses[401] + statuses[429] == 40, statuses


# --- 2: unindexable and slow catalog searches -------------------------------------------


@pytest.mark.parametrize("q", ["~", "zz", "_" * 200, "%%%%", "a _ %b", "   x  "])
async def test_a_search_no_index_can_serve_is_422(api: Api, q: str) -> None:
    reply = await api.call("GET", "/api/products?" + urlencode({"q": q}))
    assert reply.status == 422, reply
    assert reply.json["errors"][0]["field"] == "q"


@pytest.mark.parametrize("config_overrides", [{"catalog_statement_timeout_ms": 1}])
async def test_a_search_past_the_catalog_timeout_is_503_with_retry_after(api: Api, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO products (name, description, price, currency, stock, stock_received) "
        "SELECT 'Item ' || i, '', i % 9973, 'USD', 1, 1 FROM generate_series(1, 30000) AS i"
    )
    reply = await api.call("GET", "/api/products?q=item&sort=-price&limit=100")
    assert reply.status == 503, reply
    assert int(reply.headers["Retry-After"]) >= 1
    assert (await api.call("GET", "/api/products/1")).status == 200  # the plain reads are not limited


# --- 3: stock hoarding ---------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"order_max_pending_per_user": 3}])
async def test_one_pending_order_past_the_limit_is_409_naming_it_and_reserves_nothing(api: Api) -> None:
    user, product = await api.customer(), await api.product(stock=100)
    for _ in range(3):
        assert (await api.order(user, (product["id"], 1))).status == 201
    refused = await api.order(user, (product["id"], 1))
    assert refused.status == 409
    assert refused.json["limit"] == "ORDER_MAX_PENDING_PER_USER"
    assert await api.stock(product["id"]) == 97
    assert (await api.order(await api.customer(), (product["id"], 1))).status == 201  # others are not limited


@pytest.mark.parametrize("config_overrides", [{"order_max_pending_per_user": 3}])
async def test_simultaneous_orders_cannot_pass_the_pending_limit_together(api: Api) -> None:
    user, product = await api.customer(), await api.product(stock=100)
    replies = await asyncio.gather(*(api.order(user, (product["id"], 1)) for _ in range(12)))
    assert sorted(r.status for r in replies) == [201] * 3 + [409] * 9
    assert await api.stock(product["id"]) == 97


@pytest.mark.parametrize("config_overrides", [{"order_max_held_units_per_product": 10}])
async def test_holding_more_units_of_a_product_than_allowed_is_409_naming_the_limit(api: Api) -> None:
    user, product, other = await api.customer(), await api.product(stock=100), await api.product(stock=100)
    first = await api.order(user, (product["id"], 6))
    assert first.status == 201
    refused = await api.order(user, (other["id"], 1), (product["id"], 5))
    assert refused.status == 409
    assert refused.json["limit"] == "ORDER_MAX_HELD_UNITS_PER_PRODUCT"
    assert refused.json["product_id"] == product["id"]
    assert (await api.stock(product["id"]), await api.stock(other["id"])) == (94, 100)
    assert (await api.order(user, (product["id"], 4))).status == 201  # exactly the limit


@pytest.mark.parametrize("config_overrides", [{"order_max_held_units_per_product": 10}])
async def test_changing_lines_past_the_held_units_limit_is_409_and_changes_nothing(api: Api) -> None:
    user, product = await api.customer(), await api.product(stock=100)
    await api.order(user, (product["id"], 4))
    second = (await api.order(user, (product["id"], 2))).json
    items = {"items": [{"product_id": product["id"], "quantity": 7}]}
    refused = await api.call("PUT", f"/api/orders/{second['id']}", json=items, token=user.token)
    assert refused.status == 409
    assert refused.json["limit"] == "ORDER_MAX_HELD_UNITS_PER_PRODUCT"
    assert await api.stock(product["id"]) == 94
    items["items"][0]["quantity"] = 6
    assert (await api.call("PUT", f"/api/orders/{second['id']}", json=items, token=user.token)).status == 200


async def _order_from(api: Api, user: User, address: str, *items: tuple[int, int]) -> Reply:
    body = {"items": [{"product_id": pid, "quantity": qty} for pid, qty in items]}
    return await api.call("POST", "/api/orders", json=body, token=user.token, headers=_from(address))


@pytest.mark.parametrize(
    "config_overrides", [{"trust_forwarded_for": True, "order_max_held_units_per_product_per_ip": 10}]
)
async def test_fresh_accounts_from_one_address_hold_at_most_the_address_limit(api: Api) -> None:
    """The second audit's row 2: five fresh accounts from one address held all 5,000 units."""
    product = await api.product(stock=100)
    accounts = [await api.customer() for _ in range(5)]
    replies = [await _order_from(api, user, "198.51.100.9", (product["id"], 4)) for user in accounts]
    assert [r.status for r in replies] == [201, 201, 409, 409, 409]
    assert replies[2].json["limit"] == "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP"
    assert replies[2].json["product_id"] == product["id"]
    assert await api.stock(product["id"]) == 92  # the refused ones reserved nothing
    assert (await _order_from(api, accounts[4], "203.0.113.9", (product["id"], 4))).status == 201


@pytest.mark.parametrize(
    "config_overrides", [{"trust_forwarded_for": True, "order_max_held_units_per_product_per_ip": 10}]
)
async def test_simultaneous_fresh_accounts_from_one_address_cannot_pass_its_limit_together(api: Api) -> None:
    product = await api.product(stock=100)
    accounts = [await api.customer() for _ in range(8)]
    replies = await asyncio.gather(*(_order_from(api, user, "198.51.100.10", (product["id"], 3)) for user in accounts))
    assert sorted(r.status for r in replies) == [201] * 3 + [409] * 5
    assert await api.stock(product["id"]) == 91


@pytest.mark.parametrize(
    "config_overrides", [{"trust_forwarded_for": True, "order_max_held_units_per_product_per_ip": 10}]
)
async def test_changing_items_past_the_address_limit_is_409_and_changes_nothing(api: Api) -> None:
    product = await api.product(stock=100)
    first, second = await api.customer(), await api.customer()
    assert (await _order_from(api, first, "198.51.100.11", (product["id"], 6))).status == 201
    order = (await _order_from(api, second, "198.51.100.11", (product["id"], 2))).json
    change = {"items": [{"product_id": product["id"], "quantity": 5}]}
    refused = await api.call("PUT", f"/api/orders/{order['id']}", json=change, token=second.token)
    assert (refused.status, refused.json["limit"]) == (409, "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP")
    assert await api.stock(product["id"]) == 92


# --- 4 and 13: ownership before queueing ---------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"actor_mailbox_size": 2}])
async def test_a_flood_against_someone_elses_order_is_404_and_never_delays_the_owner(api: Api) -> None:
    owner, stranger, product = await api.customer(), await api.customer(), await api.product(stock=1000)
    order_id = (await api.order(owner, (product["id"], 1))).json["id"]
    path = f"/api/orders/{order_id}"
    flood = [
        *(api.call("PUT", path, json={"status": "cancelled"}, token=stranger.token) for _ in range(150)),
        *(api.call("DELETE", path, token=stranger.token) for _ in range(150)),
        *(api.pay(stranger, order_id) for _ in range(100)),
    ]
    attack = asyncio.gather(*flood)
    owners = []
    for quantity in range(2, 22):
        items = {"items": [{"product_id": product["id"], "quantity": quantity}]}
        owners.append((await api.call("PUT", path, json=items, token=owner.token)).status)
    attackers = collections.Counter(reply.status for reply in await attack)
    assert attackers == {404: 400}
    assert owners == [200] * 20


async def test_paying_an_order_that_is_not_yours_stores_no_key_and_starts_no_actor(
    api: Api, client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    owner, stranger, product = await api.customer(), await api.customer(), await api.product()
    order_id = (await api.order(owner, (product["id"], 1))).json["id"]
    targets = [order_id, order_id + 1000, 999_999]
    replies = await asyncio.gather(
        *(api.pay(stranger, target, key=f"k-{target}-{i}") for target in targets for i in range(20))
    )
    assert {reply.status for reply in replies} == {404}
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert client.app[CONTEXT].supervisor.live_count == 0


@pytest.mark.parametrize("config_overrides", [{"max_commands_per_user": 2, "payment_provider_latency_ms": 400}])
async def test_one_users_commands_in_flight_are_bounded(api: Api) -> None:
    user, product = await api.customer(), await api.product(stock=100)
    order_ids = [(await api.order(user, (product["id"], 1))).json["id"] for _ in range(6)]
    replies = await asyncio.gather(*(api.pay(user, order_id) for order_id in order_ids))
    statuses = collections.Counter(reply.status for reply in replies)
    assert statuses == {201: 2, 429: 4}, statuses
    assert all("Retry-After" in reply.headers for reply in replies if reply.status == 429)


# --- 5: a client-supplied X-Forwarded-For is not believed --------------------------------


@pytest.mark.parametrize(
    "config_overrides",
    [{"trust_forwarded_for": True, "login_max_failures_per_ip": 3, "login_max_failures_per_email": 0}],
)
async def test_spoofed_forwarded_for_entries_do_not_escape_the_address_limit(api: Api) -> None:
    statuses = []
    for i in range(6):
        # The client wrote the first entry; the load balancer appended the address it saw.
        headers = _from(f"198.51.100.{i}, 203.0.113.9")
        body = {"email": unique_email(), "password": "wrong-pass"}
        statuses.append((await api.call("POST", "/api/users/login", json=body, headers=headers)).status)
    assert statuses == [401, 401, 401, 429, 429, 429]


@pytest.mark.parametrize(
    "config_overrides",
    [{"trusted_proxies": "127.0.0.1, 10.0.0.0/8", "login_max_failures_per_ip": 2, "login_max_failures_per_email": 0}],
)
async def test_trusted_proxies_are_skipped_from_the_right_and_the_rest_not_believed(api: Api) -> None:
    async def attempt(forwarded: str) -> int:
        body = {"email": unique_email(), "password": "wrong-pass"}
        return (await api.call("POST", "/api/users/login", json=body, headers=_from(forwarded))).status

    assert [await attempt(f"spoofed-{i}, 203.0.113.7, 10.1.2.3") for i in range(3)] == [401, 401, 429]
    assert await attempt("203.0.113.8, 10.1.2.3") == 401  # another client behind the same proxies


# --- 6: sign-up floods, the hashing queue, and lockouts by strangers -----------------------


@pytest.mark.parametrize(
    "config_overrides",
    [{"trust_forwarded_for": True, "login_max_failures_per_pair": 2, "login_max_failures_per_email": 5}],
)
async def test_attempts_the_pair_refuses_do_not_use_up_the_emails_ceiling(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    # A stranger at one address: two guesses, then the pair refuses every further one.
    guesses = [await _login(api, email, "wrong-pass", "203.0.113.50") for _ in range(12)]
    assert guesses[:2] == [401, 401] and set(guesses[2:]) == {429}
    # Those refusals counted on no key: the owner, elsewhere, is not locked out.
    assert await _login(api, email, "password-123", "198.51.100.7") == 200


@pytest.mark.parametrize("config_overrides", [{"register_max_per_ip": 3}])
async def test_registrations_past_the_per_address_limit_are_429_with_retry_after(api: Api) -> None:
    assert [(await api.register()).status for _ in range(3)] == [201] * 3
    refused = await api.register()
    assert refused.status == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 3600


@pytest.mark.parametrize("config_overrides", [{**REAL_HASHING[0], "password_hash_max_queued": 2}])
async def test_a_registration_flood_beyond_the_hashing_queue_is_503_with_retry_after(api: Api) -> None:
    replies = await asyncio.gather(*(api.register() for _ in range(16)))
    statuses = collections.Counter(reply.status for reply in replies)
    assert statuses[201] >= 4 and statuses[503] >= 1, statuses
    assert set(statuses) <= {201, 503}, statuses
    assert all(reply.headers.get("Retry-After") for reply in replies if reply.status == 503)


@pytest.mark.parametrize("config_overrides", [{"trust_forwarded_for": True}])
async def test_a_stranger_guessing_the_admin_password_does_not_lock_the_admin_out(api: Api) -> None:
    guesses = [await _login(api, ADMIN_EMAIL, f"guess-{i}-password", "198.51.100.66") for i in range(12)]
    assert guesses[:5] == [401] * 5 and 429 in guesses
    assert await _login(api, ADMIN_EMAIL, ADMIN_PASSWORD, "203.0.113.10") == 200


async def test_the_pair_delay_grows_with_each_further_attempt(api: Api, db: asyncpg.Connection) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    for _ in range(5):
        await _login(api, email, "wrong-pass")
    waits = []
    for _ in range(3):
        # Let the delay pass (in the database's clock), then try again.
        await db.execute("UPDATE rate_limits SET not_before = now() WHERE key LIKE 'pair:%'")
        assert await _login(api, email, "wrong-pass") == 401
        refused = await api.login(email, "wrong-pass")
        assert refused.status == 429
        waits.append(int(refused.headers["Retry-After"]))
    assert waits[0] < waits[1] < waits[2], waits


# --- 7: card testing ---------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"payment_max_declines_per_order": 3}])
async def test_payments_of_an_order_declined_too_often_are_409(api: Api) -> None:
    user, product = await api.customer(), await api.product()
    order_id = (await api.order(user, (product["id"], 1))).json["id"]
    cards = ["tok_chargeDeclined", "tok_test_1", "tok_test_2"]
    assert [(await api.pay(user, order_id, card=card)).status for card in cards] == [402] * 3
    refused = await api.pay(user, order_id, card="tok_visa")
    assert refused.status == 409
    assert refused.json["limit"] == "PAYMENT_MAX_DECLINES_PER_ORDER"


@pytest.mark.parametrize("config_overrides", [{"payment_max_declines_per_user": 4}])
async def test_a_customers_declines_per_day_are_limited_with_429(api: Api) -> None:
    user, product = await api.customer(), await api.product(stock=100)
    order_ids = [(await api.order(user, (product["id"], 1))).json["id"] for _ in range(3)]
    statuses = [(await api.pay(user, order_ids[i // 2], card=f"tok_x{i}")).status for i in range(4)]
    assert statuses == [402] * 4
    refused = await api.pay(user, order_ids[2], card="tok_visa")
    assert refused.status == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400
    other = await api.customer()
    other_order = (await api.order(other, (product["id"], 1))).json["id"]
    assert (await api.pay(other, other_order)).status == 201


@pytest.mark.parametrize("config_overrides", [{"trust_forwarded_for": True, "payment_max_declines_per_ip": 3}])
async def test_declines_of_fresh_accounts_from_one_address_are_limited_with_429(api: Api) -> None:
    """The second audit's row 2: three fresh accounts tried 60 cards, all 402, never a 429."""
    product = await api.product(stock=100)
    statuses = []
    for attempt in range(5):
        user = await api.customer()
        order = (await _order_from(api, user, "198.51.100.12", (product["id"], 1))).json
        body = {"order_id": order["id"], "payment_method": {"type": "card", "token": f"tok_guess_{attempt}"}}
        reply = await api.call("POST", "/api/payments", json=body, token=user.token, headers=_from("198.51.100.12"))
        statuses.append(reply.status)
    assert statuses == [402, 402, 402, 429, 429]
    assert 0 < int(reply.headers["Retry-After"]) <= 86_400
    elsewhere = await api.customer()
    order = (await _order_from(api, elsewhere, "203.0.113.12", (product["id"], 1))).json
    body = {"order_id": order["id"], "payment_method": {"type": "card", "token": "tok_visa"}}
    paid = await api.call("POST", "/api/payments", json=body, token=elsewhere.token, headers=_from("203.0.113.12"))
    assert paid.status == 201


# --- 8: expensive validation ----------------------------------------------------------------


async def test_a_body_with_80000_unknown_keys_gets_at_most_20_errors(api: Api) -> None:
    body: dict[str, Any] = {f"k{i}": 0 for i in range(80_000)}
    body.update({"email": unique_email(), "password": "password-123", "name": "N"})
    reply = await api.call("POST", "/api/users/register", json=body)
    assert reply.status == 422
    assert len(reply.json["errors"]) <= 20
    assert len(reply.body) < 10_000


async def test_an_order_of_100_unknown_products_gets_at_most_20_errors(api: Api) -> None:
    """The black-box run: 100 unknown products answered 100 `errors`."""
    user = await api.customer()
    reply = await api.order(user, *((10**9 + n, 1) for n in range(100)))
    assert reply.status == 422
    assert len(reply.json["errors"]) == 20
    assert reply.json["errors"][0] == {"field": "items[0].product_id", "message": "no such product"}


async def test_nested_unknown_keys_get_at_most_20_errors(api: Api) -> None:
    user = await api.customer()
    method = {"type": "card", "token": "tok_visa", **{f"k{i}": 0 for i in range(50_000)}}
    reply = await api.call("POST", "/api/payments", json={"order_id": 1, "payment_method": method}, token=user.token)
    assert reply.status == 422
    assert len(reply.json["errors"]) <= 20


# --- 9: the env admin never resets a password ----------------------------------------------


async def test_an_admin_password_changed_through_the_api_survives_a_restart(
    api: Api, aiohttp_client: Any, clean_db: str
) -> None:
    admin = await api.admin_user()
    change = {"password": "changed-admin-password", "current_password": ADMIN_PASSWORD}
    assert (await api.call("PUT", "/api/users/profile", json=change, token=admin.token)).status == 200
    restarted = Api(await aiohttp_client(create_app(make_config(clean_db), Options(clean_db, JWT_SECRET))))
    assert (await restarted.login(ADMIN_EMAIL, ADMIN_PASSWORD)).status == 401
    assert (await restarted.login(ADMIN_EMAIL, "changed-admin-password")).status == 200


async def test_the_env_admin_never_promotes_an_existing_customer(
    aiohttp_client: Any, clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    email = unique_email("owner")
    first = Api(await aiohttp_client(create_app(make_config(clean_db), Options(clean_db, JWT_SECRET))))
    await first.register(email, "own-password-1")
    config = make_config(clean_db, admin_email=email, admin_password="env-password-1")
    with caplog.at_level(logging.WARNING, logger="server.domain.users"):
        second = Api(await aiohttp_client(create_app(config, Options(clean_db, JWT_SECRET))))
    assert (await second.login(email, "env-password-1")).status == 401
    login = await second.login(email, "own-password-1")
    profile = await second.call("GET", "/api/users/profile", token=login.json["access_token"])
    assert profile.json["role"] == "customer"
    assert [r.variable for r in caplog.records] == ["ADMIN_EMAIL"]  # type: ignore[attr-defined]


async def test_an_admins_old_email_registered_by_a_stranger_is_no_admin_after_restarts(
    api: Api, aiohttp_client: Any, clean_db: str
) -> None:
    """The second audit's takeover: the admin moves to a new email, a stranger
    registers the old ADMIN_EMAIL, and the service restarts (twice) with it."""
    admin = await api.admin_user()
    moved = {"email": unique_email("admin-moved"), "current_password": ADMIN_PASSWORD}
    assert (await api.call("PUT", "/api/users/profile", json=moved, token=admin.token)).status == 200
    assert (await api.register(ADMIN_EMAIL, "strangers-password")).status == 201
    for _ in range(2):
        restarted = Api(await aiohttp_client(create_app(make_config(clean_db), Options(clean_db, JWT_SECRET))))
        stranger = (await restarted.login(ADMIN_EMAIL, "strangers-password")).json["access_token"]
        assert (await restarted.call("GET", "/api/events", token=stranger)).status == 403
        hook = {"url": "https://example.com/hook", "events": ["*"]}
        assert (await restarted.call("POST", "/api/webhooks", json=hook, token=stranger)).status == 403
    admin_again = (await restarted.login(moved["email"], ADMIN_PASSWORD)).json["access_token"]
    assert (await restarted.call("GET", "/api/events", token=admin_again)).status == 200


# --- 10: /metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"metrics_token": "scrape-token-0123456789"}])
async def test_metrics_need_the_metrics_token_when_one_is_set(api: Api) -> None:
    assert (await api.call("GET", "/metrics")).status == 401
    assert (await api.call("GET", "/metrics", token="wrong-token-0123456789")).status == 401
    customer = await api.customer()
    assert (await api.call("GET", "/metrics", token=customer.token)).status == 401
    reply = await api.call("GET", "/metrics", token="scrape-token-0123456789")
    assert reply.status == 200
    assert b"http_requests" in reply.body or b"# HELP" in reply.body


# --- 11: wrong current_password is a password guess ----------------------------------------


@pytest.mark.parametrize("config_overrides", [{"login_max_failures_per_pair": 3}])
async def test_wrong_current_passwords_count_towards_the_login_throttle(api: Api) -> None:
    user = await api.customer()
    change = {"password": "new-password-1", "current_password": "wrong-guess"}
    statuses = [(await api.call("PUT", "/api/users/profile", json=change, token=user.token)).status for _ in range(4)]
    assert statuses == [422, 422, 422, 429]
    assert (await api.login(user.email, user.password)).status == 429  # the same throttle


# --- 12: docs assets and what counts as an outage ------------------------------------------


async def test_an_over_long_docs_asset_name_is_404_not_503(api: Api) -> None:
    for name in ("a" * 300 + ".js", "b" * 5000, "swagger-ui.css.map", "..%2Fopenapi.json"):
        reply = await api.call("GET", f"/api/docs/assets/{name}")
        assert reply.status == 404, (name[:20], reply)


async def test_unknown_docs_asset_names_do_not_grow_the_cache(api: Api) -> None:
    from handlers import openapi

    for i in range(300):
        await api.call("GET", f"/api/docs/assets/missing-{i}.js")
    assert openapi._asset.cache_info().currsize <= len(openapi._BUNDLE_FILES) + 1


def test_only_network_errors_count_as_a_database_outage() -> None:
    from db.pool import is_outage

    assert not is_outage(OSError(errno.ENAMETOOLONG, "File name too long"))
    assert not is_outage(FileNotFoundError(errno.ENOENT, "No such file"))
    assert is_outage(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_outage(OSError(errno.EHOSTUNREACH, "No route to host"))


# --- 14: what responses reveal -------------------------------------------------------------


async def test_no_response_names_software_versions_and_all_say_nosniff(api: Api) -> None:
    for path in ("/healthz", "/api/products", "/api/nowhere", "/api/docs", "/metrics", "/api/docs/assets/x"):
        reply = await api.call("GET", path)
        assert reply.headers["Server"] == "storefront", (path, reply.headers["Server"])
        assert reply.headers["X-Content-Type-Options"] == "nosniff", path


async def test_the_docs_page_allows_only_its_own_assets_and_no_framing(api: Api) -> None:
    reply = await api.call("GET", "/api/docs")
    policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert reply.headers["X-Frame-Options"] == "DENY"
