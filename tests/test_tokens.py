"""Access tokens: every forged, stale or foreign token is a 401 with WWW-Authenticate."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import Api, User


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _session_id(user: User) -> int:
    """The session of the user's login (the `sid` its access token carries)."""
    sid: int = jwt.decode(user.token, options={"verify_signature": False})["sid"]
    return sid


def _claims(user: User, **changes: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": str(user.id), "iat": now, "exp": now + 600, "ver": 0, "sid": _session_id(user), **changes}


async def _assert_rejected(api: Api, token: str) -> None:
    reply = await api.call("GET", "/api/users/profile", token=token)
    assert reply.status == 401, reply
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.content_type == "application/problem+json"


async def test_a_token_signed_with_the_secret_works(api: Api) -> None:
    user = await api.customer()
    token = jwt.encode(_claims(user), JWT_SECRET, algorithm="HS256")
    assert (await api.call("GET", "/api/users/profile", token=token)).status == 200


async def test_expired_token_is_rejected(api: Api) -> None:
    user = await api.customer()
    past = int(time.time()) - 3600
    await _assert_rejected(api, jwt.encode(_claims(user, iat=past - 60, exp=past), JWT_SECRET, algorithm="HS256"))


async def test_token_not_yet_valid_is_rejected(api: Api) -> None:
    user = await api.customer()
    future = int(time.time()) + 3600
    await _assert_rejected(api, jwt.encode(_claims(user, iat=future), JWT_SECRET, algorithm="HS256"))
    await _assert_rejected(api, jwt.encode(_claims(user, nbf=future), JWT_SECRET, algorithm="HS256"))


async def test_token_signed_with_another_key_is_rejected(api: Api) -> None:
    user = await api.customer()
    await _assert_rejected(api, jwt.encode(_claims(user), "another-secret-" + "y" * 32, algorithm="HS256"))


async def test_unsigned_alg_none_token_is_rejected(api: Api) -> None:
    user = await api.customer()
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(user))}."
    await _assert_rejected(api, token)


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
async def test_other_hmac_algorithms_are_rejected(api: Api, algorithm: str) -> None:
    user = await api.customer()
    await _assert_rejected(api, jwt.encode(_claims(user), JWT_SECRET, algorithm=algorithm))


async def test_rs256_header_with_hmac_signature_is_rejected(api: Api) -> None:
    """HS/RS confusion: an RS256 header over an HMAC made with the shared secret."""
    user = await api.customer()
    header, payload = _b64({"alg": "RS256", "typ": "JWT"}), _b64(_claims(user))
    import hashlib
    import hmac

    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    await _assert_rejected(api, token)


async def test_tampered_payload_is_rejected(api: Api) -> None:
    victim, attacker = await api.customer(), await api.customer()
    header, _, signature = attacker.token.split(".")
    forged = f"{header}.{_b64(_claims(victim))}.{signature}"
    await _assert_rejected(api, forged)


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer " + "a" * 5000, "Token abc"],
)
async def test_malformed_authorization_is_rejected(api: Api, authorization: str) -> None:
    reply = await api.call("GET", "/api/users/profile", headers={"Authorization": authorization})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("sub", ["abc", "-1", "1" * 30, 7])
async def test_token_with_a_bad_subject_is_rejected(api: Api, sub: object) -> None:
    token = jwt.encode({"sub": sub, "iat": int(time.time()), "exp": int(time.time()) + 60, "ver": 0}, JWT_SECRET)
    await _assert_rejected(api, token)


async def test_token_missing_required_claims_is_rejected(api: Api) -> None:
    user = await api.customer()
    await _assert_rejected(api, jwt.encode({"sub": str(user.id)}, JWT_SECRET, algorithm="HS256"))


async def test_token_for_a_user_that_does_not_exist_is_rejected(api: Api) -> None:
    now = int(time.time())
    claims = {"sub": "999999", "iat": now, "exp": now + 60, "ver": 0, "sid": 1}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    await _assert_rejected(api, token)


async def test_token_without_a_session_is_rejected(api: Api) -> None:
    """Tokens issued before sessions existed carry no `sid`: they are refused."""
    user = await api.customer()
    claims = _claims(user)
    del claims["sid"]
    await _assert_rejected(api, jwt.encode(claims, JWT_SECRET, algorithm="HS256"))


async def test_token_naming_another_users_session_is_rejected(api: Api) -> None:
    user, other = await api.customer(), await api.customer()
    await _assert_rejected(api, jwt.encode(_claims(user, sid=_session_id(other)), JWT_SECRET, algorithm="HS256"))


@pytest.mark.parametrize("sid", [999999, 0, -1, "1", 2**63])
async def test_token_naming_no_session_of_ours_is_rejected(api: Api, sid: object) -> None:
    user = await api.customer()
    await _assert_rejected(api, jwt.encode(_claims(user, sid=sid), JWT_SECRET, algorithm="HS256"))
