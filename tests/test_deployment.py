"""docker-compose.yml, .env.example and the Dockerfile are consistent (no Docker engine
is needed: the files are parsed and cross-checked)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from server.runtime.config import Config
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
    assert env["APP_DB_PASSWORD"] == env["METRICS_TOKEN"] == ""


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
