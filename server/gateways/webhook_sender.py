"""Webhook deliveries over HTTP: the POST, signed as the Standard Webhooks
specification says, to a target that must stay public (unless private targets are
allowed) whatever its name resolves to when it is sent."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import ipaddress
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from server.domain.webhooks import SECRET_PREFIX, Sent, address_allowed
from server.runtime.config import Config

# Receivers' answers are read up to this much (kept in the log as a hint), no more.
_BODY_LIMIT = 1024
_ERROR_CHARS = 300
_REFUSED = "refused: the target is not a public address"


class RefusedTarget(OSError):
    """A send refused because the target is not a public address. What the name
    resolved to stays out of the error: the delivery log would show an admin the
    internal network's DNS answers."""

    def __init__(self) -> None:
        super().__init__(errno.EACCES, _REFUSED)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature`: HMAC-SHA256 over
    "{id}.{timestamp}.{body}", keyed with the secret's base64-decoded bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class _PublicOnlyResolver(AbstractResolver):
    """The address actually connected to is checked at send time: a name that
    resolved to a public address when the webhook was saved may not point at an
    internal one now."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not all(address_allowed(r["host"]) for r in results):
            raise RefusedTarget()
        return results

    async def close(self) -> None:
        await self._inner.close()


class HttpSender:
    """One worker's HTTP client for webhook deliveries (server/domain/webhooks.py's
    Sender): at most WEBHOOK_MAX_IN_FLIGHT connections, WEBHOOK_MAX_IN_FLIGHT_PER_WEBHOOK
    to one host, no cookies, no redirects followed."""

    def __init__(self, config: Config) -> None:
        self._allow_private = config.webhook_allow_private_targets
        self._timeout = config.webhook_timeout_seconds
        connector = aiohttp.TCPConnector(
            limit=config.webhook_max_in_flight,
            limit_per_host=config.webhook_max_in_flight_per_webhook,
            resolver=None if self._allow_private else _PublicOnlyResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "storefront-webhooks"},
        )

    async def send(self, url: str, secret: str, event_id: int, body: bytes) -> Sent:
        message_id, timestamp = str(event_id), int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
        }
        try:
            self._check_literal_host(url)
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                answer = await response.content.read(_BODY_LIMIT)
        except TimeoutError:
            return Sent(None, f"no answer within {self._timeout:g} s")
        except RefusedTarget:
            return Sent(None, _REFUSED)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if isinstance(exc.__cause__, RefusedTarget):  # raised by the resolver, wrapped by aiohttp
                return Sent(None, _REFUSED)
            return Sent(None, f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS])
        if 200 <= response.status < 300:
            return Sent(response.status, None)
        text = answer.decode("utf-8", "replace")
        return Sent(response.status, f"HTTP {response.status}: {text}"[:_ERROR_CHARS])

    def _check_literal_host(self, url: str) -> None:
        """An address written in the URL never goes through the resolver: check it here."""
        if self._allow_private:
            return
        host = URL(url).raw_host or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not address_allowed(host):
            raise RefusedTarget()

    async def close(self) -> None:
        await self._session.close()
