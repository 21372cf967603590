"""Every route of the service, in the order the OpenAPI document lists them."""

from __future__ import annotations

from handlers import (
    addresses,
    discounts,
    events,
    openapi,
    operations,
    orders,
    payments,
    products,
    shipping,
    users,
    webhooks,
)
from handlers.routing import Route

ROUTES: list[Route] = [
    *users.ROUTES,
    *addresses.ROUTES,
    *products.ROUTES,
    *shipping.ROUTES,
    *discounts.ROUTES,
    *orders.ROUTES,
    *payments.ROUTES,
    *events.ROUTES,
    *webhooks.ROUTES,
    *operations.ROUTES,
    *openapi.ROUTES,
]
