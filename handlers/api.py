"""Every route of the service, in the order the OpenAPI document lists them."""

from __future__ import annotations

from handlers import events, openapi, operations, orders, payments, products, users, webhooks
from handlers.routing import Route

ROUTES: list[Route] = [
    *users.ROUTES,
    *products.ROUTES,
    *orders.ROUTES,
    *payments.ROUTES,
    *events.ROUTES,
    *webhooks.ROUTES,
    *operations.ROUTES,
    *openapi.ROUTES,
]
