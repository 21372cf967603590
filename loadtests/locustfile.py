"""Realistic storefront journeys for locust (FastHttpUser, for throughput).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 100 -r 20 --run-time 60s --csv loadtests/reports/run --html loadtests/reports/run.html

Journeys, weighted: browsers read and search the catalog; shoppers register, log
in, keep an address in their book, order, pay (some cards are declined, then
retried), check out with an address, a shipping method and a discount code, look at
their orders and sometimes cancel; an admin restocks, adds products and refunds some
paid orders (in part, or in full with restock). Declines (402) are part of the journey and count
as successes; any other unexpected status is a failure. The admin refunds payments
made by the shoppers of its own locust process (with --processes or workers, those
of the worker it runs on).

Through Stripe's stand-in with a gateway that answers in 200-400 ms: start the stand-in
(`python ../shared/stripe-standin/standin.py --port 12111 --latency-ms 300 --webhook-url
http://127.0.0.1:8080/api/payments/stripe/webhook --webhook-secret whsec_load`) and the
service with PAYMENT_PROVIDER=stripe, STRIPE_API_KEY=sk_test_load,
STRIPE_WEBHOOK_SECRET=whsec_load, STRIPE_API_BASE=http://127.0.0.1:12111; the journeys
are the same (tok_visa pays, tok_chargeDeclined is declined with 402, refunds are 201).

Env: STOREFRONT_ADMIN_EMAIL / STOREFRONT_ADMIN_PASSWORD (the service's ADMIN_EMAIL /
ADMIN_PASSWORD): needed by the admin journey and to make sure the catalog has
products before the test starts (LOCUST_MIN_PRODUCTS, default 50). When they are set
but the admin cannot log in (an admin with that email existed before with another
password: ADMIN_PASSWORD never resets it), locust stops at once, saying so in one
line, with exit code 1.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from collections import deque
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from loadtests.service_setup import SetupError, admin_token, call

ADMIN_EMAIL = os.environ.get("STOREFRONT_ADMIN_EMAIL", "")
ADMIN_PASSWORD = os.environ.get("STOREFRONT_ADMIN_PASSWORD", "")
MIN_PRODUCTS = int(os.environ.get("LOCUST_MIN_PRODUCTS", "50"))
# The percent code the checkout journey redeems (made at the start, with the admin's
# credentials; without them the journey checks out without a code).
DISCOUNT_CODE = os.environ.get("LOCUST_DISCOUNT_CODE", "LOADTEST10")
ADDRESS = {"name": "Load Shopper", "line1": "1 Test Street", "city": "Springfield", "postal_code": "12345",
           "country": "US"}  # fmt: skip
SEARCH_TERMS = ("steel", "oak", "lamp", "chair", "mug", "wool", "smart", "desk", "blue", "pro")
SORTS = ("created_at", "-created_at", "price", "-price", "name", "-name")
JSON = {"Content-Type": "application/json"}
# Payments the shoppers of this process made, for the admin to refund some of.
PAID: deque[dict[str, Any]] = deque(maxlen=1000)


def _admin_token(client: Any) -> str | None:
    if not (ADMIN_EMAIL and ADMIN_PASSWORD):
        return None
    with client.post(
        "/api/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, name="login (admin)",
        catch_response=True,
    ) as response:  # fmt: skip
        if response.status_code != 200:
            response.failure(f"admin login: {response.status_code}")
            return None
        token: str = response.json()["access_token"]
        return token


@events.init.add_listener
def check_admin(environment: Environment, **_: Any) -> None:
    """Before anything starts: with admin credentials given, the admin must be able to
    log in (else the catalog is never seeded and every order fails), or locust stops
    here with one line saying why."""
    if isinstance(environment.runner, WorkerRunner) or environment.host is None or not (ADMIN_EMAIL and ADMIN_PASSWORD):
        return
    try:
        admin_token(environment.host, ADMIN_EMAIL, ADMIN_PASSWORD)
    except SetupError as exc:
        sys.exit(f"locust: {exc}")


@events.test_start.add_listener
def ensure_catalog(environment: Environment, **_: Any) -> None:
    """Make sure there is something to buy (with stock that will not run out).

    Once per test: on the master or a standalone runner, not again on each worker.
    """
    if isinstance(environment.runner, WorkerRunner):
        return
    if environment.host is None or not (ADMIN_EMAIL and ADMIN_PASSWORD):
        return
    token = admin_token(environment.host, ADMIN_EMAIL, ADMIN_PASSWORD)
    existing = len(call(environment.host, "GET", "/api/products?limit=100")["items"])
    for i in range(existing, MIN_PRODUCTS):
        body = {
            "name": f"{random.choice(SEARCH_TERMS).title()} item {i}",
            "price": random.randint(199, 19999),
            "stock": 1_000_000,
        }
        call(environment.host, "POST", "/api/products", body, token)
    # The checkout journey's shipping method (to anywhere, free from 100.00) and code.
    if not call(environment.host, "GET", "/api/shipping-methods")["items"]:
        body = {"name": "Load test parcel", "price": 495, "free_over": 10_000}
        call(environment.host, "POST", "/api/shipping-methods", body, token)
    codes = {d["code"] for d in call(environment.host, "GET", "/api/discounts?limit=100", token=token)["items"]}
    if DISCOUNT_CODE not in codes:
        body = {"code": DISCOUNT_CODE, "kind": "percent", "value": 10}
        call(environment.host, "POST", "/api/discounts", body, token)


class Browser(FastHttpUser):
    """Anonymous visitors: most of the traffic."""

    weight = 6
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.product_ids: list[int] = []

    @task(5)
    def browse(self) -> None:
        sort = random.choice(SORTS)
        page = self.client.get(f"/api/products?limit=20&sort={sort}", name="/api/products?sort").json()
        self.product_ids = [p["id"] for p in page["items"]] or self.product_ids
        if page["next_cursor"] and random.random() < 0.3:
            self.client.get(
                f"/api/products?limit=20&sort={sort}&cursor={page['next_cursor']}", name="/api/products?cursor"
            )

    @task(3)
    def search(self) -> None:
        term = random.choice(SEARCH_TERMS)
        extra = random.choice(["", "&in_stock=true", "&min_price=500&max_price=5000", "&sort=price"])
        self.client.get(f"/api/products?q={term}{extra}", name="/api/products?q")

    @task(6)
    def view_product(self) -> None:
        if self.product_ids:
            self.client.get(f"/api/products/{random.choice(self.product_ids)}", name="/api/products/{id}")


class Shopper(FastHttpUser):
    """Registers, logs in, orders, pays (some declines), cancels now and then."""

    weight = 3
    wait_time = between(1, 3)

    def on_start(self) -> None:
        email = f"shopper-{uuid.uuid4().hex[:12]}@example.com"
        password = "load-test-password"
        self.client.post(
            "/api/users/register", json={"email": email, "password": password, "name": "Load Shopper"}, name="register"
        )
        login = self.client.post("/api/users/login", json={"email": email, "password": password}, name="login")
        self.auth = {"Authorization": f"Bearer {login.json()['access_token']}", **JSON}
        self.pending: list[dict[str, Any]] = []
        address = self.client.post("/api/users/addresses", json=ADDRESS, headers=self.auth, name="/api/users/addresses")
        self.address_id: int | None = address.json()["id"] if address.status_code == 201 else None

    def _products(self) -> list[dict[str, Any]]:
        page = self.client.get("/api/products?limit=50&in_stock=true", name="/api/products?in_stock").json()
        items: list[dict[str, Any]] = page["items"]
        return items

    @task(4)
    def order_and_pay(self) -> None:
        products = [p for p in self._products() if p["currency"] == "USD"]
        if not products:
            return
        lines = [
            {"product_id": p["id"], "quantity": random.randint(1, 2)}
            for p in random.sample(products, min(len(products), random.randint(1, 3)))
        ]
        with self.client.post(
            "/api/orders", json={"items": lines}, headers=self.auth, name="/api/orders", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"order: {response.status_code} {response.text[:200]}")
                return
            order = response.json()
        card = "tok_chargeDeclined" if random.random() < 0.15 else "tok_visa"
        self._pay(order, card)
        if card == "tok_chargeDeclined":
            self._pay(order, "tok_visa")  # retry with another card

    def _pay(self, order: dict[str, Any], card: str) -> None:
        body = {"order_id": order["id"], "payment_method": {"type": "card", "token": card}}
        headers = {**self.auth, "Idempotency-Key": uuid.uuid4().hex}
        expected = 201 if card == "tok_visa" else 402
        with self.client.post(
            "/api/payments", json=body, headers=headers, name=f"/api/payments ({card})", catch_response=True
        ) as response:
            if response.status_code == expected:
                response.success()  # a decline (402) is an expected answer here
                if expected == 201 and random.random() < 0.2:
                    PAID.append(response.json())
            else:
                response.failure(f"payment: {response.status_code} {response.text[:200]}")

    @task(2)
    def checkout_and_pay(self) -> None:
        """An order shipped to an address of the book, with a shipping method and a
        discount code, then paid: what the payment charges is the order's total."""
        products = [p for p in self._products() if p["currency"] == "USD"]
        methods = self.client.get("/api/shipping-methods", name="/api/shipping-methods").json()["items"]
        methods = [m for m in methods if m["currency"] == "USD"]
        if not products or not methods or self.address_id is None:
            return
        body: dict[str, Any] = {
            "items": [{"product_id": random.choice(products)["id"], "quantity": random.randint(1, 3)}],
            "shipping_address_id": self.address_id,
            "shipping_method_id": random.choice(methods)["id"],
        }
        if ADMIN_EMAIL and ADMIN_PASSWORD:  # the code exists (ensure_catalog made it)
            body["discount_code"] = DISCOUNT_CODE.lower()
        with self.client.post(
            "/api/orders", json=body, headers=self.auth, name="/api/orders (checkout)", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"checkout: {response.status_code} {response.text[:200]}")
                return
            order = response.json()
            if order["total"] != order["subtotal"] - (order["discount"] or {"amount": 0})["amount"] + order["shipping"]:
                response.failure(f"checkout: total {order['total']} does not add up")
                return
        self._pay(order, "tok_visa")

    @task(1)
    def order_then_cancel(self) -> None:
        products = self._products()
        if not products:
            return
        line = {"product_id": random.choice(products)["id"], "quantity": 1}
        created = self.client.post("/api/orders", json={"items": [line]}, headers=self.auth, name="/api/orders")
        if created.status_code == 201:
            order_id = created.json()["id"]
            self.client.put(
                f"/api/orders/{order_id}",
                json={"status": "cancelled"},
                headers=self.auth,
                name="/api/orders/{id} (cancel)",
            )

    @task(2)
    def my_orders(self) -> None:
        self.client.get("/api/orders?limit=10", headers=self.auth, name="/api/orders (list)")
        self.client.get("/api/users/profile", headers=self.auth, name="/api/users/profile")


class Admin(FastHttpUser):
    """Restocks what sells, adds a product now and then, refunds some paid orders."""

    weight = 1
    fixed_count = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        token = _admin_token(self.client)
        self.auth = {"Authorization": f"Bearer {token}", **JSON} if token else None

    @task(3)
    def restock(self) -> None:
        if self.auth is None:
            return
        page = self.client.get("/api/products?limit=100&sort=created_at", name="/api/products (admin)").json()
        for product in page["items"]:
            if product["stock"] < 1000:
                self.client.put(
                    f"/api/products/{product['id']}",
                    json={"stock": 1_000_000},
                    headers=self.auth,
                    name="/api/products/{id} (restock)",
                )

    @task(1)
    def add_product(self) -> None:
        if self.auth is None:
            return
        body = {"name": f"New arrival {uuid.uuid4().hex[:6]}", "price": random.randint(299, 9999), "stock": 1_000_000}
        self.client.post("/api/products", json=body, headers=self.auth, name="/api/products (create)")

    @task(2)
    def refund(self) -> None:
        if self.auth is None or not PAID:
            return
        payment = PAID.popleft()
        body: dict[str, Any] = {"reason": "load test"}
        if random.random() < 0.5 and payment["amount"] > 1:
            body["amount"] = payment["amount"] // 2  # partial: the rest stays paid
        else:
            body["restock"] = True  # the whole amount, units back on the shelf
        headers = {**self.auth, "Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(
            f"/api/payments/{payment['id']}/refunds", json=body, headers=headers,
            name="/api/payments/{id}/refunds", catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code != 201:
                response.failure(f"refund: {response.status_code} {response.text[:200]}")
