"""The load test's set-up (loadtests/service_setup.py, used by the locustfile) says in
one line what is wrong when the admin it is given cannot log in, instead of a
traceback, an unseeded catalog and every order failing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from loadtests.service_setup import SetupError, admin_token
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.helpers import ROOT, ServerProcess


def test_the_admins_token_is_fetched_with_the_right_password(live_server: ServerProcess) -> None:
    assert admin_token(live_server.url, ADMIN_EMAIL, ADMIN_PASSWORD).count(".") == 2


def test_a_refused_admin_login_is_one_line_saying_the_password_is_never_reset(live_server: ServerProcess) -> None:
    with pytest.raises(SetupError) as refused:
        admin_token(live_server.url, ADMIN_EMAIL, "another-password-1")
    message = str(refused.value)
    assert "\n" not in message
    assert "401" in message and "never resets" in message and ADMIN_EMAIL in message


def test_an_unreachable_service_is_one_line() -> None:
    with pytest.raises(SetupError, match="cannot reach the service"):
        admin_token("http://127.0.0.1:9", ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust (the tools extra) is not installed")
def test_locust_stops_at_once_with_one_line_and_exit_code_1(live_server: ServerProcess) -> None:
    env = {"STOREFRONT_ADMIN_EMAIL": ADMIN_EMAIL, "STOREFRONT_ADMIN_PASSWORD": "another-password-1"}
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--host", live_server.url,
         "--headless", "-u", "1", "-r", "1", "--run-time", "30s"],
        cwd=ROOT, env={**live_server.env, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "locust: the admin login as admin@example.com was refused (401)" in run.stderr
