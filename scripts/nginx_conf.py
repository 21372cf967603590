"""The stack's nginx configuration, generated from deploy/nginx.conf (the one source of
the load balancer's rules: rate limits, headers, retries, what is not routed).

    python3 scripts/nginx_conf.py --listen 127.0.0.1:8080 --server 127.0.0.1:9001 --server 127.0.0.1:9002 \
        --pid RUN/nginx.pid --error-log LOG/nginx-error.log --temp DIR [--user www-data] \
        [--unlimited 127.0.0.1] > nginx.conf

Only what belongs to a deployment changes: the listen address, the upstream's servers
(one line per replica instead of a DNS name), Docker's resolver (dropped), the addresses
the rate limits do not apply to (none unless asked), and where nginx keeps its pid,
error log and temporary files. Every other directive is copied as
it stands, and a source that no longer has the expected shape is refused rather than
half translated. tests/test_deployment.py checks that the rules of both are the same.
Standard library only: scripts/stack.sh runs it with the system's python3.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"

_RESOLVER = re.compile(r"^\s*resolver\s[^;]*;\s*$")
_LISTEN = re.compile(r"^(\s*)listen\s+80;\s*$")
_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+api:8080((?:\s+[^;\s]+)*);\s*$")
_HTTP = re.compile(r"^(\s*)http\s*\{\s*$")
_UNLIMITED = re.compile(r"^(\s*)geo \$storefront_unlimited \{\s*$")
_ADDRESS = re.compile(r"^[0-9A-Fa-f.:/]+$")


def for_stack(
    source: str,
    *,
    listen: str,
    servers: list[str],
    pid: str,
    error_log: str,
    temp: str,
    user: str | None,
    unlimited: list[str] | None = None,
) -> str:
    """deploy/nginx.conf with the stack's listen address, replicas, paths, and the
    addresses (or networks) the rate limits do not apply to."""
    if not servers:
        raise ValueError("at least one upstream server")
    for address in unlimited or []:
        if not _ADDRESS.match(address):
            raise ValueError(f"not an address or network: {address!r}")
    out: list[str] = []
    seen = {"resolver": 0, "listen": 0, "server": 0, "http": 0, "geo": 0}
    for line in source.splitlines():
        if _RESOLVER.match(line):
            seen["resolver"] += 1
            continue
        if match := _LISTEN.match(line):
            seen["listen"] += 1
            out.append(f"{match[1]}listen {listen};")
            continue
        if match := _UPSTREAM_SERVER.match(line):
            seen["server"] += 1
            params = " ".join(p for p in match[2].split() if p != "resolve")
            out.extend(f"{match[1]}server {server}{' ' + params if params else ''};" for server in servers)
            continue
        out.append(line)
        if match := _UNLIMITED.match(line):
            seen["geo"] += 1
            out.extend(f"{match[1]}    {address} 1;" for address in unlimited or [])
        if match := _HTTP.match(line):
            seen["http"] += 1
            indent = match[1] + "    "
            kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            out.extend(f"{indent}{kind}_temp_path {temp}/{kind};" for kind in kinds)
    wrong = {name: count for name, count in seen.items() if count != 1}
    if wrong:
        raise ValueError(f"deploy/nginx.conf no longer has the expected shape (occurrences: {wrong})")
    head = [f"user {user};"] if user else []
    head += [f"pid {pid};", f"error_log {error_log} warn;"]
    return "\n".join(head + out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--listen", required=True, help="address:port nginx listens on")
    parser.add_argument("--server", action="append", required=True, help="an API replica, address:port (repeat)")
    parser.add_argument("--pid", required=True)
    parser.add_argument("--error-log", required=True)
    parser.add_argument("--temp", required=True, help="folder for nginx's temporary files")
    parser.add_argument("--user", help="the user nginx's workers run as (when started as root)")
    parser.add_argument("--unlimited", action="append", default=[], help="an address the rate limits skip (repeat)")
    args = parser.parse_args(argv)
    sys.stdout.write(
        for_stack(
            args.source.read_text(),
            listen=args.listen,
            servers=args.server,
            pid=args.pid,
            error_log=args.error_log,
            temp=args.temp,
            user=args.user,
            unlimited=args.unlimited,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
