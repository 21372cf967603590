"""The order status machine (pure: no I/O), as the contract states it.

    pending --pay--> paid --ship--> shipped --deliver--> delivered
    pending --cancel--> cancelled          pending --expire--> expired
    paid | shipped | delivered --refund (the whole amount back)--> refunded

Who may trigger each event, which statuses hold stock, which count as sold, which
can be deleted. The domain consults it before it asks the database (which then
checks the status again on the locked row); the request schema's status list and the
invariant checker's stock accounting come from here too.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

# Every status an order can have (the orders table's CHECK says the same).
Status = Literal["pending", "paid", "shipped", "delivered", "cancelled", "expired", "refunded"]
STATUSES: tuple[str, ...] = get_args(Status)


class Event(Enum):
    PAY = "pay"
    SHIP = "ship"
    DELIVER = "deliver"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REFUND = "refund"


TRANSITIONS: dict[tuple[str, Event], str] = {
    ("pending", Event.PAY): "paid",
    ("paid", Event.SHIP): "shipped",
    ("shipped", Event.DELIVER): "delivered",
    ("pending", Event.CANCEL): "cancelled",
    ("pending", Event.EXPIRE): "expired",
    ("paid", Event.REFUND): "refunded",
    ("shipped", Event.REFUND): "refunded",
    ("delivered", Event.REFUND): "refunded",
}

# Who may cause each event: the order's owner, an admin, or the service itself
# (payments, refunds and expiry happen only through their own mechanisms).
ACTORS: dict[Event, frozenset[str]] = {
    Event.PAY: frozenset({"payment"}),
    Event.SHIP: frozenset({"admin"}),
    Event.DELIVER: frozenset({"admin"}),
    Event.CANCEL: frozenset({"owner", "admin"}),
    Event.EXPIRE: frozenset({"expiry"}),
    Event.REFUND: frozenset({"refund"}),
}

# The event a `PUT {"status": ...}` asks for (refunded: no caller may ask; see may_request).
EVENT_FOR_TARGET: dict[str, Event] = {target: event for (_, event), target in TRANSITIONS.items()}

HOLDS_STOCK = frozenset({"pending"})
SOLD = frozenset({"paid", "shipped", "delivered"})
# Sold too, unless the refund that completed the whole amount restocked the units.
SOLD_UNLESS_RESTOCKED = frozenset({"refunded"})
DELETABLE = frozenset({"pending", "cancelled", "expired"})
# The orders that count towards a discount code's redemptions: holding it (pending) or
# having used it (paid and later). Cancellation and expiry give it back.
REDEEMS = HOLDS_STOCK | SOLD | SOLD_UNLESS_RESTOCKED
# The statuses from which refunds that reach the whole amount make an order refunded.
REFUNDABLE = frozenset(current for (current, event) in TRANSITIONS if event is Event.REFUND)


def may_request(target: str, role: str) -> bool | None:
    """Whether a caller with `role` ('owner' or 'admin') may ask for status
    `target` through the API: True, False (a role problem: 403), or None when no
    caller may (it only happens through payment, refunds or expiry, or not at all: 409)."""
    event = EVENT_FOR_TARGET.get(target)
    if event is None or not ACTORS[event] & {"owner", "admin"}:
        return None
    return role in ACTORS[event]


def required_status(target: str) -> str:
    """The status an order must have to move to `target`."""
    event = EVENT_FOR_TARGET[target]
    return next(current for (current, e) in TRANSITIONS if e is event)
