"""Request and response definitions: what the handlers validate with, and what the
OpenAPI document is generated from (one source for both)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from server.domain.cursors import MAX_CURSOR_LENGTH
from server.domain.events import EVENT_TYPES
from server.domain.order_status import Status
from server.domain.orders import MAX_QUANTITY

# Integer ranges of the columns the values land in: out of range is a 422, never a
# database error.
MAX_INT32 = 2**31 - 1
MAX_ID = 2**63 - 1
# Prices are capped so that 100 lines x MAX_QUANTITY units can never overflow a bigint total.
MAX_PRICE = 10**12

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError("must be an email address")
    return value


# Fewer characters than a trigram (beyond wildcards and spaces): no index can serve
# the search, which would scan the whole catalog.
_MIN_SEARCH_CHARACTERS = 3


def _searchable(value: str) -> str:
    if len(value.replace("%", "").replace("_", "").replace(" ", "")) < _MIN_SEARCH_CHARACTERS:
        raise ValueError(f"must have at least {_MIN_SEARCH_CHARACTERS} characters other than %, _ and spaces")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Email = Annotated[
    str,
    StringConstraints(max_length=320),
    AfterValidator(_no_nul),
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 320}),
]
LoginEmail = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=320), AfterValidator(_no_nul)
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128), AfterValidator(_no_nul)]
UserName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(_no_nul)
]
ProductName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_no_nul)
]
Description = Annotated[str, StringConstraints(max_length=5000), AfterValidator(_no_nul)]
Currency = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]
Sku = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")
]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Price = Annotated[int, Field(ge=0, le=MAX_PRICE)]
Stock = Annotated[int, Field(ge=0, le=MAX_INT32)]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
OrderStatus = Status
ProductSort = Literal["created_at", "-created_at", "price", "-price", "name", "-name"]


class Body(BaseModel):
    """A JSON request body: exact types (no "12" for 12), unknown fields rejected."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """A query string: values arrive as text and are converted; unknown keys ignored."""

    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    """A response body (documents what handlers send; tests check they match)."""

    model_config = ConfigDict(extra="forbid")


# --- problems -------------------------------------------------------------------------


class FieldError(Out):
    field: str = Field(description="Path of the offending field, e.g. items[0].quantity.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (extension members may be added)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="Only for validation failures (422).")
    product_id: int | None = Field(
        None, description="409 on an order: the product whose stock is short, or that would be held past the limit."
    )
    limit: str | None = Field(None, description="409: the setting of the abuse limit that refused the request.")
    request_id: str | None = Field(None, description="500: the id to quote when reporting the error.")


# --- pages ----------------------------------------------------------------------------

T = TypeVar("T")


class Page(Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class PageQuery(Query):
    limit: int = Field(20, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] | None = None


# --- users ----------------------------------------------------------------------------


class RegisterIn(Body):
    email: Email
    password: Password
    name: UserName


class LoginIn(Body):
    email: LoginEmail
    password: Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_nul)]


class ProfileUpdateIn(Body):
    """Any of name, email, password; current_password too to change email or password."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["name"]},
                {"required": ["email", "current_password"]},
                {"required": ["password", "current_password"]},
            ]
        }
    )

    name: UserName | None = None
    email: Email | None = None
    password: Password | None = None
    current_password: Annotated[str, StringConstraints(max_length=128), AfterValidator(_no_nul)] | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ProfileUpdateIn:
        if self.name is None and self.email is None and self.password is None:
            raise ValueError("give at least one of name, email, password")
        return self


class UserOut(Out):
    id: int
    email: str
    name: str
    role: Literal["customer", "admin"]
    created_at: datetime
    updated_at: datetime


class TokenOut(Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the token expires.")


# --- products -------------------------------------------------------------------------


class ProductCreateIn(Body):
    name: ProductName
    description: Description = ""
    price: Price
    currency: Currency = "USD"
    stock: Stock
    sku: Sku | None = None


class ProductUpdateIn(Body):
    """Any subset of the create fields; omitted fields stay as they are (sku: null clears it)."""

    name: ProductName = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    price: Price = None  # type: ignore[assignment]
    currency: Currency = None  # type: ignore[assignment]
    stock: Stock = None  # type: ignore[assignment]
    sku: Sku | None = None

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ProductOut(Out):
    id: int
    name: str
    description: str
    price: int
    currency: str
    stock: int
    sku: str | None
    created_at: datetime
    updated_at: datetime


class ProductListQuery(PageQuery):
    q: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul), AfterValidator(_searchable)
        ]
        | None
    ) = None
    min_price: Price | None = None
    max_price: Price | None = None
    in_stock: bool = False
    sort: ProductSort = "created_at"


# --- orders ---------------------------------------------------------------------------


class OrderItemIn(Body):
    product_id: Id
    quantity: Quantity


class OrderCreateIn(Body):
    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]


class OrderUpdateIn(Body):
    """Either `items` (replace the lines of a pending order) or `status`."""

    # Exactly one of the two (no other property is allowed).
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)] | None = None
    status: OrderStatus | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OrderUpdateIn:
        if (self.items is None) == (self.status is None):
            raise ValueError("give either items or status")
        return self


class OrderItemOut(Out):
    product_id: int
    name: str
    unit_price: int
    quantity: int
    line_total: int


class OrderOut(Out):
    id: int
    user_id: int
    status: OrderStatus
    items: list[OrderItemOut]
    total: int
    amount_refunded: int = Field(description="What refunds of the order's payment gave back (0 until one succeeds).")
    currency: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(description="Set while pending.")


class OrderListQuery(PageQuery):
    user_id: Id | None = Field(None, description="Admins only: orders of this user.")
    status: OrderStatus | None = None


# --- payments -------------------------------------------------------------------------


class PaymentMethodIn(Body):
    type: Literal["card"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_no_nul)]


class PaymentCreateIn(Body):
    order_id: Id
    payment_method: PaymentMethodIn
    amount: Price | None = Field(None, description="If given, must equal the order total.")


class PaymentOut(Out):
    id: int
    order_id: int
    amount: int
    amount_refunded: int = Field(description="The sum of its succeeded refunds (0 until one succeeds).")
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    failure_reason: str | None
    provider: str
    provider_ref: str | None
    created_at: datetime


class RefundCreateIn(Body):
    amount: Annotated[int, Field(ge=1, le=MAX_ID)] | None = Field(
        None,
        description="Default: what is left to refund (the amount minus what was refunded or is being refunded). "
        "More than that: 409.",
    )
    reason: Annotated[str, StringConstraints(max_length=500), AfterValidator(_no_nul)] | None = None
    restock: bool = Field(
        False,
        description="Return every unit of the order to stock. Only on the refund that completes the whole "
        "amount (else 422).",
    )


class RefundOut(Out):
    id: int
    payment_id: int
    order_id: int
    amount: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None
    restock: bool
    failure_reason: str | None
    provider_ref: str | None
    created_at: datetime


# --- events and webhooks --------------------------------------------------------------


def _event_types(value: list[str]) -> list[str]:
    unknown = [t for t in value if t != "*" and t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types: {', '.join(unknown)}")
    if "*" in value and len(value) > 1:
        raise ValueError('"*" stands alone')
    return list(dict.fromkeys(value))


EventTypes = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=100)]],
    Field(min_length=1, max_length=len(EVENT_TYPES)),
    AfterValidator(_event_types),
]
WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_no_nul)]
WebhookDescription = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_no_nul)]


class EventsQuery(Query):
    after: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None, description="The `next_cursor` of the previous answer (none: from the oldest event)."
    )
    limit: int = Field(100, ge=1, le=100)


class EventOut(Out):
    id: int
    type: str
    created_at: datetime
    data: dict[str, object] = Field(description="The object as the API returned it when the event happened.")


class EventPage(Out):
    items: list[EventOut]
    next_cursor: str = Field(
        description="Pass as `after` for what comes next; at the end, the cursor to ask again with."
    )


class WebhookCreateIn(Body):
    url: WebhookUrl
    events: EventTypes = Field(description='Event types, or ["*"] for all.')
    description: WebhookDescription = ""


class WebhookUpdateIn(Body):
    """Any of the fields; omitted ones stay as they are. Enabling again delivers only
    what happens from then on."""

    url: WebhookUrl = None  # type: ignore[assignment]
    events: EventTypes = None  # type: ignore[assignment]
    description: WebhookDescription = None  # type: ignore[assignment]
    enabled: bool = None  # type: ignore[assignment]

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class WebhookOut(Out):
    id: int
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="whsec_ + base64 of the signing key. Shown in this answer only.")


class DeliveryAttemptOut(Out):
    id: int
    event_id: int
    event_type: str
    attempt: int
    status: Literal["succeeded", "failed", "pending"] = Field(
        description="pending: this attempt failed and the delivery is retried at next_attempt_at."
    )
    response_status: int | None
    error: str | None
    created_at: datetime
    next_attempt_at: datetime | None


# --- operations -----------------------------------------------------------------------


class HealthOut(Out):
    status: Literal["ok", "unavailable"]
