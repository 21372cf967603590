"""Property-based tests (hypothesis): the order status machine, stock arithmetic, and
a stateful run of the real API against a model of orders and stock."""

from __future__ import annotations

import http.client
import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from db.refusals import Refusal
from server.domain import order_status
from server.domain.order_status import Event
from server.domain.orders import MAX_QUANTITY, merge_items
from tests.helpers import ServerProcess, unique_email

TERMINAL = {"cancelled", "expired", "refunded"}


CONTRACT_TRANSITIONS = {
    ("pending", "paid"), ("paid", "shipped"), ("shipped", "delivered"),
    ("pending", "cancelled"), ("pending", "expired"),
    ("paid", "refunded"), ("shipped", "refunded"), ("delivered", "refunded"),
}  # fmt: skip


@settings(max_examples=300)
@given(st.sampled_from(order_status.STATUSES), st.lists(st.sampled_from(list(Event)), max_size=12))
def test_status_machine_allows_only_the_contracts_transitions(start: str, events: list[Event]) -> None:
    # TRANSITIONS is what may_request and required_status (below) read.
    status, seen = start, [start]
    for event in events:
        if (status, event) in order_status.TRANSITIONS:
            status = order_status.TRANSITIONS[(status, event)]
            seen.append(status)
    for before, after in itertools.pairwise(seen):
        assert (before, after) in CONTRACT_TRANSITIONS
    # Once an order leaves pending it never returns, and terminal statuses stay.
    if "pending" in seen:
        assert all(s == "pending" for s in seen[: seen.index("pending") + 1])
    for terminal in TERMINAL & set(seen):
        assert seen[-1] == terminal


@given(st.sampled_from(order_status.STATUSES), st.sampled_from(["owner", "admin"]))
def test_the_api_accepts_only_contract_transitions_from_the_right_caller(target: str, role: str) -> None:
    # What orders.change_status asks before it changes anything.
    allowed = order_status.may_request(target, role)
    if target in {"pending", "paid", "expired", "refunded"}:
        assert allowed is None  # never through PUT: only by creation, payment, expiry, refunds
        return
    assert allowed is (role == "admin" or target == "cancelled")
    assert (order_status.required_status(target), target) in CONTRACT_TRANSITIONS


def test_only_pending_orders_hold_stock_and_paid_ones_stay_sold() -> None:
    # HOLDS_STOCK and SOLD are what the invariant checker's stock accounting reads.
    assert {"pending"} == order_status.HOLDS_STOCK
    assert {"paid", "shipped", "delivered"} == order_status.SOLD
    assert {"refunded"} == order_status.SOLD_UNLESS_RESTOCKED
    for (status, _), after in order_status.TRANSITIONS.items():
        # Sold stock stays sold but for a refund (which may restock: SOLD_UNLESS_RESTOCKED);
        # held stock is sold by a payment or returned.
        if status in order_status.SOLD:
            assert after in order_status.SOLD | order_status.SOLD_UNLESS_RESTOCKED
        if status in order_status.HOLDS_STOCK and after not in order_status.HOLDS_STOCK:
            assert after in {"paid", "cancelled", "expired"}


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 1000)), min_size=1, max_size=30))
def test_merging_items_keeps_every_unit_once(items: list[tuple[int, int]]) -> None:
    totals: dict[int, int] = {}
    for pid, qty in items:
        totals[pid] = totals.get(pid, 0) + qty
    try:
        merged, first_index = merge_items(items)
    except Refusal as refused:
        assert any(q > MAX_QUANTITY for q in totals.values())
        assert refused.about["fields"]
        return
    assert dict(merged) == totals
    assert [pid for pid, _ in merged] == list(dict.fromkeys(pid for pid, _ in items))
    assert all(items[first_index[pid]][0] == pid for pid, _ in merged)


# --- the real API against a model ---------------------------------------------------------


class _Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, json.loads(data) if data else None


class OrdersAgainstAModel(RuleBasedStateMachine):
    """Random sequences of orders, line changes, payments, cancels, shipping and
    deletes; after each step the service's stock and statuses must match the model
    (stock = initial - held by pending - sold), and no answer may be a 5xx."""

    http: _Http

    @initialize()
    def setup(self) -> None:
        admin_login = self.http.call(
            "POST", "/api/users/login", {"email": "admin@example.com", "password": "admin-password-1"}
        )
        self.admin = admin_login[1]["access_token"]
        email = unique_email("model")
        self.http.call("POST", "/api/users/register", {"email": email, "password": "password-123", "name": "M"})
        self.user = self.http.call("POST", "/api/users/login", {"email": email, "password": "password-123"})[1][
            "access_token"
        ]
        self.stock: dict[int, int] = {}
        for _ in range(3):
            status, product = self.http.call(
                "POST", "/api/products", {"name": "Model item", "price": 100, "stock": 6}, self.admin
            )
            assert status == 201
            self.stock[product["id"]] = 6
        self.orders: dict[int, dict[str, Any]] = {}  # id -> {"status", "lines": {pid: qty}}

    def _expect(self, status: int, allowed: set[int]) -> None:
        assert status < 500, status
        assert status in allowed, status

    @rule(data=st.data())
    def create_order(self, data: st.DataObject) -> None:
        pids = data.draw(st.lists(st.sampled_from(sorted(self.stock)), min_size=1, max_size=3, unique=True))
        lines = {pid: data.draw(st.integers(1, 4)) for pid in pids}
        status, body = self.http.call(
            "POST", "/api/orders", {"items": [{"product_id": p, "quantity": q} for p, q in lines.items()]}, self.user
        )
        fits = all(self.stock[p] >= q for p, q in lines.items())
        self._expect(status, {201} if fits else {409})
        if status == 201:
            for p, q in lines.items():
                self.stock[p] -= q
            self.orders[body["id"]] = {"status": "pending", "lines": lines}

    def _pick(self, data: st.DataObject) -> int:
        picked: int = data.draw(st.sampled_from(sorted(self.orders)))
        return picked

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def change_lines(self, data: st.DataObject) -> None:
        order_id = self._pick(data)
        order = self.orders[order_id]
        pids = data.draw(st.lists(st.sampled_from(sorted(self.stock)), min_size=1, max_size=3, unique=True))
        lines = {pid: data.draw(st.integers(1, 4)) for pid in pids}
        status, _ = self.http.call(
            "PUT",
            f"/api/orders/{order_id}",
            {"items": [{"product_id": p, "quantity": q} for p, q in lines.items()]},
            self.user,
        )
        if order["status"] != "pending":
            self._expect(status, {409, 404})
            return
        available = {p: self.stock[p] + order["lines"].get(p, 0) for p in self.stock}
        fits = all(available[p] >= q for p, q in lines.items())
        self._expect(status, {200} if fits else {409})
        if status == 200:
            for p, q in order["lines"].items():
                self.stock[p] += q
            for p, q in lines.items():
                self.stock[p] -= q
            order["lines"] = lines

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), card=st.sampled_from(["tok_visa", "tok_chargeDeclined"]))
    def pay(self, data: st.DataObject, card: str) -> None:
        order_id = self._pick(data)
        order = self.orders[order_id]
        status, _ = self.http.call(
            "POST",
            "/api/payments",
            {"order_id": order_id, "payment_method": {"type": "card", "token": card}},
            self.user,
        )
        if order["status"] == "deleted":
            self._expect(status, {404})
        elif order["status"] != "pending":
            self._expect(status, {409})
        else:
            self._expect(status, {201} if card == "tok_visa" else {402})
            if status == 201:
                order["status"] = "paid"

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), wanted=st.sampled_from(["cancelled", "shipped", "delivered"]))
    def change_status(self, data: st.DataObject, wanted: str) -> None:
        target = wanted
        order_id = self._pick(data)
        order = self.orders[order_id]
        token = self.user if target == "cancelled" else self.admin
        status, _ = self.http.call("PUT", f"/api/orders/{order_id}", {"status": target}, token)
        required = order_status.required_status(target)
        if order["status"] == "deleted":
            self._expect(status, {404})
        elif order["status"] != required:
            self._expect(status, {409})
        else:
            self._expect(status, {200})
            if target == "cancelled":
                for p, q in order["lines"].items():
                    self.stock[p] += q
            order["status"] = target

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        order_id = self._pick(data)
        order = self.orders[order_id]
        status, _ = self.http.call("DELETE", f"/api/orders/{order_id}", None, self.user)
        if order["status"] == "deleted":
            self._expect(status, {404})
        elif order["status"] in order_status.DELETABLE:
            self._expect(status, {204})
            if order["status"] == "pending":
                for p, q in order["lines"].items():
                    self.stock[p] += q
            order["status"] = "deleted"
        else:
            self._expect(status, {409})

    @invariant()
    def stock_matches_the_model(self) -> None:
        if not hasattr(self, "stock"):
            return
        for pid, expected in self.stock.items():
            status, product = self.http.call("GET", f"/api/products/{pid}")
            assert status == 200
            assert product["stock"] == expected >= 0

    @invariant()
    def statuses_match_the_model(self) -> None:
        if not hasattr(self, "orders"):
            return
        for order_id, order in self.orders.items():
            status, body = self.http.call("GET", f"/api/orders/{order_id}", None, self.user)
            if order["status"] == "deleted":
                assert status == 404
            else:
                assert body["status"] == order["status"]


def test_the_api_behaves_like_the_model(live_server: ServerProcess) -> None:
    OrdersAgainstAModel.http = _Http(live_server.port)
    run = settings(max_examples=12, stateful_step_count=18, deadline=None, suppress_health_check=list(HealthCheck))(
        OrdersAgainstAModel
    ).TestCase
    run().runTest()
