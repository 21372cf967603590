"""docker-compose.yml, .env.example and the Dockerfile are consistent (no Docker engine
is needed: the files are parsed and cross-checked)."""

from __future__ import annotations

import re
from pathlib import Path
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
            assert re.fullmatch(r"\$\{[A-Z_]+:-\d+\}:\d+", port), (name, port)


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


def test_locust_runs_the_projects_locustfile(compose: dict[str, Any]) -> None:
    master = _services(compose)["locust-master"]
    assert (ROOT / "loadtests" / "locustfile.py").is_file()
    assert "/mnt/locust/locustfile.py" in master["command"]


def test_every_variable_used_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    used = {match[0] for match in _VARIABLE.findall(COMPOSE.read_text())}
    documented = {
        line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    }
    assert used <= documented, used - documented


def test_secrets_have_no_defaults(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for secret in ("JWT_SECRET", "POSTGRES_PASSWORD"):
        for name, operator, _ in _VARIABLE.findall(text):
            if name == secret:
                assert operator == ":?", f"{secret} must be required"
    env = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    }
    assert env["JWT_SECRET"] == env["POSTGRES_PASSWORD"] == env["ADMIN_PASSWORD"] == ""


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_a_base_argument() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") >= 2
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile
    assert not re.search(r"(JWT_SECRET|PASSWORD)\s*=", dockerfile)
    assert ".venv" in Path(ROOT / ".dockerignore").read_text().split()
