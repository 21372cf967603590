"""Configuration: one object from the environment, validated, all of it documented."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

from server.runtime.config import ConfigError, env_names, load
from tests.helpers import ROOT, ServerProcess


def test_defaults_follow_the_contract() -> None:
    config = load(environ={})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.max_body_bytes == 1024 * 1024
    assert config.order_ttl_seconds == 900
    assert config.payment_provider_latency_ms == 0
    assert config.cors_origins == frozenset()


def test_values_are_parsed_from_strings() -> None:
    config = load(environ={"PORT": "9000", "ACCESS_LOG": "true", "DB_POOL_MAX_SIZE": "3", "DB_POOL_MIN_SIZE": "1"})
    assert config.port == 9000 and config.access_log is True and config.db_pool_max_size == 3


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"DB_POOL_MAX_SIZE": "0"}, "DB_POOL_MAX_SIZE"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"DB_POOL_MIN_SIZE": "20", "DB_POOL_MAX_SIZE": "5"}, "DB_POOL_MIN_SIZE"),
        ({"IDEMPOTENCY_KEY_TTL_SECONDS": "60"}, "IDEMPOTENCY_KEY_TTL_SECONDS"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(environ=environ)
    message = str(error.value)
    assert variable in message and "\n" not in message


def test_the_service_refuses_to_start_on_a_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PORT": "x"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "PORT" in result.stderr


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert set(env_names()) <= documented, set(env_names()) - documented


def test_every_seconds_setting_takes_a_fraction() -> None:
    seconds = [name for name in env_names() if name.endswith("_SECONDS")]
    fractions = {name: "86400.5" if name == "IDEMPOTENCY_KEY_TTL_SECONDS" else "0.5" for name in seconds}
    config = load(environ=fractions)
    for name in seconds:
        field = next(f for f, info in type(config).model_fields.items() if info.alias == name)
        assert getattr(config, field) == float(fractions[name]), name


def test_the_service_starts_with_short_reset_and_session_lifetimes(clean_db: str) -> None:
    """The contract's settings take any value it allows: a drill may use seconds."""
    env = {"PASSWORD_RESET_TTL_SECONDS": "4", "REFRESH_TTL_SECONDS": "0.5", "JWT_TTL_SECONDS": "0.5"}
    server = ServerProcess(clean_db, env=env).start()
    try:
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        assert server.stop() == 0
