"""How each refusal of the domain and the stored functions is told to a client: one
table from the refusal's code to its problem document (status, wording, the members a
client can act on). The routing layer turns every Refusal a handler lets through into
its problem (handlers/routing.py); the document itself is built by
server/runtime/problems.py, as every problem is."""

from __future__ import annotations

from dataclasses import dataclass

from db.refusals import Refusal
from server.runtime.problems import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidResetToken,
    InvalidSignature,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)


@dataclass(frozen=True)
class Problem:
    """A refusal's problem: its kind, its `detail` (formatted with what the refusal is
    about), the limit setting it names, and members copied from what it is about. A
    validation problem names its field (`field`, or the refusal's own `fields`) and the
    detail is that field's message."""

    kind: type[ApiError]
    detail: str
    field: str | None = None
    limit: str | None = None
    members: tuple[str, ...] = ()
    retry_after: int = 1


_NOT_PENDING = "the order is {status}; that is not allowed in this status"

PROBLEMS: dict[str, Problem] = {
    # orders
    "order_not_found": Problem(NotFound, "no such order"),
    "wrong_status": Problem(Conflict, _NOT_PENDING),
    "payment_in_flight": Problem(Conflict, "a payment for this order is in progress"),
    "order_expired": Problem(Conflict, "the order has expired"),
    "short_stock": Problem(
        Conflict, "not enough stock for product {product_id} ({name}): {available} available", members=("product_id",)
    ),
    "unknown_products": Problem(ValidationFailed, "no such product"),
    "mixed_currencies": Problem(ValidationFailed, "all products of an order must have the same currency", "items"),
    "merged_quantity_too_large": Problem(ValidationFailed, "at most {most} in total per product"),
    "too_many_pending": Problem(
        Conflict,
        "you hold the most pending orders allowed (ORDER_MAX_PENDING_PER_USER); pay or cancel one first",
        limit="ORDER_MAX_PENDING_PER_USER",
    ),
    "too_many_held": Problem(
        Conflict,
        "your pending orders would hold more units of product {product_id} than allowed "
        "(ORDER_MAX_HELD_UNITS_PER_PRODUCT)",
        limit="ORDER_MAX_HELD_UNITS_PER_PRODUCT",
        members=("product_id",),
    ),
    "too_many_held_at_address": Problem(
        Conflict,
        "the pending orders placed from your address would hold more units of product {product_id} than allowed "
        "(ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP)",
        limit="ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP",
        members=("product_id",),
    ),
    "not_order_owner": Problem(
        Forbidden, "only the order's owner may change its items, shipping address, shipping method or discount code"
    ),
    "others_orders": Problem(Forbidden, "only admins may list other users' orders"),
    "status_not_requestable": Problem(Conflict, "an order cannot be set to {status} through the API"),
    "status_admin_only": Problem(Forbidden, "only an admin may set an order to {status}"),
    # checkout: addresses, shipping methods, discount codes
    "address_not_found": Problem(NotFound, "no such address"),
    "too_many_addresses": Problem(Conflict, "you have the most addresses allowed ({most}); delete one first"),
    "shipping_method_not_found": Problem(NotFound, "no such shipping method"),
    "shipping_address_unknown": Problem(ValidationFailed, "is not one of your addresses", "shipping_address_id"),
    "shipping_method_unknown": Problem(
        ValidationFailed, "no such shipping method, or it is disabled", "shipping_method_id"
    ),
    "shipping_method_currency": Problem(
        ValidationFailed, "this shipping method is for orders in {currency}", "shipping_method_id"
    ),
    "shipping_address_required": Problem(
        ValidationFailed, "a shipping method needs a shipping address", "shipping_address"
    ),
    "shipping_country": Problem(
        ValidationFailed, "this shipping method does not ship to {country}", "shipping_method_id"
    ),
    "discount_not_found": Problem(NotFound, "no such discount"),
    "discount_code_taken": Problem(Conflict, "a discount with this code exists"),
    "discount_value_invalid": Problem(ValidationFailed, "a percent discount's value is 1..100", "value"),
    "discount_window_empty": Problem(ValidationFailed, "must be after starts_at", "ends_at"),
    "discount_below_redeemed": Problem(
        Conflict, "max_redemptions cannot be below the redemptions the code already has (times_redeemed)"
    ),
    "discount_unknown": Problem(ValidationFailed, "no such discount code", "discount_code"),
    "discount_disabled": Problem(ValidationFailed, "this discount code is disabled", "discount_code"),
    "discount_not_started": Problem(ValidationFailed, "this discount code is not valid yet", "discount_code"),
    "discount_ended": Problem(ValidationFailed, "this discount code has ended", "discount_code"),
    "discount_currency": Problem(ValidationFailed, "this discount code is for orders in {currency}", "discount_code"),
    "discount_min_subtotal": Problem(
        ValidationFailed, "this discount code needs a subtotal of at least {min_subtotal}", "discount_code"
    ),
    "discount_exhausted": Problem(Conflict, "this discount code has no redemptions left"),
    "discount_customer_limit": Problem(
        Conflict, "you have used this discount code the most times allowed ({max_per_customer})"
    ),
    "too_many_discount_guesses": Problem(
        TooManyRequests, "too many unknown discount codes (DISCOUNT_MAX_UNKNOWN_PER_USER); try again later"
    ),
    # payments
    "payment_not_found": Problem(NotFound, "no such payment"),
    "amount_mismatch": Problem(ValidationFailed, "must equal the order total ({total})", "amount"),
    "too_many_order_declines": Problem(
        Conflict,
        "this order's payments were declined {declines} times (PAYMENT_MAX_DECLINES_PER_ORDER); it takes no more",
        limit="PAYMENT_MAX_DECLINES_PER_ORDER",
    ),
    "too_many_declines": Problem(
        TooManyRequests, "too many declined payments in 24 hours (PAYMENT_MAX_DECLINES_PER_USER)"
    ),
    "too_many_declines_at_address": Problem(
        TooManyRequests, "too many declined payments from your address in 24 hours (PAYMENT_MAX_DECLINES_PER_IP)"
    ),
    "key_reused": Problem(ValidationFailed, "this key was used with a different request body", "Idempotency-Key"),
    "key_in_flight": Problem(Conflict, "a request with this Idempotency-Key is still in flight"),
    "amount_below_minimum": Problem(
        ValidationFailed,
        "the order total is below the payment provider's minimum charge ({minimum} {currency})",
        "order_id",
    ),
    "provider_event_invalid": Problem(InvalidSignature, "the event's signature is missing, wrong or too old"),
    "provider_events_off": Problem(NotFound, "the payment provider in use sends no events"),
    # refunds
    "payment_pending": Problem(Conflict, "the payment is still pending; retry once it has settled"),
    "payment_not_refundable": Problem(Conflict, "the payment is {status}; only a succeeded payment can be refunded"),
    "refund_in_flight": Problem(
        Conflict, "{left} is left to refund while {in_flight} is being refunded; retry when it is settled"
    ),
    "nothing_left": Problem(Conflict, "nothing is left to refund"),
    "over_refund": Problem(Conflict, "only {left} is left to refund"),
    "payment_of_another_provider": Problem(
        Conflict, "the payment was made through the {provider} provider, which is not the one configured now"
    ),
    "provider_refused_amount": Problem(
        Conflict,
        "the payment provider refused the refund for its amount ({reason}): the charge has less left to refund",
        members=("refund_id",),
    ),
    "restock_in_flight": Problem(
        Conflict, "restock goes with the refund that completes the whole amount; another refund is in flight"
    ),
    "restock_partial": Problem(
        ValidationFailed, "only the refund that completes the whole amount ({left} left) can restock", "restock"
    ),
    # users and sessions
    "email_taken": Problem(Conflict, "a user with this email already exists"),
    "invalid_credentials": Problem(InvalidCredentials, ""),
    "invalid_reset_token": Problem(InvalidResetToken, ""),
    "token_missing": Problem(Unauthorized, "missing or invalid access token"),
    "not_bearer": Problem(Unauthorized, "expected an Authorization: Bearer <token> header"),
    "token_invalid": Problem(Unauthorized, "access token is invalid"),
    "token_expired": Problem(Unauthorized, "access token has expired"),
    "token_revoked": Problem(Unauthorized, "access token is no longer valid"),
    "refresh_token_invalid": Problem(Unauthorized, "refresh token is invalid or its session has ended"),
    "refresh_token_reused": Problem(Unauthorized, "refresh token was already used; the session has been ended"),
    "too_many_registrations": Problem(TooManyRequests, "too many registrations from this address; try again later"),
    "too_many_password_attempts": Problem(TooManyRequests, "too many password attempts; try again later"),
    "too_many_reset_requests": Problem(TooManyRequests, "too many password-reset requests; try again later"),
    "current_password_required": Problem(ValidationFailed, "required to change email or password", "current_password"),
    "current_password_wrong": Problem(ValidationFailed, "is not the current password", "current_password"),
    "passwords_busy": Problem(ServiceUnavailable, "too many passwords are being checked; retry shortly"),
    # lists
    "cursor_invalid": Problem(ValidationFailed, "cursor is invalid or belongs to another query", "{field}"),
    # products
    "product_not_found": Problem(NotFound, "no such product"),
    "sku_taken": Problem(Conflict, "a product with this sku exists"),
    "search_too_slow": Problem(ServiceUnavailable, "this search takes too long; narrow it down"),
    # webhooks
    "webhook_not_found": Problem(NotFound, "no such webhook"),
    "webhook_url_invalid": Problem(ValidationFailed, "must be an http or https URL", "url"),
    "webhook_url_control_characters": Problem(ValidationFailed, "must not contain control characters", "url"),
    "webhook_host_unresolved": Problem(ValidationFailed, "the host does not resolve", "url"),
    "webhook_host_private": Problem(
        ValidationFailed, "the host resolves to a loopback, private or link-local address", "url"
    ),
    # the order actors' bounds
    "shutting_down": Problem(ServiceUnavailable, "the service is shutting down", retry_after=2),
    "too_many_in_progress": Problem(TooManyRequests, "too many of your requests are in progress; retry shortly"),
    "too_many_actors": Problem(ServiceUnavailable, "too many orders are being worked on; retry shortly"),
    "mailbox_full": Problem(ServiceUnavailable, "too many requests queued for this order; retry shortly"),
    "queue_timeout": Problem(ServiceUnavailable, "the order is busy; retry shortly"),
    "command_interrupted": Problem(ServiceUnavailable, "the command was interrupted; retry shortly"),
}


def problem_for(refusal: Refusal) -> ApiError:
    """The problem that tells a client of `refusal`."""
    problem, about = PROBLEMS[refusal.code], refusal.about
    detail = problem.detail.format(**about)
    if problem.kind is ValidationFailed:
        fields = about["fields"] if problem.field is None else [problem.field.format(**about)]
        return ValidationFailed([{"field": field, "message": detail} for field in fields])
    if problem.kind is TooManyRequests or problem.kind is ServiceUnavailable:
        return problem.kind(detail, retry_after=about.get("retry_after", problem.retry_after))
    if problem.kind is InvalidCredentials or problem.kind is InvalidResetToken:
        return problem.kind()
    if problem.kind is Unauthorized:
        return Unauthorized(detail)
    extra = {name: about[name] for name in problem.members}
    if problem.limit is not None:
        extra["limit"] = problem.limit
    return problem.kind(detail, extra=extra)
