"""Free TCP ports on 127.0.0.1: for the embedded PostgreSQL, and for the tests,
benchmarks and scripts that start servers. `python -m server.runtime.ports` prints one;
`python server/runtime/ports.py --taken FILE` (no package needed) one that FILE does not
list, which it then adds to FILE (scripts/stack.sh: every server of the stack gets its
own).

A port is drawn below the kernel's ephemeral range, the ports that outgoing connections
are given. A port the OS picks (bind to port 0) lies inside that range, and a client's
connection may take it before the server it was chosen for binds it: the stack chooses
PgBouncer's port a minute before PgBouncer starts, and meanwhile Patroni, HAProxy's
checks and psql open hundreds of connections (one took it in a CI-like run).
"""

from __future__ import annotations

import argparse
import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_EPHEMERAL_START = 32_768
# Below the ports of well-known and registered services most machines run.
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LINUX_EPHEMERAL_START


def _listenable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _any_port() -> int:
    """A port the OS picks (inside the ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port(taken: frozenset[int] = frozenset()) -> int:
    """A port nothing listens on right now and not in `taken` (the caller binds it later,
    so another process could still bind it first: rare, among ~20,000)."""
    highest = _ephemeral_start()
    below_range = highest - _LOWEST >= 1_000  # else a machine whose range starts low
    while True:
        port = random.randrange(_LOWEST, highest) if below_range else _any_port()
        if port not in taken and _listenable(port):
            return port


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taken", type=Path, help="ports given already, one per line; the new one is added")
    args = parser.parse_args()
    if args.taken is None:
        print(free_port())
        return
    given = args.taken.read_text().split() if args.taken.exists() else []
    port = free_port(frozenset(int(p) for p in given))
    with args.taken.open("a") as listed:
        listed.write(f"{port}\n")
    print(port)


if __name__ == "__main__":
    _main()
