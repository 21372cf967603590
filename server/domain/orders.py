"""Orders: creation, reads, and the commands that run in each order's actor.

Every change is one call of its stored function (db/orders.py), which checks the
rules on the locked rows, changes the order and writes its event; this module says
who may ask for what, merges repeated items, and keeps the actors' timers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import asyncpg

from db import orders as orders_db
from db.pool import Database
from db.refusals import Refusal
from server.domain import discounts, order_status
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.order_actors import OrderActor
from server.domain.order_batches import Batches
from server.domain.pages import keyset_page
from server.runtime.config import Config
from server.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# Most units of one product an order may hold (the request schema's bound too).
MAX_QUANTITY = 1000


def merge_items(items: Sequence[tuple[int, int]]) -> tuple[list[orders_db.Item], dict[int, int]]:
    """Merge items that name the same product (quantities add up), keeping the order of
    first appearance. Returns the items and, per product, the index of its first item
    in the request (to name fields in refusals). A merged quantity above the per-item
    maximum is refused ('merged_quantity_too_large')."""
    quantities: dict[int, int] = {}
    first_index: dict[int, int] = {}
    for index, (product_id, quantity) in enumerate(items):
        first_index.setdefault(product_id, index)
        quantities[product_id] = quantities.get(product_id, 0) + quantity
    too_many = [pid for pid, qty in quantities.items() if qty > MAX_QUANTITY]
    if too_many:
        fields = [f"items[{first_index[pid]}].quantity" for pid in too_many]
        raise Refusal("merged_quantity_too_large", fields=fields, most=MAX_QUANTITY)
    return list(quantities.items()), first_index


@contextmanager
def _naming_items(first_index: dict[int, int]) -> Iterator[None]:
    """Unknown products are refused by product id: name the request's fields too."""
    try:
        yield
    except Refusal as refusal:
        if refusal.code == "unknown_products":
            unknown = refusal.about["product_ids"]
            refusal.about["fields"] = [f"items[{first_index.get(pid, 0)}].product_id" for pid in unknown]
        raise


# What an order ships to and with, and the code it redeems (see db/orders.py).
Checkout = orders_db.Checkout
NO_CHECKOUT = orders_db.NO_CHECKOUT
# Orders of one product placed together (server/domain/order_batches.py).
OrderBatches = Batches[int, orders_db.NewOrder, asyncpg.Record]


def _hold_limits(config: Config) -> orders_db.HoldLimits:
    return orders_db.HoldLimits(
        config.order_max_pending_per_user,
        config.order_max_held_units_per_product,
        config.order_max_held_units_per_product_per_ip,
    )


def order_terms(config: Config) -> orders_db.OrderTerms:
    return orders_db.OrderTerms(config.order_ttl_seconds, _hold_limits(config), discounts.guess_limit(config))


def batches(db: Database, config: Config, metrics: Metrics) -> OrderBatches:
    """This worker's batches of one-item orders, keyed by stream (ORDER_BATCH_STREAMS;
    built once, by the composition root)."""
    terms = order_terms(config)

    async def place_one(_stream: int, order: orders_db.NewOrder) -> asyncpg.Record:
        return await orders_db.create(db, order, terms)

    async def place_many(_stream: int, orders: Sequence[orders_db.NewOrder]) -> list[asyncpg.Record | Refusal]:
        return await orders_db.create_many(db, orders, terms)

    return Batches(
        place_one,
        place_many,
        max_batch=config.order_batch_max,
        timeout=config.db_pool_acquire_timeout,
        shed_after=config.db_pool_shed_after,
        observe=metrics.order_batch_size.observe,
    )


async def create(
    ctx: Context,
    principal: Principal,
    items: Sequence[tuple[int, int]],
    client_ip: str,
    checkout: Checkout = NO_CHECKOUT,
) -> asyncpg.Record:
    """A new pending order placed from `client_ip`, holding its stock (and its
    order.created event), shipped to and with what `checkout` names and discounted by
    its code: the order with its items. A one-item order is placed with the others of
    its stream (ORDER_BATCH_STREAMS: a product is always in the same one) that arrive
    while that stream is busy (order_batches)."""
    merged, first_index = merge_items(items)
    new_order = orders_db.NewOrder(principal.id, client_ip, merged, checkout)
    with _naming_items(first_index):
        if len(merged) == 1:
            stream = merged[0][0] % ctx.config.order_batch_streams
            order = await ctx.order_batches.place(stream, new_order)
        else:
            order = await orders_db.create(ctx.db, new_order, order_terms(ctx.config))
    ctx.metrics.order_transition("new", "pending")
    return order


async def get(ctx: Context, principal: Principal, order_id: int) -> asyncpg.Record:
    order = await orders_db.get(ctx.db, order_id, principal.scope)
    if order is None:
        raise Refusal("order_not_found")
    return order


async def page(
    ctx: Context, principal: Principal, *, user_id: int | None, status: str | None, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """Orders newest first: the caller's own, or (admins) everyone's or one user's."""
    if principal.scope is not None:
        if user_id is not None and user_id != principal.scope:
            raise Refusal("others_orders")
        user_id = principal.scope

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        before_id = None if after is None else after[0]
        return await orders_db.page(ctx.db, user_id=user_id, status=status, before_id=before_id, limit=limit)

    return await keyset_page(ctx, f"orders:{user_id}:{status}", cursor, limit, fetch)


# --- commands: each runs in the order's actor -------------------------------------------
# A command is authorized before it is queued: a request about an order its caller may
# not see is refused (404) at once and never waits in (or fills) that order's mailbox.


async def authorize(ctx: Context, principal: Principal, order_id: int) -> int:
    """The order's owner, when the caller may see the order (its owner, or an admin);
    refused as not found otherwise, without revealing that it exists."""
    owner = await orders_db.owner(ctx.db, order_id)
    if owner is None or principal.scope not in (None, owner):
        raise Refusal("order_not_found")
    return owner


async def change(
    ctx: Context,
    principal: Principal,
    order_id: int,
    items: Sequence[tuple[int, int]] | None,
    checkout: Checkout = NO_CHECKOUT,
) -> asyncpg.Record:
    """The order with its new items (None: they stay) and the parts of its checkout
    that `checkout.changes` names; its shipping and discount priced again."""
    if await authorize(ctx, principal, order_id) != principal.id:
        raise Refusal("not_order_owner")
    merged, first_index = (None, {}) if items is None else merge_items(items)
    limits = _hold_limits(ctx.config)
    guesses = discounts.guess_limit(ctx.config)

    async def command(actor: OrderActor) -> asyncpg.Record:
        with _naming_items(first_index):
            order = await orders_db.replace_items(ctx.db, order_id, principal.id, merged, limits, checkout, guesses)
        actor.note_expiry(order["expires_at"])
        return order

    return await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def change_status(ctx: Context, principal: Principal, order_id: int, target: str) -> asyncpg.Record:
    allowed = order_status.may_request(target, "admin" if principal.is_admin else "owner")
    if allowed is None:
        raise Refusal("status_not_requestable", status=target)
    # Not found rather than forbidden for someone else's order: do not reveal it exists.
    await authorize(ctx, principal, order_id)
    if not allowed:
        raise Refusal("status_admin_only", status=target)
    from_status = order_status.required_status(target)

    async def command(actor: OrderActor) -> asyncpg.Record:
        if target == "cancelled":
            order = await orders_db.cancel(ctx.db, order_id, principal.scope)
        else:
            order = await orders_db.advance(ctx.db, order_id, from_status, target)
        actor.note_expiry(None)
        ctx.metrics.order_transition(from_status, target)
        return order

    return await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def delete(ctx: Context, principal: Principal, order_id: int) -> None:
    await authorize(ctx, principal, order_id)

    async def command(actor: OrderActor) -> None:
        status = await orders_db.delete(ctx.db, order_id, principal.scope, order_status.DELETABLE)
        actor.note_expiry(None)
        if status == "pending":
            ctx.metrics.order_transition("pending", "cancelled")

    await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def expire(db: Database, metrics: Metrics, order_id: int) -> bool:
    """Expire the order if it is due: an actor's expiry timer fired (inside that
    actor), or a payment found the order past its expiry. Takes the pool and the
    metrics rather than the Context, which holds the supervisor that calls this."""
    expired = await orders_db.expire(db, order_id)
    if expired:
        metrics.order_transition("pending", "expired")
        log.info("order expired", extra={"order_id": order_id})
    return expired


async def sweep_expired(ctx: Context) -> int:
    """Expire due orders that no live actor here is timing; returns how many."""
    total = 0
    while True:
        expired = await orders_db.expire_due(
            ctx.db, exclude=ctx.supervisor.live_order_ids(), batch=ctx.config.order_sweep_batch
        )
        total += len(expired)
        if expired:
            ctx.metrics.order_transition("pending", "expired", len(expired))
            log.info("orders expired by sweeper", extra={"count": len(expired)})
        if len(expired) < ctx.config.order_sweep_batch:
            return total
