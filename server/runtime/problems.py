"""The one exception hierarchy of the service.

Every failure a client can cause is an `ApiError`; the middleware turns it into an
RFC 9457 problem response. Anything else is a bug or an outage and is answered 500
(or 503 for a database outage) without internals.

Every problem document the service sends is built here, by `problem` (the body) and
`problem_response` (the response): ApiErrors, the middleware's own answers and the HTTP
parser's rejections alike.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

from aiohttp import web

from server.runtime.jsonio import json_response

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://storefront.example/problems/"


class ApiError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_BASE + self.slug

    def body(self) -> dict[str, Any]:
        return problem(
            self.status, self.detail, title=self.title, type_uri=self.type_uri, errors=self.errors, extra=self.extra
        )

    def response(self) -> web.Response:
        return problem_response(self.body(), self.headers)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_uri: str = "about:blank",
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A problem document; `title` defaults to the status's reason phrase."""
    body: dict[str, Any] = {"type": type_uri, "title": title or _reason(status), "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A problem document (built by `problem`) as the response, with its status."""
    return json_response(body, status=body["status"], headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class BadRequest(ApiError):
    status = 400
    title = "Bad Request"
    slug = "malformed-json"


class InvalidSignature(ApiError):
    """An inbound provider event whose signature is missing, wrong or stale."""

    status = 400
    title = "Bad Request"
    slug = "invalid-signature"


class InvalidResetToken(ApiError):
    """A password-reset token that is unknown, used or expired: one answer for all."""

    status = 400
    title = "Bad Request"
    slug = "invalid-reset-token"

    def __init__(self) -> None:
        super().__init__("the password-reset token is invalid, used or expired")


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str = "missing or invalid access token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="storefront"'})


class InvalidCredentials(ApiError):
    """Wrong email or password: one body for both, so it tells nothing."""

    status = 401
    title = "Unauthorized"
    slug = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__(
            "email or password is incorrect",
            headers={"WWW-Authenticate": 'Bearer realm="storefront"'},
        )


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class RequestTimeout(ApiError):
    status = 408
    title = "Request Timeout"
    slug = "request-timeout"


class Conflict(ApiError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


# A validation failure lists at most this many errors (the contract's "Expensive
# input"), whatever found them: the request models, unknown keys, the item rules.
MAX_ERRORS = 20


class ValidationFailed(ApiError):
    status = 422
    title = "Unprocessable Content"
    slug = "validation"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(detail or _summary(errors), errors=errors[:MAX_ERRORS])

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls([{"field": field, "message": message}])


class TooManyRequests(ApiError):
    status = 429
    title = "Too Many Requests"
    slug = "rate-limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(ApiError):
    status = 503
    title = "Service Unavailable"
    slug = "unavailable"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


def _summary(errors: list[dict[str, str]]) -> str:
    if len(errors) == 1:
        return f"{errors[0]['field']}: {errors[0]['message']}"
    return f"{len(errors)} fields are invalid"
