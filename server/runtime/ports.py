"""A free TCP port on 127.0.0.1: for the embedded PostgreSQL, and for the tests,
benchmarks and scripts that start servers (`python -m server.runtime.ports` prints
one)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; the caller binds it soon
    after, so a collision is possible but rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    print(free_port())
