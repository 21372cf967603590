"""What the locust journeys need from the service before they start (the admin's
token, a catalog to buy from), with plain urllib: no locust here, so that the
tests can check it without the load tools installed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class SetupError(Exception):
    """The service cannot be set up for the test; the message says why in one line."""


def call(host: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.rstrip("/") + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def admin_token(host: str, email: str, password: str) -> str:
    """The admin's access token, or SetupError naming what is wrong."""
    try:
        grant = call(host, "POST", "/api/users/login", {"email": email, "password": password})
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise SetupError(
                f"the admin login as {email} was refused (401): STOREFRONT_ADMIN_PASSWORD is not that account's "
                "password (ADMIN_PASSWORD creates the admin only when the email is new; it never resets an "
                "existing account's password: use that password, or another ADMIN_EMAIL)"
            ) from None
        raise SetupError(f"the admin login as {email} got HTTP {exc.code} from {host}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SetupError(f"cannot reach the service at {host}: {getattr(exc, 'reason', exc)}") from None
    token: str = grant["access_token"]
    profile = call(host, "GET", "/api/users/profile", token=token)
    if profile["role"] != "admin":
        raise SetupError(f"{email} is not an admin (role {profile['role']!r}): the admin journey needs one")
    return token
