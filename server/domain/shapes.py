"""What each resource looks like to the API's clients: declared once, here.

Each shape is a pydantic model that says a resource's fields, their types and what
they mean. From it come all three things a shape is used for:

- the API's answers: `render(Shape, row)` takes the shape's fields from a row (an
  asyncpg record, read by column name, or the row an event carries), nothing else;
- the events: an event stores the changed resource as its row (the stored functions
  write `to_jsonb` of it, sql/functions/events.sql) and the feed and webhook
  deliveries render it with the shape of its type (`event_json`), so an event's data
  is the resource exactly as the API answers it;
- the OpenAPI document, which is generated from these models (handlers/schemas.py).

So a field is added in one place (and as a column), and no JSON is built anywhere
else, in Python or in SQL.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field

from server.domain.order_status import Status


class Shape(BaseModel):
    """A resource as the API shows it (the document says exactly these fields)."""

    model_config = ConfigDict(extra="forbid")


class UserOut(Shape):
    id: int
    email: str
    name: str
    role: Literal["customer", "admin"]
    created_at: datetime
    updated_at: datetime


class ProductOut(Shape):
    id: int
    name: str
    description: str
    price: int
    currency: str
    stock: int
    sku: str | None
    created_at: datetime
    updated_at: datetime


class OrderItemOut(Shape):
    product_id: int
    name: str = Field(description="The product's name when the item was ordered.")
    unit_price: int = Field(description="The product's price when the item was ordered.")
    quantity: int
    line_total: int


class ShippingAddressOut(Shape):
    """A postal address: what an order ships to (its snapshot, which later edits of the
    address book do not change), and the fields of an address of the book."""

    name: str
    line1: str
    line2: str
    city: str
    region: str
    postal_code: str
    country: str = Field(description="ISO 3166-1 alpha-2 code, upper case.")
    phone: str


class AddressOut(ShippingAddressOut):
    id: int
    created_at: datetime
    updated_at: datetime


class ShippingMethodOut(Shape):
    id: int
    name: str
    price: int = Field(description="What shipping costs an order (0 from free_over on).")
    currency: str
    countries: list[str] = Field(description="ISO 3166-1 alpha-2 codes it ships to; empty: anywhere.")
    free_over: int | None = Field(description="From this subtotal on, shipping costs 0 (null: never free).")
    enabled: bool
    created_at: datetime
    updated_at: datetime


class OrderShippingMethodOut(Shape):
    """The shipping method as the order chose it (a snapshot)."""

    id: int
    name: str
    price: int


class DiscountOut(Shape):
    id: int
    code: str = Field(description="Matched case-insensitively; shown upper case.")
    kind: Literal["percent", "fixed"]
    value: int = Field(description="percent: 1..100 (floor(subtotal * value / 100) off); fixed: minor units off.")
    currency: str
    min_subtotal: int
    starts_at: datetime | None
    ends_at: datetime | None
    max_redemptions: int | None
    max_per_customer: int | None
    times_redeemed: int = Field(description="Orders holding it (pending) or having used it (paid and later).")
    enabled: bool
    created_at: datetime
    updated_at: datetime


class OrderDiscountOut(Shape):
    code: str
    amount: int = Field(description="What it took off the subtotal.")


class OrderOut(Shape):
    id: int
    user_id: int
    status: Status
    items: list[OrderItemOut]
    subtotal: int = Field(description="The sum of the items' line totals.")
    shipping_address: ShippingAddressOut | None
    shipping_method: OrderShippingMethodOut | None
    shipping: int = Field(description="What shipping costs this order (0 when subtotal reaches free_over).")
    discount: OrderDiscountOut | None
    total: int = Field(description="subtotal - discount.amount + shipping: what a payment charges.")
    amount_refunded: int = Field(description="What refunds of the order's payment gave back (0 until one succeeds).")
    currency: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(description="Set while pending.")


class PaymentOut(Shape):
    id: int
    order_id: int
    amount: int
    amount_refunded: int = Field(description="The sum of its succeeded refunds (0 until one succeeds).")
    currency: str
    status: Literal["pending", "requires_action", "succeeded", "failed"] = Field(
        description="requires_action: the customer must finish the payment (3-D Secure) with the provider's SDK, "
        "using client_secret and next_action; the outcome follows (succeeded or failed)."
    )
    failure_reason: str | None
    provider: str
    provider_ref: str | None
    client_secret: str | None = Field(
        description="While requires_action: the provider's secret for the customer's app to finish the payment."
    )
    next_action: dict[str, Any] | None = Field(
        description="While requires_action: what the customer's app must do (the provider's next_action)."
    )
    created_at: datetime


class ProviderEventAck(Shape):
    """The answer to a payment provider's webhook."""

    received: bool
    outcome: Literal["handled", "duplicate", "unchanged", "ignored", "mismatched"]


class RefundOut(Shape):
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


class PasswordResetRequestedOut(Shape):
    """The data of a user.password_reset_requested event, as the feed and most
    deliveries show it: without the token."""

    user_id: int
    email: str
    expires_at: datetime


class PasswordResetForMailerOut(PasswordResetRequestedOut):
    """The same data for the shop's mailer: a webhook subscribed to the type by name
    whose url is https (or any, with WEBHOOK_ALLOW_PRIVATE_TARGETS=true), while the token
    is live (it is erased from the stored event once used or expired)."""

    token: str | None = Field(description="The reset token, for the link the mailer sends.")


class WebhookOut(Shape):
    id: int
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="whsec_ + base64 of the signing key. Shown in this answer only.")


class DeliveryAttemptOut(Shape):
    id: int
    event_id: int
    event_type: str
    attempt: int
    status: Literal["succeeded", "failed", "pending"] = Field(
        description="The attempt's own outcome: succeeded (a 2xx answer) or failed (anything else, also when "
        "a retry follows: then next_attempt_at says when). pending only while an attempt is scheduled or in "
        "flight; the log lists attempts once made."
    )
    response_status: int | None
    error: str | None
    created_at: datetime
    next_attempt_at: datetime | None


class EventOut(Shape):
    id: int
    type: str
    created_at: datetime
    data: dict[str, object] = Field(
        description="The resource as the API returned it when the event happened (an order, payment, refund or "
        "product), or for user events what the type says."
    )


# --- rendering ------------------------------------------------------------------------------

# An asyncpg record (read by column name), or the row an event carries.
Row = asyncpg.Record | Mapping[str, Any]
Convert = Callable[[Any], Any] | None


def render(shape: type[Shape], row: Row) -> dict[str, Any]:
    """The shape's fields of `row`, by name: an asyncpg record, or the row an event
    carries (whose timestamps are text, in the writing session's time zone). A field the
    row lacks is null: an event written before the field existed."""
    return {
        name: value if convert is None or value is None else convert(value)
        for name, convert in _fields(shape)
        for value in (row.get(name),)
    }


@functools.cache
def _fields(shape: type[Shape]) -> tuple[tuple[str, Convert], ...]:
    return tuple((name, _converter(info.annotation)) for name, info in shape.model_fields.items())


def _converter(annotation: Any) -> Convert:
    """How a value of this type is taken from a row: timestamps as datetimes (orjson
    writes them in UTC with a Z), nested shapes by their fields, the rest as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _converter(inner[0]) if len(inner) == 1 else None
    if annotation is datetime:
        return _timestamp
    if typing.get_origin(annotation) is dict:
        return _document
    if isinstance(annotation, type) and issubclass(annotation, Shape):
        return functools.partial(render, annotation)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, Shape):
            return lambda values: [render(item, value) for value in values]
    return None


def _document(value: str | dict[str, Any]) -> dict[str, Any]:
    """A jsonb column: text from asyncpg, a document already in an event's row."""
    if isinstance(value, str):
        loaded: dict[str, Any] = orjson.loads(value)
        return loaded
    return value


def _timestamp(value: datetime | str) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value).astimezone(UTC)
    # asyncpg reads PostgreSQL's instants of datetime.min and datetime.max (a client may
    # send 0001-01-01T00:00:00Z) as those naive datetimes, its sentinels for -infinity
    # and infinity: every column is timestamptz, so they are UTC too.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# What each event type's data is: its resource's shape.
_EVENT_SHAPES: dict[str, type[Shape]] = {
    "order": OrderOut,
    "payment": PaymentOut,
    "refund": RefundOut,
    "product": ProductOut,
    "user.password_reset_requested": PasswordResetRequestedOut,
}


def event_shape(event_type: str) -> type[Shape]:
    return _EVENT_SHAPES.get(event_type) or _EVENT_SHAPES[event_type.split(".", 1)[0]]


# What an event type shows the shop's mailer (see PasswordResetForMailerOut).
_MAILER_SHAPES: dict[str, type[Shape]] = {"user.password_reset_requested": PasswordResetForMailerOut}


def event_json(
    event_id: int, event_type: str, created_at: datetime, data: str, *, for_mailer: bool = False
) -> dict[str, Any]:
    """An event as the feed and webhooks show it: its stored row rendered with the
    shape of its type (`for_mailer`: the one a mailer gets, secrets included)."""
    shape = _MAILER_SHAPES.get(event_type) if for_mailer else None
    return {
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "data": render(shape or event_shape(event_type), orjson.loads(data)),
    }
