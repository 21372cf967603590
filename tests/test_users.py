"""The Users section of the contract, through HTTP on a real database."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.helpers import Api, unique_email

USER_FIELDS = {"id", "email", "name", "role", "created_at", "updated_at"}


async def test_register_returns_201_with_the_user_and_no_password(api: Api) -> None:
    reply = await api.register("new@example.com", "password-123", "New Person")
    assert reply.status == 201
    assert set(reply.json) == USER_FIELDS
    assert reply.json["role"] == "customer"
    assert "password" not in reply.body.decode() and "argon2" not in reply.body.decode()


async def test_register_trims_and_lowercases_the_email(api: Api) -> None:
    reply = await api.register("  Mixed.Case@Example.COM ")
    assert reply.status == 201
    assert reply.json["email"] == "mixed.case@example.com"


async def test_register_duplicate_email_in_other_case_is_409(api: Api) -> None:
    assert (await api.register("dup@example.com")).status == 201
    reply = await api.register("DUP@example.com")
    assert reply.status == 409
    assert reply.content_type == "application/problem+json"


async def test_register_trims_the_name(api: Api) -> None:
    reply = await api.register(name="  Ada  ")
    assert reply.json["name"] == "Ada"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": "password-123", "name": "A"}, "email"),
        ({"email": "a@example.com", "password": "short", "name": "A"}, "password"),
        ({"email": "a@example.com", "password": "x" * 129, "name": "A"}, "password"),
        ({"email": "a@example.com", "password": "password-123", "name": "   "}, "name"),
        ({"email": "a@example.com", "password": "password-123", "name": "n" * 101}, "name"),
        ({"email": "a@example.com", "password": "password-123"}, "name"),
        ({"email": "a@example.com", "password": 12345678, "name": "A"}, "password"),
    ],
)
async def test_register_validation_names_the_field(api: Api, body: dict[str, object], field: str) -> None:
    reply = await api.call("POST", "/api/users/register", json=body)
    assert reply.status == 422
    assert field in [e["field"] for e in reply.json["errors"]]


async def test_register_accepts_limits_8_and_128_password_and_100_name(api: Api) -> None:
    assert (await api.register(password="p" * 8, name="n" * 100)).status == 201
    assert (await api.register(password="p" * 128)).status == 201


# Passwords that are too easy to guess (the contract's "Passwords", 2026-12-05).
COMMON_PASSWORDS = ["password", "PASSWORD1", "Sunshine", "qwertyuiop", "iloveyou"]
WHITESPACE_PASSWORDS = [" " * 8, "\t" * 9, "\u3000" * 8, " \n \r\n   \u00a0"]


@pytest.mark.parametrize("password", COMMON_PASSWORDS + WHITESPACE_PASSWORDS)
async def test_registering_with_a_common_or_whitespace_password_is_422(api: Api, password: str) -> None:
    email = unique_email()
    reply = await api.register(email, password)
    assert reply.status == 422, reply
    assert [e["field"] for e in reply.json["errors"]] == ["password"]
    assert (await api.login(email, password)).status == 401


@pytest.mark.parametrize("password", COMMON_PASSWORDS + WHITESPACE_PASSWORDS)
async def test_changing_to_a_common_or_whitespace_password_is_422(api: Api, password: str) -> None:
    user = await api.customer()
    reply = await api.call(
        "PUT", "/api/users/profile", json={"password": password, "current_password": user.password}, token=user.token
    )
    assert reply.status == 422, reply
    assert (await api.login(user.email, user.password)).status == 200


async def test_a_password_with_spaces_around_other_characters_is_accepted(api: Api) -> None:
    assert (await api.register(password="  a b c d  ")).status == 201


async def test_nobody_can_register_as_admin(api: Api) -> None:
    body = {"email": unique_email(), "password": "password-123", "name": "Eve", "role": "admin"}
    reply = await api.call("POST", "/api/users/register", json=body)
    assert reply.status == 422
    assert (await api.login(body["email"], body["password"])).status == 401


async def test_login_returns_bearer_token_with_expiry(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    reply = await api.login(email.upper(), "password-123")
    assert reply.status == 200
    assert reply.json["token_type"] == "Bearer"
    assert reply.json["expires_in"] == 3600
    assert reply.json["access_token"].count(".") == 2


async def test_login_wrong_password_and_unknown_email_get_the_same_401(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    wrong_password = await api.login(email, "password-xyz")
    unknown_email = await api.login(unique_email(), "password-123")
    assert wrong_password.status == unknown_email.status == 401
    assert wrong_password.body == unknown_email.body


REAL_HASHING = [{"password_hash_memory_kib": 32768, "password_hash_time_cost": 2}]


@pytest.mark.parametrize("config_overrides", REAL_HASHING)
async def test_login_takes_about_the_same_time_for_unknown_emails(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")

    async def timed(address: str) -> float:
        started = time.perf_counter()
        await api.login(address, "password-xyz")
        return time.perf_counter() - started

    known = sorted([await timed(email) for _ in range(3)])[1]
    unknown = sorted([await timed(unique_email()) for _ in range(3)])[1]
    # Both verify an argon2 hash; an unknown email must not answer in a fraction of the time.
    assert unknown > known * 0.4


async def test_profile_returns_the_caller(api: Api) -> None:
    user = await api.customer(name="Grace")
    reply = await api.call("GET", "/api/users/profile", token=user.token)
    assert reply.status == 200
    assert reply.json["email"] == user.email and reply.json["name"] == "Grace"
    assert set(reply.json) == USER_FIELDS


async def test_profile_without_token_is_401_with_www_authenticate(api: Api) -> None:
    reply = await api.call("GET", "/api/users/profile")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.content_type == "application/problem+json"


async def test_profile_update_changes_name_and_updated_at(api: Api) -> None:
    user = await api.customer(name="Old")
    before = (await api.call("GET", "/api/users/profile", token=user.token)).json
    reply = await api.call("PUT", "/api/users/profile", json={"name": " New "}, token=user.token)
    assert reply.status == 200
    assert reply.json["name"] == "New"
    assert reply.json["updated_at"] > before["updated_at"]


async def test_changing_email_requires_current_password(api: Api) -> None:
    user = await api.customer()
    missing = await api.call("PUT", "/api/users/profile", json={"email": unique_email()}, token=user.token)
    assert missing.status == 422
    assert missing.json["errors"][0]["field"] == "current_password"
    wrong = await api.call(
        "PUT", "/api/users/profile", json={"email": unique_email(), "current_password": "nope-nope"}, token=user.token
    )
    assert wrong.status == 422
    new_email = unique_email()
    ok = await api.call(
        "PUT",
        "/api/users/profile",
        json={"email": new_email.upper(), "current_password": user.password},
        token=user.token,
    )
    assert ok.status == 200
    assert ok.json["email"] == new_email
    assert (await api.login(new_email, user.password)).status == 200


async def test_changing_email_to_a_taken_one_is_409(api: Api) -> None:
    first, second = await api.customer(), await api.customer()
    reply = await api.call(
        "PUT",
        "/api/users/profile",
        json={"email": first.email, "current_password": second.password},
        token=second.token,
    )
    assert reply.status == 409


async def test_password_change_requires_current_password(api: Api) -> None:
    user = await api.customer()
    reply = await api.call("PUT", "/api/users/profile", json={"password": "new-password-1"}, token=user.token)
    assert reply.status == 422
    assert (await api.login(user.email, user.password)).status == 200


async def test_password_change_revokes_older_tokens(api: Api) -> None:
    user = await api.customer()
    reply = await api.call(
        "PUT",
        "/api/users/profile",
        json={"password": "new-password-1", "current_password": user.password},
        token=user.token,
    )
    assert reply.status == 200
    old = await api.call("GET", "/api/users/profile", token=user.token)
    assert old.status == 401
    assert (await api.login(user.email, user.password)).status == 401
    fresh = await api.login(user.email, "new-password-1")
    assert (await api.call("GET", "/api/users/profile", token=fresh.json["access_token"])).status == 200


async def test_profile_update_cannot_change_role(api: Api) -> None:
    user = await api.customer()
    reply = await api.call("PUT", "/api/users/profile", json={"name": "X", "role": "admin"}, token=user.token)
    assert reply.status == 422
    profile = await api.call("GET", "/api/users/profile", token=user.token)
    assert profile.json["role"] == "customer"


async def test_empty_profile_update_is_422(api: Api) -> None:
    user = await api.customer()
    reply = await api.call("PUT", "/api/users/profile", json={}, token=user.token)
    assert reply.status == 422


async def test_admin_from_environment_exists_and_is_admin(api: Api) -> None:
    admin = await api.admin_user()
    profile = await api.call("GET", "/api/users/profile", token=admin.token)
    assert profile.json["role"] == "admin"


async def test_repeated_failed_logins_for_one_email_are_throttled_with_retry_after(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    statuses = [(await api.login(email, "wrong-password")).status for _ in range(5)]
    assert statuses == [401] * 5
    throttled = await api.login(email, "password-123")  # even the right password now waits
    assert throttled.status == 429
    assert int(throttled.headers["Retry-After"]) > 0
    other = unique_email()
    await api.register(other, "password-123")
    assert (await api.login(other, "password-123")).status == 200  # other emails unaffected


@pytest.mark.parametrize(
    "config_overrides",
    [{"login_max_failures_per_ip": 3, "login_max_failures_per_email": 0}],
)
async def test_repeated_failed_logins_from_one_address_are_throttled(api: Api) -> None:
    for _ in range(3):
        assert (await api.login(unique_email(), "wrong-password")).status == 401
    reply = await api.login(unique_email(), "wrong-password")
    assert reply.status == 429
    assert "Retry-After" in reply.headers


async def test_successful_login_clears_the_email_failure_count(api: Api) -> None:
    email = unique_email()
    await api.register(email, "password-123")
    for _ in range(4):
        await api.login(email, "wrong-password")
    assert (await api.login(email, "password-123")).status == 200
    for _ in range(4):
        assert (await api.login(email, "wrong-password")).status == 401


@pytest.mark.parametrize("config_overrides", REAL_HASHING)
async def test_login_burst_does_not_stall_other_requests(api: Api) -> None:
    """Hashing runs off the event loop: health answers while logins hash."""
    email = unique_email()
    await api.register(email, "password-123")
    logins = [asyncio.create_task(api.login(email, "password-123")) for _ in range(8)]
    await asyncio.sleep(0)
    health = await api.call("GET", "/healthz")
    assert health.status == 200
    assert not all(task.done() for task in logins)
    await asyncio.gather(*logins)


async def test_token_of_deleted_user_is_401(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    await db.execute("DELETE FROM users WHERE id = $1", user.id)
    reply = await api.call("GET", "/api/users/profile", token=user.token)
    assert reply.status == 401
    assert (await api.call("GET", "/api/orders", token=user.token)).status == 401
