"""Charges straight at Stripe's stand-in through the SDK, with no service in the way:
how fast the stand-in itself answers with a number of calls in flight, and what one
call costs the caller's CPU through the SDK's typed service and through its client's
`raw_request_async` (what the Stripe provider uses).

    python3 dev.py tools python -m loadtests.stripe_alone --latency-ms 100 --concurrency 16,32,64
    python3 dev.py tools python -m loadtests.stripe_alone --cpu      # typed against raw

Each concurrency gets a fresh stand-in (it keeps every object it made in memory, and
slows as they grow), pinned to --standin-cpus, while this process runs on
--client-cpus. Every call creates and confirms a PaymentIntent with `tok_visa`, as a
payment does. Run it on a quiet machine: the stand-in is one Python process, and its
figures move with anything else that wants its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import stripe

from server.gateways.stripe_provider import make_client
from tests.stripe_standin import for_load, new_api_key

_CHARGE: dict[str, Any] = {
    "amount": 1000,
    "currency": "usd",
    "confirm": True,
    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
    "payment_method_data": {"type": "card", "card": {"token": "tok_visa"}},
    "metadata": {"order_id": "1", "payment_id": "1"},
}

Call = Callable[[], Awaitable[object]]
# Far above any answer here: the stand-in's slowest at 64 calls in flight is well under a second.
_TIMEOUT_SECONDS = 30.0


def _client(url: str) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    """A client as the Stripe provider makes one, and its HTTP client to close."""
    return make_client(new_api_key(), url, _TIMEOUT_SECONDS)


def _calls(client: stripe.StripeClient) -> dict[str, Call]:
    """A charge through the typed service, and the same through raw_request_async."""

    async def typed() -> object:
        return await client.v1.payment_intents.create_async(
            _CHARGE,  # type: ignore[arg-type]
            {"idempotency_key": secrets.token_hex(12)},
        )

    async def raw() -> object:
        response = await client.raw_request_async(
            "post", "/v1/payment_intents", idempotency_key=secrets.token_hex(12), **_CHARGE
        )
        return response.data

    return {"typed": typed, "raw": raw}


async def _rate(url: str, concurrency: int, seconds: float) -> str:
    client, http = _client(url)
    charge = _calls(client)["raw"]
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            await charge()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await http.close_async()  # type: ignore[no-untyped-call]
    latencies.sort()

    def at(share: float) -> float:
        return latencies[int(share * (len(latencies) - 1))] * 1000

    rate = len(latencies) / seconds
    return f"{concurrency:4} in flight: {rate:6.0f} charges/s  p50 {at(0.5):6.1f} ms  p99 {at(0.99):6.1f} ms"


async def _cpu(url: str, calls: int) -> list[str]:
    """CPU time of this process per call, typed and raw alternately (twice each)."""
    client, http = _client(url)
    lines = []
    for name, charge in [*_calls(client).items()] * 2:
        for _ in range(30):  # the connection and the caches warm
            await charge()
        started = time.process_time()
        for _ in range(calls):
            await charge()
        lines.append(f"{name:5}: {(time.process_time() - started) / calls * 1000:.3f} ms of CPU a call")
    await http.close_async()  # type: ignore[no-untyped-call]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=100, help="the stand-in's latency per call")
    parser.add_argument("--concurrency", default="16,32,64", help="calls in flight (one run per value)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--standin-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--cpu", action="store_true", help="compare typed and raw calls' CPU (latency 0)")
    parser.add_argument("--calls", type=int, default=400, help="calls per --cpu measurement")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(cpu) for cpu in args.client_cpus.split(",")})
    if args.cpu:
        standin = for_load(0, args.standin_cpus, "loadtests.stripe_alone")
        try:
            print("\n".join(asyncio.run(_cpu(standin.url, args.calls))))
        finally:
            standin.stop()
        return
    for concurrency in (int(value) for value in args.concurrency.split(",")):
        standin = for_load(args.latency_ms, args.standin_cpus, "loadtests.stripe_alone")
        try:
            print(asyncio.run(_rate(standin.url, concurrency, args.seconds)), flush=True)
        finally:
            standin.stop()


if __name__ == "__main__":
    main()
