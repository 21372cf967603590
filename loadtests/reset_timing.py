"""Can a client tell from the time of `POST /api/users/password-reset` whether an
email has an account? Measures the answer time for registered and unknown emails,
interleaved (so drift hits both alike), against a running server.

    python3 dev.py tools python -m loadtests.reset_timing --url http://127.0.0.1:8080 --requests 2000

Run the server with the reset throttles off (LOGIN_MAX_FAILURES_PER_EMAIL=0
LOGIN_MAX_FAILURES_PER_IP=0) or it answers 429 after a few requests, which is the
real defence: an attacker gets 5 requests per email per window, far too few to see
a sub-millisecond difference in timings that vary by milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import aiohttp


async def _timed(http: aiohttp.ClientSession, email: str) -> float:
    started = time.perf_counter()
    async with http.post("/api/users/password-reset", json={"email": email}) as response:
        await response.read()
        assert response.status == 202, response.status
    return (time.perf_counter() - started) * 1000


def _summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return (
        f"n={len(samples)} mean={statistics.fmean(samples):.3f} ms median={statistics.median(samples):.3f} ms "
        f"p90={p90:.3f} ms stdev={statistics.stdev(samples):.3f} ms"
    )


async def main_async(url: str, requests: int, users: int) -> None:
    async with aiohttp.ClientSession(base_url=url) as http:
        registered = []
        for i in range(users):
            email = f"timing-{i}-{time.time_ns()}@example.com"
            body = {"email": email, "password": "timing-password", "name": "Timing"}
            async with http.post("/api/users/register", json=body) as response:
                assert response.status == 201, response.status
            registered.append(email)
        for _ in range(50):  # warm-up
            await _timed(http, random.choice(registered))
        known: list[float] = []
        unknown: list[float] = []
        for i in range(requests):
            if random.random() < 0.5:
                known.append(await _timed(http, random.choice(registered)))
            else:
                unknown.append(await _timed(http, f"nobody-{i}-{time.time_ns()}@example.com"))
    print("registered:", _summary(known))
    print("unknown:   ", _summary(unknown))
    print(
        f"difference of medians: {statistics.median(known) - statistics.median(unknown):+.3f} ms, "
        f"of means: {statistics.fmean(known) - statistics.fmean(unknown):+.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.reset_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main_async(args.url, args.requests, args.users))


if __name__ == "__main__":
    main()
