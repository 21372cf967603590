"""Schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

Two things the published document must not or cannot say:

- The document links a new order to `create_payment` with the order id only: a test
  card has no place in a public document. The fuzzer's own copy adds the simulated
  provider's succeeding test card to that link, so that stateful scenarios also reach
  paid orders (shipping, delivery, refusals to pay twice), not only declines.
- Some refusals of schema-valid requests depend on the data, which no JSON Schema can
  state: they are listed below, each as the contract defines it, and only those are
  not counted as "schema-valid request rejected". Any other refusal of a schema-valid
  request still fails the run (a type, range or shape the document gets wrong).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

TEST_CARD = {"type": "card", "token": "tok_visa"}

# Field errors (422) that depend on stored data or on secrets, by message prefix.
DATA_DEPENDENT_422 = (
    "no such product",  # the product must exist and be live
    "at most 1000 in total per product",  # lines of one product are merged, then limited
    "all products of an order must have the same currency",
    "is not the current password",  # a secret
    "this key was used with a different request body",  # the Idempotency-Key's history
    "must equal the order total",  # `amount` must equal the order's total
    "cursor is invalid or belongs to another query",  # only cursors the service issued
    "the host does not resolve",  # a webhook's URL: DNS, at the time of the request
    "the host resolves to a loopback, private or link-local address",  # ... and where it points
    "is one of the most commonly used passwords",  # a new password: on the list of common ones
    # checkout: what the address book, the shipping methods and the discount codes hold
    "is not one of your addresses",  # shipping_address_id: the caller's own
    "no such shipping method, or it is disabled",
    "this shipping method is for orders in",  # the order's currency
    "this shipping method does not ship to",  # the address's country
    "a shipping method needs a shipping address",  # on a change: the order's address may be removed
    "no such discount code",
    "this discount code is",  # disabled, not valid yet, for orders in another currency
    "this discount code has ended",
    "this discount code needs a subtotal of at least",
    "a percent discount's value is 1..100",  # a change of value or kind: the stored kind and value
    "must be after starts_at",  # a change of one end of the window: the stored other end
)


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    link = raw_schema["paths"]["/api/orders"]["post"]["responses"]["201"]["links"]["create_payment"]
    link["requestBody"] = {**link["requestBody"], "payment_method": TEST_CARD}


# Refusals (other than 422) that depend on stored data or secrets, by problem type.
DATA_DEPENDENT_PROBLEMS = (
    "https://storefront.example/problems/invalid-reset-token",  # only tokens the service mailed
)


def _data_dependent(response: Any) -> bool:
    if response.status_code == 402:
        return True  # a declined card (or refund): the documented answer to a well-formed request
    if response.status_code == 400:
        return response.json().get("type") in DATA_DEPENDENT_PROBLEMS
    if response.status_code != 422:
        return False
    errors = response.json().get("errors") or []
    return bool(errors) and all(str(e.get("message", "")).startswith(DATA_DEPENDENT_422) for e in errors)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    return not (isinstance(failure, RejectedPositiveData) and _data_dependent(response))
