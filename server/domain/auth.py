"""Passwords (argon2id, off the event loop), access tokens (JWT HS256) and the opaque
secrets of sessions and password resets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import asyncpg
import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from db.refusals import Refusal

log = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["customer", "admin"]
_ALGORITHM = "HS256"
# `sid`: the session the token belongs to. Tokens from before sessions existed have
# none and are refused (the change shipped with a restart; clients log in again).
_REQUIRED_CLAIMS = ["sub", "iat", "exp", "ver", "sid"]
# Clock skew tolerated between replicas that issue and check tokens.
_LEEWAY_SECONDS = 5
_MAX_TOKEN_LENGTH = 4096
_REMEMBERED_TOKENS = 50_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request, with the user row the token check read
    (so a handler that answers with the caller's profile needs no second query)."""

    id: int
    role: Role
    user: asyncpg.Record
    session_id: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> int | None:
        """Whose orders, payments and refunds this caller may see: the one rule of
        visibility. None for an admin (everyone's); the caller's own id otherwise."""
        return None if self.is_admin else self.id


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    token_version: int
    session_id: int


class Passwords:
    """argon2id hashing on a small thread pool.

    argon2-cffi releases the GIL while hashing, so a burst of logins uses the
    threads while the event loop keeps serving; the pool's size bounds the memory a
    burst can take (PASSWORD_HASH_MEMORY_KIB per thread). At most `max_queued`
    hashes wait for a thread: beyond that 503 at once, so that a flood of sign-ups
    cannot make every login wait behind it for seconds.
    """

    def __init__(
        self, time_cost: int, memory_kib: int, parallelism: int, threads: int = 2, max_queued: int = 32
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._capacity = threads + max_queued
        self._in_flight = 0
        self._dummy_hash: str | None = None

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        if self._in_flight >= self._capacity:
            raise Refusal("passwords_busy")
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._in_flight -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password; with no hash (unknown user) spend the same time and fail."""
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            password_hash = self._dummy_hash
            password = ""  # never matches: the dummy hash is of a random password
        return await self._run(self._check, password_hash, password)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Tokens:
    """Issues and verifies access tokens.

    Verified tokens are remembered (exact token text -> claims and expiry) so that a
    client's next requests skip the signature check, which is a fifth of the cost of
    a small request. A remembered token is still refused once it expires; tokens are
    never remembered before they verify.
    """

    def __init__(self, secret: str, ttl_seconds: float, leeway_seconds: int = _LEEWAY_SECONDS) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        # What a login answers as `expires_in`: whole seconds, never less than the lifetime.
        self.expires_in = math.ceil(ttl_seconds)
        self._leeway = leeway_seconds
        self._verified: dict[str, tuple[TokenClaims, int]] = {}

    def issue(self, user_id: int, token_version: int, session_id: int) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.ttl_seconds,
            "ver": token_version,
            "sid": session_id,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def decode(self, token: str) -> TokenClaims:
        """Verify signature, algorithm and lifetime; refuses ('token_expired', 'token_invalid') otherwise."""
        remembered = self._verified.get(token)
        if remembered is not None:
            claims, expires = remembered
            if time.time() < expires + self._leeway:
                return claims
            del self._verified[token]
        if len(token) > _MAX_TOKEN_LENGTH:
            raise Refusal("token_invalid")
        verified = self._verify(token)
        if len(self._verified) >= _REMEMBERED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = verified
        return verified[0]

    def _verify(self, token: str) -> tuple[TokenClaims, int]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": _REQUIRED_CLAIMS},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Refusal("token_expired") from None
        except jwt.PyJWTError:
            raise Refusal("token_invalid") from None
        sub, ver, sid, expires = claims["sub"], claims["ver"], claims["sid"], claims["exp"]
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and len(sub) <= 18 and type(ver) is int):
            raise Refusal("token_invalid")
        if not (type(sid) is int and 0 < sid < 2**63):
            raise Refusal("token_invalid")
        return TokenClaims(int(sub), ver, sid), int(expires)


def new_secret() -> tuple[str, bytes]:
    """An opaque token (256 random bits, URL-safe) and the hash it is stored as.
    SHA-256 suffices: the secret is random, not a password, so nothing can be
    guessed faster by trying words against the hash."""
    token = secrets.token_urlsafe(32)
    return token, secret_hash(token)


def secret_hash(token: str) -> bytes:
    # surrogatepass: any string a client sends hashes (to nothing we issued) rather than raising.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; refuses
    ('token_missing', 'not_bearer') otherwise."""
    if not authorization:
        raise Refusal("token_missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refusal("not_bearer")
    return token.strip()
