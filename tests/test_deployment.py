"""docker-compose.yml, .env.example and the Dockerfile are consistent (no Docker engine
is needed: the files are parsed and cross-checked); the stack's nginx applies the
deployment's rules (generated from deploy/nginx.conf)."""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest
import yaml

from server.runtime.config import Config
from server.runtime.ports import free_port
from tests.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def test_every_service_has_a_pinned_image_or_a_build_that_exists(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"


def test_the_stack_has_its_parts(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert {"postgres", "api", "lb", "pgbouncer", "locust-master", "locust-worker"} <= set(services)
    assert services["pgbouncer"]["profiles"] == ["pgbouncer"]
    assert services["locust-master"]["profiles"] == services["locust-worker"]["profiles"] == ["load"]
    assert str(services["api"]["deploy"]["replicas"]).startswith("${API_REPLICAS")
    assert "ports" not in services["api"], "replicas sit behind the load balancer"
    assert services["lb"]["ports"] == ["${HTTP_PORT:-8080}:80"]


def test_dependencies_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for dependency in depends:
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if isinstance(depends, dict) and depends[dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in ("postgres", "api", "lb", "pgbouncer"):
        assert services[name]["healthcheck"]["test"], name


def test_postgres_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    postgres = _services(compose)["postgres"]
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_published_ports_are_well_formed(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"(127\.0\.0\.1:)?\$\{[A-Z_]+:-\d+\}:\d+", port), (name, port)


def test_the_locust_ui_is_published_on_localhost_only(compose: dict[str, Any]) -> None:
    assert [port.startswith("127.0.0.1:") for port in _services(compose)["locust-master"]["ports"]] == [True]


def test_the_api_connects_as_its_own_role_not_the_superuser(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert "${APP_DB_USER" in services["api"]["environment"]["DATABASE_URL"]
    assert "POSTGRES_USER" not in services["api"]["environment"]["DATABASE_URL"]
    assert "${APP_DB_USER" in services["pgbouncer"]["environment"]["DB_USER"]
    init = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    script = (ROOT / init[0].split(":")[0]).read_text()
    assert "NOSUPERUSER" in script and "OWNER TO" in script


def test_the_api_gets_every_setting_it_needs(compose: dict[str, Any]) -> None:
    environment = _services(compose)["api"]["environment"]
    # Required in a container: a database and a shared signing key; all replicas must
    # listen on every interface.
    assert environment["DATABASE_URL"].startswith("postgresql://")
    assert ":?" in environment["JWT_SECRET"], "JWT_SECRET must be required, not defaulted"
    assert environment["HOST"] == "0.0.0.0"
    known = {field.alias for field in Config.model_fields.values()}
    assert set(environment) <= known, set(environment) - known


def test_the_load_balancer_proxies_to_the_api(compose: dict[str, Any]) -> None:
    mount = _services(compose)["lb"]["volumes"][0].split(":")[0]
    config = (ROOT / mount).read_text()
    assert "server api:8080" in config
    assert "proxy_pass http://storefront;" in config


@pytest.mark.parametrize("name", ["locust-master", "locust-worker"])
def test_locust_runs_the_projects_locustfile(compose: dict[str, Any], name: str) -> None:
    service = _services(compose)[name]
    in_container = PurePosixPath(service["command"][service["command"].index("-f") + 1])
    # The file the container reads, found through the service's own mounts.
    on_host = None
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if in_container.is_relative_to(target):
            on_host = (ROOT / source / in_container.relative_to(target)).resolve()
    assert on_host == ROOT / "loadtests" / "locustfile.py"
    assert re.search(r"^class \w+\((Fast)?HttpUser\):", on_host.read_text(), re.MULTILINE)


def test_every_variable_used_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    used = {match[0] for match in _VARIABLE.findall(COMPOSE.read_text())}
    documented = {
        line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    }
    assert used <= documented, used - documented


def test_secrets_have_no_defaults(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for secret in ("JWT_SECRET", "POSTGRES_PASSWORD", "APP_DB_PASSWORD", "METRICS_TOKEN"):
        for name, operator, _ in _VARIABLE.findall(text):
            if name == secret:
                assert operator == ":?", f"{secret} must be required"
    env = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    }
    assert env["JWT_SECRET"] == env["POSTGRES_PASSWORD"] == env["ADMIN_PASSWORD"] == ""
    assert env["APP_DB_PASSWORD"] == env["METRICS_TOKEN"] == env["STRIPE_API_KEY"] == env["STRIPE_WEBHOOK_SECRET"] == ""


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_a_base_argument() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") >= 2
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile
    assert not re.search(r"(JWT_SECRET|PASSWORD)\s*=", dockerfile)
    assert ".venv" in Path(ROOT / ".dockerignore").read_text().split()


def _nginx() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def test_nginx_overwrites_x_forwarded_for_and_hides_its_version() -> None:
    config = _nginx()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in config
    assert "$proxy_add_x_forwarded_for" not in config
    assert "server_tokens off;" in config


def test_nginx_never_retries_a_503_nor_a_non_idempotent_request() -> None:
    retries = re.findall(r"proxy_next_upstream\s+([^;]*);", _nginx())
    assert retries, "proxy_next_upstream should be explicit"
    for conditions in retries:
        assert "http_503" not in conditions and "non_idempotent" not in conditions, conditions


def test_nginx_does_not_route_metrics() -> None:
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", _nginx())


# --- one set of load-balancer rules: deploy/nginx.conf, and the stack's generated from it ---

# What may differ between the deployment's nginx and scripts/stack.sh's: where it listens,
# the replicas it proxies to (a DNS name there, one line per replica here), Docker's DNS,
# and where nginx keeps its pid, log and temporary files. Every other directive is a rule
# both must apply identically (rate limits, headers, retries, what is not routed, the
# problem documents of nginx's own refusals).
_DEPLOYMENT_SPECIFIC = {"listen", "resolver", "user", "pid", "error_log"}


def _nginx_conf_module() -> Any:
    spec = importlib.util.spec_from_file_location("nginx_conf", ROOT / "scripts" / "nginx_conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stack_nginx(
    tmp: Path, servers: list[str] | None = None, listen: str = "127.0.0.1:18080", unlimited: list[str] | None = None
) -> str:
    generated: str = _nginx_conf_module().for_stack(
        _nginx(),
        listen=listen,
        servers=servers or ["127.0.0.1:18081", "127.0.0.1:18082"],
        pid=str(tmp / "nginx.pid"),
        error_log=str(tmp / "error.log"),
        temp=str(tmp),
        user=None,
        unlimited=unlimited,
    )
    return generated


def _directives(text: str) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """(enclosing blocks, directive, arguments) for every directive of an nginx config,
    in order; quoted arguments unquoted, comments dropped."""
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|#[^\n]*|[{};]|[^\s{};'\"#]+", text)
    out: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = []
    context: list[str] = []
    words: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token == ";":
            out.append((tuple(context), words[0], tuple(words[1:])))
            words = []
        elif token == "{":
            out.append((tuple(context), words[0], tuple(words[1:])))
            context.append(" ".join(words))
            words = []
        elif token == "}":
            context.pop()
        else:
            words.append(token[1:-1] if token[0] in "'\"" else token)
    assert not context and not words, "unbalanced nginx config"
    return out


def _rules(text: str) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    return [
        d
        for d in _directives(text)
        if d[1] not in _DEPLOYMENT_SPECIFIC
        and not d[1].endswith("_temp_path")
        and not (d[0] == ("http", "upstream storefront") and d[1] == "server")
        and not (d[0] == ("http", "geo $storefront_unlimited") and d[1] != "default")
    ]


def test_the_stacks_nginx_applies_exactly_the_deployments_rules(tmp_path: Path) -> None:
    deployed, stack = _rules(_nginx()), _rules(_stack_nginx(tmp_path, unlimited=["127.0.0.1", "10.0.0.0/8"]))
    assert stack == deployed
    # The rules in question are there at all (and so in both).
    names = {(d[1], d[2][0] if d[2] else "") for d in deployed}
    assert {("limit_req_zone", "$anonymous_client"), ("limit_req_zone", "$limited_client")} <= names
    assert ("proxy_set_header", "X-Forwarded-For") in names
    assert ("location", "=") in names and ("error_page", "429") in names


def test_only_the_deployment_specific_lines_differ(tmp_path: Path) -> None:
    stack = _directives(
        _stack_nginx(tmp_path, servers=["127.0.0.1:1", "127.0.0.1:2"], listen="127.0.0.1:3", unlimited=["127.0.0.9"])
    )
    upstream = [d[2] for d in stack if d[0] == ("http", "upstream storefront") and d[1] == "server"]
    assert upstream == [
        ("127.0.0.1:1", "max_fails=2", "fail_timeout=5s"),
        ("127.0.0.1:2", "max_fails=2", "fail_timeout=5s"),
    ]
    assert [d[2] for d in stack if d[1] == "listen"] == [("127.0.0.1:3",)]
    assert not [d for d in stack if d[1] == "resolver"]
    unlimited = [(d[1], d[2]) for d in stack if d[0] == ("http", "geo $storefront_unlimited")]
    assert sorted(unlimited) == [("127.0.0.9", ("1",)), ("default", ("0",))]
    assert not [d for d in _directives(_nginx()) if d[0] == ("http", "geo $storefront_unlimited") and d[1] != "default"]


def test_the_stack_script_writes_no_nginx_rules_of_its_own() -> None:
    """scripts/stack.sh generates its nginx.conf from deploy/nginx.conf, and keeps no second
    copy of any rule that could drift."""
    script = (ROOT / "scripts" / "stack.sh").read_text()
    assert "scripts/nginx_conf.py" in script
    for rule in ("limit_req", "proxy_set_header", "proxy_next_upstream", "location ", "server_tokens", "error_page"):
        assert rule not in script, rule


def test_a_changed_deployment_config_is_refused_rather_than_half_translated() -> None:
    module = _nginx_conf_module()
    broken = _nginx().replace("listen 80;", "listen 8080;")
    with pytest.raises(ValueError, match="expected shape"):
        module.for_stack(broken, listen="x", servers=["y"], pid="p", error_log="e", temp="t", user=None)


class _Upstream(http.server.BaseHTTPRequestHandler):
    """An API replica stand-in: 200 with a JSON body to anything."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(
    not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed (scripts/stack.sh installs it)"
)
def test_the_generated_config_runs_and_applies_the_rules(tmp_path: Path) -> None:
    """Debian's nginx (the stack's) on the generated config: valid, /metrics not routed,
    sign-ups limited with a problem document and Retry-After, an unparsable request a
    problem document, everything else proxied."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(
        _stack_nginx(tmp_path, servers=[f"127.0.0.1:{upstream.server_address[1]}"], listen=f"127.0.0.1:{port}")
    )
    if os.geteuid() == 0:  # the workers must reach the temp folders as nginx's default user
        tmp_path.chmod(0o777)
    nginx = ["/usr/sbin/nginx", "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(config)]
    checked = subprocess.run([*nginx, "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    subprocess.run(nginx, check=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/api/products/1", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)

        def status(path: str, method: str = "GET") -> tuple[int, Any, bytes]:
            request = urllib.request.Request(base + path, method=method, data=b"{}" if method == "POST" else None)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.headers, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers, exc.read()

        assert status("/metrics")[0] == 404
        signups = [status("/api/users/register", "POST") for _ in range(20)]
        refused = [s for s in signups if s[0] == 429]
        assert refused and {s[0] for s in signups} == {200, 429}
        _, headers, body = refused[0]
        assert headers["Retry-After"] == "1" and headers["Content-Type"] == "application/problem+json"
        assert orjson.loads(body)["status"] == 429
        assert status("/api/products?q=abc")[0] == 200  # anonymous searches: 20/s, a burst of 40
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /api/products/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head
        assert orjson.loads(body)["status"] == 400
    finally:
        subprocess.run([*nginx, "-s", "quit"], check=False)
        upstream.shutdown()
