"""Every route of the service, in the order the OpenAPI document lists them."""

from __future__ import annotations

from handlers import openapi, operations, orders, payments, products, users
from handlers.routing import Route

ROUTES: list[Route] = [
    *users.ROUTES,
    *products.ROUTES,
    *orders.ROUTES,
    *payments.ROUTES,
    *operations.ROUTES,
    *openapi.ROUTES,
]
