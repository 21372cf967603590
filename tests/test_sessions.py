"""Sessions: refresh-token rotation with reuse detection, logout, password changes
and password resets (the "Sessions" section of the contract), over HTTP on a real
PostgreSQL; the cross-process rules on two real server processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web

from db import password_resets as password_resets_db
from db import sessions as sessions_db
from db.pool import Database
from handlers.routing import CONTEXT
from tests.helpers import Api, Reply, ServerProcess, User, all_events, scrape, unique_email

REFRESH = "/api/users/token/refresh"
LOGOUT = "/api/users/logout"
RESET = "/api/users/password-reset"
CONFIRM = "/api/users/password-reset/confirm"
PROFILE = "/api/users/profile"
RESET_EVENT = "user.password_reset_requested"


async def _login(api: Api, user: User, password: str | None = None) -> dict[str, Any]:
    reply = await api.login(user.email, password or user.password)
    assert reply.status == 200, reply
    grant: dict[str, Any] = reply.json
    return grant


def _sid(grant: dict[str, Any]) -> int:
    sid: int = jwt.decode(grant["access_token"], options={"verify_signature": False})["sid"]
    return sid


async def _refresh(api: Api, refresh_token: str) -> Reply:
    return await api.call("POST", REFRESH, json={"refresh_token": refresh_token})


async def _profile_status(api: Api, access_token: str) -> int:
    return (await api.call("GET", PROFILE, token=access_token)).status


async def _reset_tokens(db: asyncpg.Connection, email: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT data FROM events WHERE type = $1 ORDER BY id", RESET_EVENT)
    return [data for row in rows if (data := json.loads(row["data"]))["email"] == email]


async def _request_reset(api: Api, db: asyncpg.Connection, user: User) -> str:
    reply = await api.call("POST", RESET, json={"email": user.email})
    assert reply.status == 202, reply
    token: str = (await _reset_tokens(db, user.email))[-1]["token"]
    return token


# --- login and refresh ------------------------------------------------------------


async def test_login_answers_a_refresh_token_with_its_lifetime(api: Api) -> None:
    grant = await _login(api, await api.customer())
    assert set(grant) == {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}
    assert len(grant["refresh_token"]) >= 22  # 128+ bits in URL-safe base64
    assert 30 * 86400 - 5 <= grant["refresh_expires_in"] <= 30 * 86400


async def test_refresh_tokens_are_stored_only_as_sha256_hashes(api: Api, db: asyncpg.Connection) -> None:
    grant = await _login(api, await api.customer())
    digest = hashlib.sha256(grant["refresh_token"].encode()).digest()
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens WHERE token_hash = $1", digest) == 1
    dump = await db.fetchval("SELECT string_agg(t::text, ' ') FROM refresh_tokens t")
    assert grant["refresh_token"] not in dump


async def test_a_refresh_gives_new_tokens_that_work_and_spends_the_old_one(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    first = await _login(api, user)
    reply = await _refresh(api, first["refresh_token"])
    assert reply.status == 200, reply
    second = reply.json
    assert second["token_type"] == "Bearer" and second["refresh_token"] != first["refresh_token"]
    assert second["refresh_expires_in"] <= first["refresh_expires_in"]  # no refresh extends the session
    assert await _profile_status(api, second["access_token"]) == 200
    assert (await _refresh(api, second["refresh_token"])).status == 200
    chain = await db.fetch(
        "SELECT id, previous_id, spent_at FROM refresh_tokens WHERE session_id = $1 ORDER BY id", _sid(first)
    )
    assert [row["previous_id"] for row in chain] == [None, chain[0]["id"], chain[1]["id"]]
    assert [row["spent_at"] is not None for row in chain] == [True, True, False]


async def test_a_refresh_records_when_the_session_was_last_used(api: Api, db: asyncpg.Connection) -> None:
    grant = await _login(api, await api.customer())
    await db.execute("UPDATE sessions SET last_used_at = now() - interval '1 day'")
    assert (await _refresh(api, grant["refresh_token"])).status == 200
    used = await db.fetch("SELECT id FROM sessions WHERE last_used_at > now() - interval '1 minute'")
    assert [row["id"] for row in used] == [_sid(grant)]


async def test_a_replayed_refresh_token_revokes_the_session_and_its_newest_tokens(api: Api) -> None:
    user = await api.customer()
    stolen = await _login(api, user)
    newest = (await _refresh(api, stolen["refresh_token"])).json
    replay = await _refresh(api, stolen["refresh_token"])
    assert replay.status == 401 and replay.headers["WWW-Authenticate"].startswith("Bearer")
    assert replay.content_type == "application/problem+json"
    assert (await _refresh(api, newest["refresh_token"])).status == 401
    assert await _profile_status(api, newest["access_token"]) == 401
    assert await _profile_status(api, stolen["access_token"]) == 401


async def test_a_replay_leaves_the_users_other_sessions_alone(api: Api) -> None:
    user = await api.customer()
    phone, laptop = await _login(api, user), await _login(api, user)
    await _refresh(api, phone["refresh_token"])
    assert (await _refresh(api, phone["refresh_token"])).status == 401
    assert await _profile_status(api, laptop["access_token"]) == 200
    assert (await _refresh(api, laptop["refresh_token"])).status == 200


@pytest.mark.parametrize("token", ["", "x", "not-a-token", "a" * 5000, secrets.token_urlsafe(32)])
async def test_an_unknown_or_malformed_refresh_token_is_401(api: Api, token: str) -> None:
    reply = await api.call(
        "POST", REFRESH, data=json.dumps({"refresh_token": token}), headers={"Content-Type": "application/json"}
    )
    assert reply.status == 401, reply
    assert "aaaa" not in reply.body.decode()  # the token is not echoed back


async def test_a_refresh_body_without_a_token_is_422(api: Api) -> None:
    assert (await api.call("POST", REFRESH, json={})).status == 422
    assert (await api.call("POST", REFRESH, json={"refresh_token": 7})).status == 422


async def test_a_refresh_token_of_an_expired_session_is_401_and_so_is_its_access_token(
    api: Api, db: asyncpg.Connection
) -> None:
    grant = await _login(api, await api.customer())
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert (await _refresh(api, grant["refresh_token"])).status == 401
    assert await _profile_status(api, grant["access_token"]) == 401


@pytest.mark.parametrize("config_overrides", [{"refresh_ttl_seconds": 120}])
async def test_refresh_ttl_seconds_sets_the_session_lifetime(api: Api, db: asyncpg.Connection) -> None:
    grant = await _login(api, await api.customer())
    assert 115 <= grant["refresh_expires_in"] <= 120
    assert await db.fetchval("SELECT expires_at - created_at FROM sessions") <= timedelta(seconds=121)


async def test_200_guessed_refresh_tokens_all_fail_and_end_nothing(api: Api) -> None:
    grant = await _login(api, await api.customer())
    replies = await asyncio.gather(*(_refresh(api, secrets.token_urlsafe(32)) for _ in range(200)))
    assert {r.status for r in replies} == {401}
    assert (await _refresh(api, grant["refresh_token"])).status == 200


# --- logout and password changes ---------------------------------------------------


async def test_logout_ends_this_session_only(api: Api) -> None:
    user = await api.customer()
    this, other = await _login(api, user), await _login(api, user)
    reply = await api.call("POST", LOGOUT, json={}, token=this["access_token"])
    assert reply.status == 204 and reply.body == b""
    assert await _profile_status(api, this["access_token"]) == 401
    assert (await _refresh(api, this["refresh_token"])).status == 401
    assert await _profile_status(api, other["access_token"]) == 200
    assert (await _refresh(api, other["refresh_token"])).status == 200


async def test_logout_all_ends_every_session_of_the_user(api: Api) -> None:
    user, bystander = await api.customer(), await api.customer()
    grants = [await _login(api, user) for _ in range(3)]
    assert (await api.call("POST", LOGOUT, json={"all": True}, token=grants[0]["access_token"])).status == 204
    for grant in grants:
        assert await _profile_status(api, grant["access_token"]) == 401
        assert (await _refresh(api, grant["refresh_token"])).status == 401
    assert await _profile_status(api, bystander.token) == 200


async def test_logout_needs_an_access_token_and_a_known_body(api: Api) -> None:
    user = await api.customer()
    assert (await api.call("POST", LOGOUT, json={})).status == 401
    assert (await api.call("POST", LOGOUT, json={"all": "yes"}, token=user.token)).status == 422
    assert (await api.call("POST", LOGOUT, json={"everything": True}, token=user.token)).status == 422


async def test_a_password_change_ends_every_session(api: Api) -> None:
    user = await api.customer()
    other = await _login(api, user)
    change = {"password": "new-password-1", "current_password": user.password}
    assert (await api.call("PUT", PROFILE, json=change, token=user.token)).status == 200
    assert await _profile_status(api, other["access_token"]) == 401
    assert (await _refresh(api, other["refresh_token"])).status == 401
    fresh = await _login(api, user, "new-password-1")
    assert (await _refresh(api, fresh["refresh_token"])).status == 200


async def test_a_name_change_ends_no_session(api: Api) -> None:
    user = await api.customer()
    grant = await _login(api, user)
    assert (await api.call("PUT", PROFILE, json={"name": "Renamed"}, token=user.token)).status == 200
    assert (await _refresh(api, grant["refresh_token"])).status == 200


async def test_ended_sessions_and_their_spent_tokens_are_purged(api: Api, clean_db: str) -> None:
    user = await api.customer()
    kept, ended = await _login(api, user), await _login(api, user)
    await _refresh(api, kept["refresh_token"])
    ended = (await _refresh(api, ended["refresh_token"])).json  # a chain of two tokens goes too
    await api.call("POST", LOGOUT, json={}, token=ended["access_token"])
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), 5)
    try:
        assert await sessions_db.purge(db) == 1
        live = await db.fetchval("SELECT count(*) FROM sessions")
        tokens = await db.fetchval("SELECT count(*) FROM refresh_tokens")
    finally:
        await db.close(5)
    assert live == 2  # the customer() login's session and `kept`
    assert tokens == 3  # their first tokens and `kept`'s rotation: a spent token of a live session is kept
    assert await _profile_status(api, ended["access_token"]) == 401


# --- password reset ---------------------------------------------------------------


async def test_a_reset_request_is_202_with_an_empty_body_whether_or_not_the_email_exists(
    api: Api, db: asyncpg.Connection
) -> None:
    user = await api.customer()
    known = await api.call("POST", RESET, json={"email": user.email})
    unknown = await api.call("POST", RESET, json={"email": unique_email("nobody")})
    assert (known.status, known.body) == (unknown.status, unknown.body) == (202, b"")
    assert await db.fetchval("SELECT count(*) FROM password_resets") == 2  # the same work for both


async def test_a_reset_request_emits_its_event_and_the_feed_never_shows_the_token(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    user = await api.customer()
    await api.call("POST", RESET, json={"email": f"  {user.email.upper()} "})
    await api.call("POST", RESET, json={"email": unique_email("nobody")})
    (event,) = await all_events(api, clean_db, f"?type={RESET_EVENT}")
    data = event["data"]
    assert set(data) == {"user_id", "email", "expires_at"}  # the token goes to the mailer's webhook only
    assert (data["user_id"], data["email"]) == (user.id, user.email)
    assert data["expires_at"].endswith("Z")
    (stored,) = await _reset_tokens(db, user.email)
    token_hash = await db.fetchval("SELECT token_hash FROM password_resets WHERE user_id = $1", user.id)
    assert token_hash == hashlib.sha256(stored["token"].encode()).digest()


async def test_a_used_reset_token_is_erased_from_the_stored_event(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    token = await _request_reset(api, db, user)
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})).status == 204
    assert ["token" in data for data in await _reset_tokens(db, user.email)] == [False]


async def test_an_expired_reset_token_is_erased_by_the_purge(
    api: Api, db: asyncpg.Connection, app: web.Application
) -> None:
    user, other = await api.customer(), await api.customer()
    await _request_reset(api, db, user)
    await _request_reset(api, db, other)
    await db.execute("UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE user_id = $1", user.id)
    await db.execute(
        "UPDATE events SET data = jsonb_set(data, '{expires_at}', to_jsonb(now() - interval '1 second')) "
        "WHERE (data->>'user_id')::bigint = $1",
        user.id,
    )
    assert await password_resets_db.purge(app[CONTEXT].db) == 1
    assert ["token" in data for data in await _reset_tokens(db, user.email)] == [False]
    assert ["token" in data for data in await _reset_tokens(db, other.email)] == [True]


async def test_a_password_change_voids_the_pending_reset_token(api: Api, db: asyncpg.Connection) -> None:
    """The second audit's row 8: a token asked for before a profile change still worked."""
    user = await api.customer()
    token = await _request_reset(api, db, user)
    grant = await _login(api, user)
    change = {"password": "changed-password-1", "current_password": user.password}
    assert (await api.call("PUT", PROFILE, json=change, token=grant["access_token"])).status == 200
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})).status == 400
    assert ["token" in data for data in await _reset_tokens(db, user.email)] == [False]


@pytest.mark.parametrize("config_overrides", [{"trust_forwarded_for": True}])
async def test_a_strangers_reset_requests_never_keep_the_owner_from_asking(api: Api, db: asyncpg.Connection) -> None:
    """The second audit's row 8: a stranger's 5 requests made the owner's own one 429."""
    user = await api.customer()
    stranger = {"X-Forwarded-For": "198.51.100.7"}
    statuses = [(await api.call("POST", RESET, json={"email": user.email}, headers=stranger)).status for _ in range(8)]
    assert statuses == [202] * 5 + [429] * 3
    owner = {"X-Forwarded-For": "203.0.113.20"}
    assert (await api.call("POST", RESET, json={"email": user.email}, headers=owner)).status == 202
    assert len(await _reset_tokens(db, user.email)) == 6


@pytest.mark.parametrize("config_overrides", [{"trust_forwarded_for": True, "password_reset_max_per_email": 7}])
async def test_reset_requests_for_one_email_from_many_addresses_meet_its_ceiling(api: Api) -> None:
    user = await api.customer()
    statuses = [
        (
            await api.call("POST", RESET, json={"email": user.email}, headers={"X-Forwarded-For": f"198.51.100.{n}"})
        ).status
        for n in range(9)
    ]
    assert statuses == [202] * 7 + [429] * 2


async def test_confirm_sets_the_password_and_ends_every_session(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    grant = await _login(api, user)
    token = await _request_reset(api, db, user)
    reply = await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})
    assert reply.status == 204 and reply.body == b""
    assert await _profile_status(api, grant["access_token"]) == 401
    assert await _profile_status(api, user.token) == 401
    assert (await _refresh(api, grant["refresh_token"])).status == 401
    assert (await api.login(user.email, user.password)).status == 401
    assert (await api.login(user.email, "reset-password-1")).status == 200


async def test_a_reset_token_works_once(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    token = await _request_reset(api, db, user)
    replies = await asyncio.gather(
        *(api.call("POST", CONFIRM, json={"token": token, "password": f"password-{i}-x"}) for i in range(5))
    )
    assert sorted(r.status for r in replies) == [204, 400, 400, 400, 400]
    again = await api.call("POST", CONFIRM, json={"token": token, "password": "another-password"})
    assert again.status == 400 and again.content_type == "application/problem+json"


async def test_a_newer_reset_request_invalidates_the_older_token(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    older = await _request_reset(api, db, user)
    newer = await _request_reset(api, db, user)
    assert (await api.call("POST", CONFIRM, json={"token": older, "password": "reset-password-1"})).status == 400
    assert (await api.call("POST", CONFIRM, json={"token": newer, "password": "reset-password-1"})).status == 204


async def test_an_expired_reset_token_is_400(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    token = await _request_reset(api, db, user)
    await db.execute("UPDATE password_resets SET expires_at = now() - interval '1 second'")
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})).status == 400
    assert (await api.login(user.email, user.password)).status == 200


@pytest.mark.parametrize("config_overrides", [{"password_reset_ttl_seconds": 60}])
async def test_password_reset_ttl_seconds_sets_the_token_lifetime(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    await _request_reset(api, db, user)
    lifetime = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) FROM password_resets")
    assert 59 <= lifetime <= 61


async def test_a_reset_token_is_void_once_its_email_changed_hands(api: Api, db: asyncpg.Connection) -> None:
    """A token requested for an address is good only while the same user has it."""
    user = await api.customer()
    token = await _request_reset(api, db, user)
    change = {"email": unique_email("moved"), "current_password": user.password}
    assert (await api.call("PUT", PROFILE, json=change, token=user.token)).status == 200
    newcomer = await api.register(user.email, "newcomer-password")
    assert newcomer.status == 201
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "takeover-pass"})).status == 400
    assert (await api.login(user.email, "newcomer-password")).status == 200


@pytest.mark.parametrize("token", ["", "guess", "a" * 5000])
async def test_a_bad_reset_token_is_400(api: Api, token: str) -> None:
    body = json.dumps({"token": token, "password": "reset-password-1"})
    reply = await api.call("POST", CONFIRM, data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.content_type == "application/problem+json"


@pytest.mark.parametrize("password", ["short", "x" * 129])
async def test_confirm_with_a_password_outside_8_to_128_is_422(api: Api, db: asyncpg.Connection, password: str) -> None:
    user = await api.customer()
    token = await _request_reset(api, db, user)
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": password})).status == 422
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})).status == 204


@pytest.mark.parametrize("password", ["password", "Baseball1", " " * 12])
async def test_confirm_with_a_common_or_whitespace_password_is_422(
    api: Api, db: asyncpg.Connection, password: str
) -> None:
    user = await api.customer()
    token = await _request_reset(api, db, user)
    reply = await api.call("POST", CONFIRM, json={"token": token, "password": password})
    assert reply.status == 422, reply
    assert (await api.login(user.email, user.password)).status == 200
    assert (await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})).status == 204


@pytest.mark.parametrize("email", ["not-an-email", "\n" + "a" * 310 + "@example.com", 7])
async def test_a_reset_request_for_something_that_is_not_an_email_is_422(api: Api, email: object) -> None:
    assert (await api.call("POST", RESET, json={"email": email})).status == 422


async def test_reset_requests_are_throttled_per_email_and_address(api: Api) -> None:
    email = unique_email("target")
    statuses = [(await api.call("POST", RESET, json={"email": email})).status for _ in range(6)]
    assert statuses == [202] * 5 + [429]  # LOGIN_MAX_FAILURES_PER_PAIR
    refused = await api.call("POST", RESET, json={"email": email})
    assert refused.status == 429 and 1 <= int(refused.headers["Retry-After"]) <= 300
    assert (await api.call("POST", RESET, json={"email": unique_email("other")})).status == 202


@pytest.mark.parametrize("config_overrides", [{"login_max_failures_per_ip": 3}])
async def test_reset_requests_are_throttled_per_client_address(api: Api) -> None:
    statuses = [(await api.call("POST", RESET, json={"email": unique_email("spray")})).status for _ in range(4)]
    assert statuses == [202, 202, 202, 429]


async def test_reset_requests_do_not_lock_the_user_out_of_login(api: Api) -> None:
    user = await api.customer()
    for _ in range(6):
        await api.call("POST", RESET, json={"email": user.email})
    assert (await api.login(user.email, user.password)).status == 200


async def test_metrics_count_refreshes_reuse_and_resets(api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    grant = await _login(api, user)
    await _refresh(api, grant["refresh_token"])
    await _refresh(api, grant["refresh_token"])
    token = await _request_reset(api, db, user)
    await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})
    await api.call("POST", CONFIRM, json={"token": token, "password": "reset-password-1"})
    metrics = await scrape(api)
    for name, outcome in (
        ("session_refreshes_total", "rotated"),
        ("session_refreshes_total", "reuse_detected"),
        ("password_resets_total", "requested"),
        ("password_resets_total", "confirmed"),
        ("password_resets_total", "rejected"),
    ):
        assert metrics.value(name, outcome=outcome) == 1, (name, outcome)


# --- across real processes ---------------------------------------------------------


@pytest.fixture
def server_env() -> dict[str, str]:
    # Everything a process may log: the token test below reads it all.
    return {"LOG_LEVEL": "DEBUG", "ACCESS_LOG": "true"}


async def test_10_simultaneous_refreshes_with_one_token_on_two_processes_give_exactly_one_200(
    apis: list[Api],
) -> None:
    grant = await _login(apis[0], await apis[0].customer())
    replies = await asyncio.gather(*(_refresh(apis[i % 2], grant["refresh_token"]) for i in range(10)))
    assert Counter(r.status for r in replies) == {200: 1, 401: 9}
    # The losers presented a spent token: indistinguishable from a thief racing the
    # owner, so the session is over for the winner too.
    winner = next(r.json for r in replies if r.status == 200)
    assert await _profile_status(apis[1], winner["access_token"]) == 401


async def test_logout_kills_the_access_token_at_once_on_every_process(apis: list[Api]) -> None:
    user = await apis[0].customer()
    grant = await _login(apis[0], user)
    for api in apis:  # each process has now verified (and remembered) the token
        assert await _profile_status(api, grant["access_token"]) == 200
    assert (await apis[0].call("POST", LOGOUT, json={}, token=grant["access_token"])).status == 204
    assert [await _profile_status(api, grant["access_token"]) for api in apis] == [401, 401]


async def test_no_response_or_log_line_carries_a_refresh_or_reset_token_but_the_answer_and_the_event(
    apis: list[Api], two_servers: list[ServerProcess], clean_db: str
) -> None:
    api = apis[0]
    user = await api.customer()
    secrets_seen: list[str] = []
    bodies: list[bytes] = []

    async def call(method: str, path: str, **kwargs: Any) -> Reply:
        reply = await api.call(method, path, **kwargs)
        bodies.append(bytes(reply.body) + str(dict(reply.headers)).encode())
        return reply

    grant = (await call("POST", "/api/users/login", json={"email": user.email, "password": user.password})).json
    secrets_seen.append(grant["refresh_token"])
    rotated = (await call("POST", REFRESH, json={"refresh_token": grant["refresh_token"]})).json
    secrets_seen.append(rotated["refresh_token"])
    await call("POST", REFRESH, json={"refresh_token": grant["refresh_token"]})  # replay
    await call("POST", REFRESH, json={"refresh_token": rotated["refresh_token"]})  # of a revoked session
    await call("POST", RESET, json={"email": user.email})
    conn = await asyncpg.connect(clean_db)
    try:
        reset_token = (await _reset_tokens(conn, user.email))[-1]["token"]
    finally:
        await conn.close()
    secrets_seen.append(reset_token)
    await call("POST", CONFIRM, json={"token": reset_token, "password": "short"})
    await call("POST", CONFIRM, json={"token": reset_token, "password": "reset-password-1"})
    await call("POST", CONFIRM, json={"token": reset_token, "password": "reset-password-1"})
    await call("POST", RESET, json={"email": unique_email("nobody")})
    await call("GET", "/metrics")
    for server in two_servers:
        server.stop()
    logs = "".join(server.log_path.read_text() for server in two_servers if server.log_path)
    assert "POST /api/users/token/refresh" in logs or REFRESH in logs  # the access log did record the calls
    for secret in secrets_seen:
        assert secret not in logs
    # The answers that carry a refresh token are the login's and the refresh's; nothing else.
    carriers = [body for body in bodies if any(secret.encode() in body for secret in secrets_seen)]
    assert len(carriers) == 2
