"""Request and response definitions: what the handlers validate with, and what the
OpenAPI document is generated from (one source for both). The resources' shapes are
declared in the domain (server/domain/shapes.py), which renders the answers and the
events from them; the route table names them for the document."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from iso3166 import countries_by_alpha2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from server.domain import password_rules
from server.domain.addresses import PostalAddress
from server.domain.cursors import MAX_CURSOR_LENGTH
from server.domain.events import EVENT_TYPES
from server.domain.order_status import Status
from server.domain.orders import MAX_QUANTITY, Checkout
from server.domain.shapes import EventOut

# Integer ranges of the columns the values land in: out of range is a 422, never a
# database error.
MAX_INT32 = 2**31 - 1
MAX_ID = 2**63 - 1
# Prices are capped so that 100 items x MAX_QUANTITY units can never overflow a bigint total.
MAX_PRICE = 10**12

# The Idempotency-Key header: 1..255 printable ASCII characters. One pattern for the
# check (matched whole, so `$` cannot pass a trailing newline) and the document.
IDEMPOTENCY_KEY_PATTERN = r"^[ -~]{1,255}$"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# The same rule in the document, for strings that have no pattern of their own.
_NO_NUL_PATTERN = "^[^\\u0000]*$"


class _NoNulInSchema:
    def __get_pydantic_json_schema__(self, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core)
        schema.setdefault("pattern", _NO_NUL_PATTERN)
        return schema


NoNul = (AfterValidator(_no_nul), _NoNulInSchema())


def _integral(value: object) -> object:
    # JSON has one number type, and JSON Schema's `integer` accepts 12.0 as 12: so
    # does the service. 12.5, "12" and true stay type errors (bodies are strict).
    if type(value) is float and value.is_integer():
        return int(value)
    return value


Integral = BeforeValidator(_integral)


def _email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError("must be an email address")
    return value


# Fewer characters than a trigram (beyond wildcards and spaces): no index can serve
# the search, which would scan the whole catalog.
_MIN_SEARCH_CHARACTERS = 3


# The same rule for the document (and no NUL, as everywhere).
_SEARCHABLE_PATTERN = f"^(?:[%_ ]*[^%_ \\u0000]){{{_MIN_SEARCH_CHARACTERS}}}[^\\u0000]*$"


def _searchable(value: str) -> str:
    if len(value.replace("%", "").replace("_", "").replace(" ", "")) < _MIN_SEARCH_CHARACTERS:
        raise ValueError(f"must have at least {_MIN_SEARCH_CHARACTERS} characters other than %, _ and spaces")
    return value


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default")


def absent(description: str | None = None) -> Any:
    """The default of an optional member that may be left out but is never null: the
    attribute reads None when the member was not sent, and the schema shows neither
    a null type nor a null default (which would tell clients null is accepted)."""
    return Field(None, description=description, json_schema_extra=_no_default)


def nullable(description: str | None = None) -> Any:
    """The default of an optional member whose null means something of its own (in a
    change: remove it): left out, it reads None too, and `model_fields_set` tells the
    two apart. The schema shows the null type but no default."""
    return Field(None, description=description, json_schema_extra=_no_default)


Email = Annotated[
    str,
    StringConstraints(max_length=320),
    AfterValidator(_no_nul),
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 320}),
]
# What `strip_whitespace` trims (Unicode White_Space), spelled out for the document:
# ECMA 262's \s also matches U+FEFF, and Python's str.isspace() also U+001C..U+001F.
_TRIMMED = "\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"


def _trimmed(length: int, *, empty: bool = False) -> WithJsonSchema:
    """The schema of text that is trimmed, then must be 1..`length` characters without
    NUL (0..`length` with `empty`): lengths count after trimming, so they are stated by
    a pattern, not maxLength."""
    inner, edge = "[^\\u0000]", f"[^{_TRIMMED}\\u0000]"
    text = f"{edge}(?:{inner}{{0,{length - 2}}}{edge})?"
    pattern = f"^[{_TRIMMED}]*{f'(?:{text})?' if empty else text}[{_TRIMMED}]*$"
    return WithJsonSchema({"type": "string", "pattern": pattern})


LoginEmail = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=320),
    *NoNul,
    _trimmed(320),
]


def _acceptable_password(value: str) -> str:
    reason = password_rules.refusal(value)
    if reason is not None:
        raise ValueError(reason)
    return value


# A new password (registration, profile change, reset): 8..128 characters, not only
# whitespace (what str.isspace() calls whitespace, spelled out for the document), and
# not a commonly used one (which no schema can state: the fuzzer's hooks list it).
_PASSWORD_PATTERN = f"^[^\\u0000]*[^{_TRIMMED}\\u001c-\\u001f\\u0000][^\\u0000]*$"
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=128),
    AfterValidator(_no_nul),
    AfterValidator(_acceptable_password),
    WithJsonSchema({"type": "string", "minLength": 8, "maxLength": 128, "pattern": _PASSWORD_PATTERN}),
]
UserName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), *NoNul, _trimmed(100)]
ProductName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), *NoNul, _trimmed(200)
]
Description = Annotated[str, StringConstraints(max_length=5000), *NoNul]
Currency = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]
Sku = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$"),
    WithJsonSchema({"type": "string", "pattern": f"^[{_TRIMMED}]*[A-Za-z0-9._\\-]{{1,64}}[{_TRIMMED}]*$"}),
]
# An address's text: trimmed, then within the contract's lengths.
AddressLine = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), *NoNul, _trimmed(200)
]
OptionalLine = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), *NoNul, _trimmed(200, empty=True)
]
City = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), *NoNul, _trimmed(100)]
Region = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100), *NoNul, _trimmed(100, empty=True)]
PostalCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20), *NoNul, _trimmed(20)]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, max_length=32), *NoNul, _trimmed(32, empty=True)]
Id = Annotated[int, Field(ge=1, le=MAX_ID), Integral]
Price = Annotated[int, Field(ge=0, le=MAX_PRICE), Integral]
Stock = Annotated[int, Field(ge=0, le=MAX_INT32), Integral]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY), Integral]
OrderStatus = Status
ProductSort = Literal["created_at", "-created_at", "price", "-price", "name", "-name"]


class Body(BaseModel):
    """A JSON request body: exact types (no "12" for 12), unknown fields rejected."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """A query string: values arrive as text and are converted; unknown keys ignored."""

    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    """A response body that is no resource (a page, a token grant, a health answer)."""

    model_config = ConfigDict(extra="forbid")


# --- problems -------------------------------------------------------------------------


class FieldError(Out):
    field: str = Field(description="Path of the offending field, e.g. items[0].quantity.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details. The members below are the ones the service sends;
    RFC 9457 (section 3.2) lets a problem type carry more extension members, so clients
    must ignore members they do not know rather than reject the document."""

    # Extension members are part of the format (RFC 9457): extra="allow" publishes
    # `additionalProperties: true` on purpose, since forbidding them would promise
    # clients something the format does not.
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI of the problem type.")
    title: str
    status: int
    detail: str
    # Extension members: present only where described (never null).
    errors: list[FieldError] = absent("Only for validation failures (422).")
    product_id: int = absent("409 on an order: the product whose stock is short, or that would be held past the limit.")
    limit: str = absent("409: the setting of the abuse limit that refused the request.")
    request_id: str = absent("500: the id to quote when reporting the error.")


# --- pages ----------------------------------------------------------------------------

T = TypeVar("T")


class Page(Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


# Query parameters are left out, never null: their optional members use absent().


class PageQuery(Query):
    limit: int = Field(20, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] = absent()


# --- users ----------------------------------------------------------------------------


class RegisterIn(Body):
    email: Email
    password: Password
    name: UserName


class LoginIn(Body):
    email: LoginEmail
    password: Annotated[str, StringConstraints(min_length=1, max_length=128), *NoNul]


class ProfileUpdateIn(Body):
    """Any of name, email, password; current_password too to change email or password."""

    # The service's rules, stated so that schema-valid bodies are the accepted ones:
    # at least one of name, email, password; email or password only together with
    # current_password (checked, and answered 422 when missing, by accounts.update_profile).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": ["name"]}, {"required": ["email"]}, {"required": ["password"]}],
            "dependentRequired": {"email": ["current_password"], "password": ["current_password"]},
        }
    )

    name: UserName = absent()
    email: Email = absent()
    password: Password = absent()
    current_password: Annotated[str, StringConstraints(max_length=128), *NoNul] = absent()

    @model_validator(mode="after")
    def _something_to_change(self) -> ProfileUpdateIn:
        if self.name is None and self.email is None and self.password is None:
            raise ValueError("give at least one of name, email, password")
        return self


class TokenOut(Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the token expires.")
    refresh_token: str = Field(
        description="Good for one exchange at /api/users/token/refresh; presenting it a second time ends the session."
    )
    refresh_expires_in: int = Field(description="Seconds until the session ends (REFRESH_TTL_SECONDS after login).")


class RefreshIn(Body):
    # Any string: one that is not a token of ours is a 401, not a validation error.
    refresh_token: str


class LogoutIn(Body):
    all: bool = Field(False, description="End every session of the user, not only this one.")


class PasswordResetIn(Body):
    email: Email


class PasswordResetConfirmIn(Body):
    # Any string: one that is not a live token of ours is a 400.
    token: str
    password: Password


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

    name: ProductName = absent()
    description: Description = absent()
    price: Price = absent()
    currency: Currency = absent()
    stock: Stock = absent()
    sku: Sku | None = None

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ProductListQuery(PageQuery):
    q: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200),
        *NoNul,
        AfterValidator(_searchable),
        WithJsonSchema({"type": "string", "maxLength": 200, "pattern": _SEARCHABLE_PATTERN}),
    ] = absent()
    min_price: Price = absent()
    max_price: Price = absent()
    in_stock: bool = False
    sort: ProductSort = "created_at"


# --- orders ---------------------------------------------------------------------------


class OrderItemIn(Body):
    product_id: Id
    quantity: Quantity


# --- addresses and checkout -----------------------------------------------------------


def _country(value: str) -> str:
    code = value.upper()
    if not value.isascii() or code not in countries_by_alpha2:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code that exists")
    return code


# The codes of the maintained ISO 3166-1 list, in either case (stored upper case): the
# same rule for the document as for the check, so a schema-valid code is an accepted one.
_COUNTRY_PATTERN = (
    "^(?:" + "|".join(f"[{c[0]}{c[0].lower()}][{c[1]}{c[1].lower()}]" for c in sorted(countries_by_alpha2)) + ")$"
)
CountryCode = Annotated[
    str,
    AfterValidator(_country),
    WithJsonSchema(
        {"type": "string", "pattern": _COUNTRY_PATTERN, "description": "ISO 3166-1 alpha-2, any case (stored upper)."}
    ),
]


def _distinct(codes: list[str]) -> list[str]:
    return list(dict.fromkeys(codes))


Countries = Annotated[list[CountryCode], Field(max_length=len(countries_by_alpha2)), AfterValidator(_distinct)]
# 3..32 of A-Z 0-9 _ -, any case: codes are matched case-insensitively (stored upper case).
DiscountCode = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z0-9_-]{3,32}$")]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$")
_EARLIEST, _LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _timestamp(value: object) -> datetime:
    """An RFC 3339 timestamp with its offset (JSON Schema's date-time), as a UTC
    datetime; the first and last days Python can hold stand for themselves."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-05T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time that exists") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return _EARLIEST if parsed.year == 1 else _LATEST


Timestamp = Annotated[datetime, BeforeValidator(_timestamp), WithJsonSchema({"type": "string", "format": "date-time"})]


class AddressIn(Body):
    name: AddressLine
    line1: AddressLine
    line2: OptionalLine = ""
    city: City
    region: Region = ""
    postal_code: PostalCode
    country: CountryCode
    phone: Phone = ""

    def postal(self) -> PostalAddress:
        return PostalAddress(**self.model_dump())


class AddressUpdateIn(Body):
    """Any of the fields; omitted ones stay as they are."""

    name: AddressLine = absent()
    line1: AddressLine = absent()
    line2: OptionalLine = absent()
    city: City = absent()
    region: Region = absent()
    postal_code: PostalCode = absent()
    country: CountryCode = absent()
    phone: Phone = absent()

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ShippingMethodCreateIn(Body):
    name: ProductName
    price: Price
    currency: Currency = "USD"
    countries: Countries = Field(default_factory=list, description="Alpha-2 codes it ships to; empty: anywhere.")
    free_over: Price | None = Field(None, description="From this subtotal on, shipping costs 0; null: never free.")
    enabled: bool = True


class ShippingMethodUpdateIn(Body):
    """Any subset of the create fields; omitted fields stay as they are (free_over: null clears it)."""

    name: ProductName = absent()
    price: Price = absent()
    currency: Currency = absent()
    countries: Countries = absent()
    free_over: Price | None = nullable()
    enabled: bool = absent()

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


DiscountValue = Annotated[int, Field(ge=1, le=MAX_PRICE), Integral]
_FIXED: dict[str, Any] = {"properties": {"kind": {"const": "fixed"}}}
_AT_MOST_100: dict[str, Any] = {"properties": {"value": {"maximum": 100}}}
Redemptions = Annotated[int, Field(ge=0, le=MAX_INT32), Integral]
PerCustomer = Annotated[int, Field(ge=1, le=MAX_INT32), Integral]


class DiscountCreateIn(Body):
    # A percent discount's value is 1..100 (a fixed one's any amount from 1): stated for
    # the document; the table's CHECK refuses the rest (422 on `value`).
    model_config = ConfigDict(json_schema_extra={"anyOf": [_FIXED, _AT_MOST_100]})

    code: DiscountCode
    kind: Literal["percent", "fixed"]
    value: DiscountValue = Field(description="percent: 1..100; fixed: minor units of `currency`.")
    currency: Currency = "USD"
    min_subtotal: Price = 0
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = Field(None, description="After starts_at.")
    max_redemptions: Redemptions | None = None
    max_per_customer: PerCustomer | None = None
    enabled: bool = True


class DiscountUpdateIn(Body):
    """Any subset of the create fields but `code`; omitted ones stay as they are (null
    clears starts_at, ends_at, max_redemptions and max_per_customer)."""

    kind: Literal["percent", "fixed"] = absent()
    value: DiscountValue = absent()
    currency: Currency = absent()
    min_subtotal: Price = absent()
    starts_at: Timestamp | None = nullable()
    ends_at: Timestamp | None = nullable()
    max_redemptions: Redemptions | None = nullable("Not below times_redeemed (409).")
    max_per_customer: PerCustomer | None = nullable()
    enabled: bool = absent()

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


# --- orders ---------------------------------------------------------------------------

# At most one of the two ways to give the address (the document says it too).
_ONE_ADDRESS: dict[str, Any] = {"shipping_address": {"not": {"required": ["shipping_address_id"]}}}


def _one_address(fields: set[str]) -> None:
    if {"shipping_address", "shipping_address_id"} <= fields:
        raise ValueError("give shipping_address or shipping_address_id, not both")


# A new order's shipping method needs an address (on a change, the order may have one).
_METHOD_NEEDS_ADDRESS: dict[str, Any] = {
    "shipping_method_id": {"anyOf": [{"required": ["shipping_address"]}, {"required": ["shipping_address_id"]}]}
}


class OrderCreateIn(Body):
    model_config = ConfigDict(json_schema_extra={"dependentSchemas": {**_ONE_ADDRESS, **_METHOD_NEEDS_ADDRESS}})

    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]
    shipping_address: AddressIn = absent("Where to ship (a snapshot is kept).")
    shipping_address_id: Id = absent("One of the caller's addresses (its snapshot is kept).")
    shipping_method_id: Id = absent("Needs a shipping address in one of its countries.")
    discount_code: DiscountCode = absent()

    @model_validator(mode="after")
    def _address_once(self) -> OrderCreateIn:
        _one_address(self.model_fields_set)
        return self

    def checkout(self) -> Checkout:
        return Checkout(
            None if self.shipping_address is None else self.shipping_address.postal(),
            self.shipping_address_id,
            self.shipping_method_id,
            self.discount_code,
        )


# Which part of an order's checkout each member changes.
_CHECKOUT_PARTS = {
    "shipping_address": "address",
    "shipping_address_id": "address",
    "shipping_method_id": "method",
    "discount_code": "discount",
}


class OrderUpdateIn(Body):
    """`status` alone, or any of `items` (replace the items of a pending order),
    `shipping_address` or `shipping_address_id`, `shipping_method_id` and
    `discount_code` (null removes each); the order's owner only, while pending."""

    # Neither items nor status may be null; status comes alone (a oneOf would say the
    # same but trips up generators), and the address one way at most.
    model_config = ConfigDict(
        json_schema_extra={"minProperties": 1, "dependentSchemas": {"status": {"maxProperties": 1}, **_ONE_ADDRESS}}
    )

    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)] = absent()
    status: OrderStatus = absent()
    shipping_address: AddressIn | None = nullable("Where to ship (a snapshot is kept); null: nowhere.")
    shipping_address_id: Id | None = nullable("One of the caller's addresses; null: nowhere.")
    shipping_method_id: Id | None = nullable("null: no shipping method.")
    discount_code: DiscountCode | None = nullable("null: no discount (its redemption is given back).")

    @model_validator(mode="after")
    def _status_alone(self) -> OrderUpdateIn:
        fields = self.model_fields_set
        if not fields:
            raise ValueError("give items, a shipping change or a discount code, or status")
        if "status" in fields and len(fields) > 1:
            raise ValueError("status comes alone")
        _one_address(fields)
        return self

    def checkout(self) -> Checkout:
        """The checkout parts this body changes."""
        return Checkout(
            None if self.shipping_address is None else self.shipping_address.postal(),
            self.shipping_address_id,
            self.shipping_method_id,
            self.discount_code,
            frozenset(_CHECKOUT_PARTS[name] for name in self.model_fields_set if name in _CHECKOUT_PARTS),
        )


class OrderListQuery(PageQuery):
    user_id: Id = absent("Admins only: orders of this user.")
    status: OrderStatus = absent()


# --- payments -------------------------------------------------------------------------


class PaymentMethodIn(Body):
    type: Literal["card"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=255), *NoNul]


class PaymentCreateIn(Body):
    order_id: Id
    payment_method: PaymentMethodIn
    amount: Price | None = Field(None, description="If given, must equal the order total.")


class RefundCreateIn(Body):
    amount: Annotated[int, Field(ge=1, le=MAX_ID), Integral] = absent(
        "Default: what is left to refund (the amount minus what was refunded or is being refunded). "
        "More than that: 409."
    )
    reason: Annotated[str, StringConstraints(max_length=500), *NoNul] = absent()
    restock: bool = Field(
        False,
        description="Return every unit of the order to stock. Only on the refund that completes the whole "
        "amount (else 422).",
    )


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
    # Known types (repeats are merged), or "*" on its own.
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "maxItems": len(EVENT_TYPES),
            "items": {"type": "string", "enum": [*EVENT_TYPES, "*"]},
            "anyOf": [{"items": {"enum": list(EVENT_TYPES)}}, {"maxItems": 1}],
        }
    ),
]
# What the document promises to take as a URL: http(s), a host name or IPv4 address, an
# optional port, then printable ASCII. Whether the host resolves, and only to public
# addresses, is checked when the webhook is saved and at every send: no schema can say.
_WEBHOOK_URL_PATTERN = (
    "^https?://[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    "(?::[1-9][0-9]{0,3})?(?:[/?#][!-~]*)?$"
)
WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2048),
    *NoNul,
    WithJsonSchema({"type": "string", "maxLength": 2048, "pattern": _WEBHOOK_URL_PATTERN}),
]
WebhookDescription = Annotated[str, StringConstraints(max_length=1000), *NoNul]


class EventsQuery(Query):
    after: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] = absent(
        "The `next_cursor` of the previous answer (none: from the oldest event)."
    )
    limit: int = Field(100, ge=1, le=100)


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

    url: WebhookUrl = absent()
    events: EventTypes = absent()
    description: WebhookDescription = absent()
    enabled: bool = absent()

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


# --- operations -----------------------------------------------------------------------


class HealthOut(Out):
    status: Literal["ok", "unavailable"]
