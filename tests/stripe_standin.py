"""Stripe's stand-in (../shared/stripe-standin/standin.py) as a real HTTP server for the
tests, and what the tests ask it: its ledger (what was charged and refunded) and its
settings (latency, faults, where it sends events).

The stand-in is run, never copied: it is found next to the project (the shared folder
beside the checkout, or STRIPE_STANDIN naming standin.py). Each test talks to it with
an API key of its own, which the stand-in keeps as a separate account: a test sees
only its own PaymentIntents, refunds and idempotency keys.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "whsec_" + "teststandinsecret0123456789"
WEBHOOK_PATH = "/api/payments/stripe/webhook"


def standin_path() -> Path | None:
    named = os.environ.get("STRIPE_STANDIN")
    candidates = [Path(named)] if named else []
    # The shared folder beside the checkout (main, a worktree one level deeper, CI's clone).
    candidates += [parent / "shared" / "stripe-standin" / "standin.py" for parent in ROOT.parents]
    return next((path for path in candidates if path.is_file()), None)


class StandIn:
    """One stand-in process for the whole test run."""

    def __init__(self, path: Path, *extra: str) -> None:
        self.path = path
        self.extra = list(extra)  # more of its flags: --latency-ms 100, --fail-rate 0.1, ...
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> StandIn:
        self.process = subprocess.Popen(
            [
                sys.executable, str(self.path), "--port", "0", "--quiet",
                "--webhook-secret", WEBHOOK_SECRET, "--refund-async-delay", "0.5",
                "--webhook-retries", "2", "--webhook-retry-delay", "0.2", "--webhook-timeout", "5",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("STANDIN_URL="):
                self.url = line.strip().split("=", 1)[1]
                return self
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("the Stripe stand-in did not start")

    def pin(self, cpus: str) -> None:
        """Run every thread of the stand-in on `cpus` (a taskset list, e.g. "1"): in a
        benchmark it stands for a gateway elsewhere, so it is kept off the server's CPUs."""
        assert self.process is not None
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(self.process.pid)], check=True, capture_output=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # --- control -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def configure(self, **settings: Any) -> None:
        """latency_ms, fail_rate, hang_rate, fail_next, hang_next, webhook_url, ..."""
        self._request("POST", "/_standin/config", settings)

    def reset(self, webhook_url: str | None = None, latency_ms: float = 0) -> None:
        """Forget everything (pending refund failures and deliveries included) and go
        back to no faults (and `latency_ms`)."""
        self._request("POST", "/_standin/reset", {})
        self.configure(latency_ms=latency_ms, fail_rate=0.0, hang_rate=0.0, webhook_url=webhook_url)

    def ledger(self, api_key: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/_standin/ledger?api_key={api_key}")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/_standin/requests")["requests"]
        return result

    def authenticate(self, payment_intent: str, outcome: str = "succeed") -> None:
        """What the customer does on the 3-D Secure page."""
        self._request("POST", f"/_standin/3ds/{payment_intent}?outcome={outcome}", {})

    def redeliver(self, event_id: str) -> None:
        self._request("POST", "/_standin/redeliver", {"event_id": event_id})


def for_load(latency_ms: int, cpus: str | None, needed_by: str) -> StandIn:
    """A started stand-in for a load tool, answering every call after `latency_ms` and
    pinned to `cpus` (unpinned when empty); SystemExit naming `needed_by` when none is
    beside the checkout."""
    path = standin_path()
    if path is None:
        raise SystemExit(f"{needed_by} needs the Stripe stand-in (../shared/stripe-standin or STRIPE_STANDIN)")
    standin = StandIn(path, "--latency-ms", str(latency_ms)).start()
    if cpus:
        standin.pin(cpus)
    return standin


def new_api_key() -> str:
    """A fresh account at the stand-in."""
    return f"sk_test_{secrets.token_hex(12)}"


def stripe_settings(standin: StandIn, api_key: str) -> dict[str, Any]:
    """The service's settings for paying through the stand-in with this account."""
    return {
        "payment_provider": "stripe",
        "stripe_api_key": api_key,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": standin.url,
    }


def stripe_env(standin: StandIn, api_key: str) -> dict[str, str]:
    """The same as environment variables, for server processes."""
    return {
        "PAYMENT_PROVIDER": "stripe",
        "STRIPE_API_KEY": api_key,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": standin.url,
    }


# --- the ledger, judged -----------------------------------------------------------------


def ledger_violations(
    ledger: dict[str, Any], payments: list[dict[str, Any]], refunds: list[dict[str, Any]]
) -> list[str]:
    """Our records (payments and refunds rows, as dicts) against the stand-in's ledger of
    this account: exactly one succeeded charge per succeeded payment and none for a
    payment recorded failed (unless given back in full), refunds never above the charge,
    and the amounts refunded at Stripe are the ones we recorded."""
    problems: list[str] = []
    charges_by_intent: dict[str, list[dict[str, Any]]] = {}
    for charge in ledger["charges"]:
        if charge["status"] == "succeeded":
            charges_by_intent.setdefault(charge["payment_intent"], []).append(charge)
    intents_by_payment: dict[str, list[dict[str, Any]]] = {}
    for intent in ledger["payment_intents"]:
        intents_by_payment.setdefault(intent["metadata"].get("payment_id", ""), []).append(intent)
    stripe_refunded: dict[str, int] = {}
    for refund in ledger["refunds"]:
        if refund["status"] in ("succeeded", "pending"):
            stripe_refunded[refund["payment_intent"]] = (
                stripe_refunded.get(refund["payment_intent"], 0) + refund["amount"]
            )
    ours_refunded: dict[int, int] = {}
    for refund in refunds:
        if refund["status"] == "succeeded":
            ours_refunded[refund["payment_id"]] = ours_refunded.get(refund["payment_id"], 0) + refund["amount"]
    for payment in payments:
        intents = intents_by_payment.get(str(payment["id"]), [])
        if len(intents) > 1:
            problems.append(f"payment {payment['id']}: {len(intents)} PaymentIntents")
        charged = [c for i in intents for c in charges_by_intent.get(i["id"], [])]
        if payment["status"] == "succeeded":
            if len(charged) != 1:
                problems.append(f"payment {payment['id']} succeeded with {len(charged)} charges at Stripe")
            elif charged[0]["payment_intent"] != payment["provider_ref"]:
                problems.append(f"payment {payment['id']}: provider_ref is not its PaymentIntent")
            refunded = stripe_refunded.get(payment["provider_ref"], 0)
            if refunded != ours_refunded.get(payment["id"], 0):
                problems.append(
                    f"payment {payment['id']}: Stripe refunded {refunded}, we recorded {ours_refunded.get(payment['id'], 0)}"
                )
            if refunded > payment["amount"]:
                problems.append(f"payment {payment['id']}: refunded {refunded} of {payment['amount']}")
        elif payment["status"] == "failed" and charged:
            given_back = sum(stripe_refunded.get(c["payment_intent"], 0) for c in charged)
            if given_back < sum(c["amount"] for c in charged):
                problems.append(f"payment {payment['id']} failed but Stripe kept a charge")
    return problems


# --- the provider a test runs with ---------------------------------------------------------

# The simulated provider's faults as the stand-in's: `error` fails a call before anything
# is done, `timeout` carries it out and never answers.
_FAULTS = {"error": "fail_rate", "timeout": "hang_rate"}


class Gateway:
    """The payment provider of a test's app and servers: the simulated one, or Stripe's
    stand-in with an account of the test's own. Tests ask it what the provider did."""

    def __init__(self, name: str, standin: StandIn | None = None) -> None:
        self.name = name
        self.standin = standin
        self.api_key = new_api_key() if standin is not None else None

    @property
    def stripe(self) -> bool:
        return self.standin is not None

    def settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The app's settings for this provider; with Stripe, the simulated provider's
        latency and faults in `overrides` are given to the stand-in instead."""
        if self.standin is None or self.api_key is None:
            return {}
        self.configure_like(
            latency_ms=overrides.get("payment_provider_latency_ms", 0),
            fault=overrides.get("payment_provider_fault", "none"),
            rate=overrides.get("payment_provider_fault_rate", 0.0),
        )
        return stripe_settings(self.standin, self.api_key)

    def app_settings(self) -> dict[str, Any]:
        """This provider's settings for one more app, the stand-in left as it is."""
        if self.standin is None or self.api_key is None:
            return {}
        return stripe_settings(self.standin, self.api_key)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """Server processes' environment for this provider (the same translation)."""
        if self.standin is None or self.api_key is None:
            return {}
        self.configure_like(
            latency_ms=int(env.get("PAYMENT_PROVIDER_LATENCY_MS", "0")),
            fault=env.get("PAYMENT_PROVIDER_FAULT", "none"),
            rate=float(env.get("PAYMENT_PROVIDER_FAULT_RATE", "0")),
        )
        return stripe_env(self.standin, self.api_key)

    def configure_like(self, *, latency_ms: int = 0, fault: str = "none", rate: float = 0.0) -> None:
        assert self.standin is not None
        settings: dict[str, Any] = {"latency_ms": latency_ms, "fail_rate": 0.0, "hang_rate": 0.0}
        if fault in _FAULTS:
            settings[_FAULTS[fault]] = rate
        self.standin.configure(**settings)

    def send_events_to(self, base_url: str) -> None:
        if self.standin is not None:
            self.standin.configure(webhook_url=base_url.rstrip("/") + WEBHOOK_PATH)

    def ledger(self) -> dict[str, Any]:
        assert self.standin is not None and self.api_key is not None
        return self.standin.ledger(self.api_key)

    async def succeeded_charges(self, db: Any) -> int:
        """Charges the provider made and kept record of as succeeded."""
        if self.standin is None:
            count: int = await db.fetchval("SELECT count(*) FROM simulated_provider_charges WHERE status = 'succeeded'")
            return count
        return int(self.ledger()["summary"]["succeeded_charges"])

    async def violations(self, dsn: str, *, settled: bool = False) -> list[str]:
        """The service's invariant checker and, with Stripe, our records against the
        stand-in's ledger."""
        import asyncpg

        from tests.helpers import invariant_violations

        problems = await invariant_violations(dsn, settled=settled)
        if self.standin is None:
            return problems
        conn = await asyncpg.connect(dsn)
        try:
            payments = [dict(r) for r in await conn.fetch("SELECT * FROM payments WHERE provider = 'stripe'")]
            refunds = [dict(r) for r in await conn.fetch("SELECT * FROM refunds")]
        finally:
            await conn.close()
        return problems + ledger_violations(self.ledger(), payments, refunds)


@pytest.fixture(name="payment_provider", params=["simulated", "stripe"])
def both_providers(request: pytest.FixtureRequest) -> str:
    """Import into a test module to run its tests with both providers."""
    return str(request.param)
