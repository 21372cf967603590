"""What scripts/stack.sh asks of the highly available database: Patroni's REST API,
HAProxy's runtime socket, pgBackRest's `info`. Standard library only (it runs with the
system's python3, before any virtualenv exists).

    python3 scripts/stack_ha.py STACK_ENV members         one line per member (stack.sh status)
    python3 scripts/stack_ha.py STACK_ENV leader          the leader's name (exit 1: none)
    python3 scripts/stack_ha.py STACK_ENV wait-healthy S  wait up to S seconds for a leader, every
                                                          member streaming and a synchronous standby
    python3 scripts/stack_ha.py STACK_ENV wait-replica NAME S   wait for NAME to run as a streaming
                                                          replica on the leader's timeline
    python3 scripts/stack_ha.py STACK_ENV haproxy CMD...  a command on HAProxy's runtime socket
    python3 scripts/stack_ha.py STACK_ENV routes          where HAProxy sends writes and reads now
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def load(path: str) -> dict[str, str]:
    settings = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition("=")
        settings[key] = value
    settings["STACK_DIR"] = str(Path(path).resolve().parent)
    return settings


def members(env: dict[str, str]) -> list[str]:
    return [f"pg{n}" for n in range(1, int(env["STACK_MEMBERS"]) + 1)]


def rest(env: dict[str, str], member: str, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(HTTP status, JSON body) of a member's Patroni REST API; (0, None) when unreachable."""
    url = f"http://127.0.0.1:{env['REST_PORT_' + member[2:]]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:  # 503 from /primary, /replica: a body all the same
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def postmaster_pid(env: dict[str, str], member: str) -> int | None:
    """The member's postmaster, from its postmaster.pid, if that process is alive."""
    try:
        pid = int((Path(env["STACK_DIR"]) / member / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def etcd(env: dict[str, str], key: str, prefix: bool = False) -> list[tuple[str, str]]:
    """(key, value) pairs under /stack/storefront/ in etcd (its v3 JSON gateway): the DCS,
    as every member sees it, not a member's cached view (stale on a member cut off)."""
    name = f"/stack/storefront/{key}".encode()
    body: dict[str, str] = {"key": base64.b64encode(name).decode()}
    if prefix:
        body["range_end"] = base64.b64encode(name[:-1] + bytes([name[-1] + 1])).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{env['ETCD_PORT']}/v3/kv/range", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=2) as response:
        kvs = json.loads(response.read()).get("kvs", [])
    return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode()) for kv in kvs]


def cluster(env: dict[str, str]) -> list[dict[str, Any]]:
    """The members as the DCS knows them: name, role (leader, sync_standby, replica),
    state, timeline."""
    try:
        leader_keys = etcd(env, "leader")
        sync_keys = etcd(env, "sync")
        member_keys = etcd(env, "members/", prefix=True)
    except (OSError, ValueError):
        return []
    leader = leader_keys[0][1] if leader_keys else None
    sync = json.loads(sync_keys[0][1]).get("sync_standby") if sync_keys else None
    synced = set((sync or "").split(","))
    view = []
    for key, value in member_keys:
        data = json.loads(value)
        name = key.rsplit("/", 1)[1]
        role = "leader" if name == leader else "sync_standby" if name in synced else "replica"
        if data.get("role") not in ("master", "primary", "replica", "standby_leader"):
            role = str(data.get("role"))
        view.append({"name": name, "role": role, "state": data.get("state"), "timeline": data.get("timeline")})
    return view


def leader(env: dict[str, str]) -> str | None:
    for member in cluster(env):
        if member.get("role") == "leader" and member.get("state") == "running":
            return str(member["name"])
    return None


def member_lines(env: dict[str, str]) -> tuple[list[str], bool]:
    """`member=NAME role=leader|replica pid=PID`, then details; and whether all run."""
    view = {m["name"]: m for m in cluster(env)}
    lines, healthy = [], True
    for member in members(env):
        _, body = rest(env, member, "/patroni")
        pid = postmaster_pid(env, member)
        local_role = (body or {}).get("role")
        state = (body or {}).get("state", "unreachable")
        if local_role in ("master", "primary", "standby_leader"):
            role = "leader"
        elif local_role == "replica":
            role = "replica"
        else:
            role = "down"
        if role == "down" or pid is None or state != "running":
            healthy = False
        seen = view.get(member, {})
        details = [f"state={state}", f"timeline={seen.get('timeline', (body or {}).get('timeline', '-'))}"]
        if seen.get("role") == "sync_standby":
            details.append("sync=yes")
        elif role == "replica":
            details.append("sync=no")
        if "lag" in seen:
            details.append(f"lag={seen['lag']}")
        lines.append(f"member={member} role={role} pid={pid or '-'} {' '.join(details)}")
    return lines, healthy


def haproxy(env: dict[str, str], command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(Path(env["STACK_DIR"]) / "run" / "haproxy.sock"))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def routes(env: dict[str, str]) -> str:
    """Which members HAProxy's primary and replica ports send to now (UP servers), and
    the replica the read port sticks to."""
    up: dict[str, list[str]] = {"pg_primary": [], "pg_replicas": []}
    for line in haproxy(env, "show stat").splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] in up and fields[1].startswith("pg") and fields[17].startswith("UP"):
            up[fields[0]].append(fields[1])
    stuck = "-"
    for line in haproxy(env, "show table pg_replicas").splitlines():
        if "server_key=" in line:
            stuck = line.rsplit("server_key=", 1)[1].split()[0]
    writes, reads = ",".join(up["pg_primary"]) or "none", ",".join(up["pg_replicas"]) or "none"
    return f"writes->{writes} reads->{reads} (stuck to {stuck})"


def healthy(env: dict[str, str]) -> bool:
    view = cluster(env)
    names = {m["name"] for m in view}
    if names != set(members(env)):
        return False
    leaders = [m for m in view if m.get("role") == "leader" and m.get("state") == "running"]
    replicas = [m for m in view if m.get("role") in ("replica", "sync_standby")]
    streaming = all(m.get("state") in ("running", "streaming") for m in replicas)
    sync = any(m.get("role") == "sync_standby" for m in view)
    on_timeline = all(m.get("timeline") == leaders[0].get("timeline") for m in replicas) if leaders else False
    return len(leaders) == 1 and streaming and sync and on_timeline and len(replicas) == len(view) - 1


def replica_back(env: dict[str, str], name: str) -> bool:
    view = {m["name"]: m for m in cluster(env)}
    lead = [m for m in view.values() if m.get("role") == "leader"]
    member = view.get(name)
    return bool(
        lead
        and member
        and member.get("role") in ("replica", "sync_standby")
        and member.get("state") in ("running", "streaming")
        and member.get("timeline") == lead[0].get("timeline")
        and rest(env, name, "/replica")[0] == 200
    )


def wait(seconds: float, check: Any) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    env, command, rest_args = load(argv[0]), argv[1], argv[2:]
    if command == "members":
        lines, ok = member_lines(env)
        print("\n".join(lines))
        return 0 if ok else 3
    if command == "leader":
        name = leader(env)
        if name:
            print(name)
        return 0 if name else 1
    if command == "wait-healthy":
        return 0 if wait(float(rest_args[0]), lambda: healthy(env)) else 1
    if command == "wait-replica":
        return 0 if wait(float(rest_args[1]), lambda: replica_back(env, rest_args[0])) else 1
    if command == "haproxy":
        print(haproxy(env, " ".join(rest_args)).strip())
        return 0
    if command == "routes":
        print(routes(env))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
