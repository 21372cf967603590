"""The embedded PostgreSQL of `python -m server` without DATABASE_URL (what `python3
dev.py serve` runs) is stopped when the service stops, also when its terminal closes
(SIGHUP), and a cluster left running by a run that died is taken over and stopped at
the end. Real processes and a real cluster: the fault suite (initdb takes seconds)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.runtime.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from server.runtime.ports import free_port
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET
from tests.helpers import ROOT

pytestmark = pytest.mark.faults


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The cluster's directory, outside pytest's own temporary folder: as root the
    cluster runs as an unprivileged user who is granted a way through the folders
    above it, and any pytest session starting on the machine resets its folder to
    owner-only (a CI-like run beside another suite failed on that)."""
    folder = Path(tempfile.mkdtemp(prefix="storefront-embedded-pg-test-"))
    try:
        yield folder / "postgres"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop_leftover(data_dir: Path) -> None:
    """Whatever the outcome, no cluster of the test outlives it."""
    if (data_dir / "postmaster.pid").exists():
        cluster = EmbeddedPostgres(data_dir, started_here=True)
        with contextlib.suppress(EmbeddedPostgresError):
            cluster.stop()


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _serve(data_dir: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        EMBEDDED_PG_DIR=str(data_dir), PORT=str(port), WORKERS=str(workers), JWT_SECRET=JWT_SECRET,
        ADMIN_EMAIL=ADMIN_EMAIL, ADMIN_PASSWORD=ADMIN_PASSWORD, LOG_LEVEL="WARNING",
        PASSWORD_HASH_TIME_COST="1", PASSWORD_HASH_MEMORY_KIB="1024", PASSWORD_HASH_PARALLELISM="1",
    )  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        assert time.monotonic() < deadline, "the service did not start"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_that_stops_the_service_stops_its_embedded_postgresql(
    data_dir: Path, workers: int, signum: signal.Signals
) -> None:
    service, _ = _serve(data_dir, workers)
    try:
        postmaster = _postmaster(data_dir)
        assert _alive(postmaster)
        service.send_signal(signum)
        assert service.wait(60) == 0
        assert _wait_gone(postmaster), "the embedded PostgreSQL is still running"
    finally:
        if service.poll() is None:
            service.kill()
        _stop_leftover(data_dir)


def test_a_cluster_left_running_by_a_dead_run_is_taken_over_and_stopped_at_the_end(data_dir: Path) -> None:
    leftover = EmbeddedPostgres(data_dir)
    leftover.start()  # as a run that then died: its owner file names a process that is gone
    leftover.owner_file.write_text("999999999\n")
    postmaster = _postmaster(data_dir)
    service, _ = _serve(data_dir, workers=1)
    try:
        assert _postmaster(data_dir) == postmaster  # the same cluster, not a second one
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
        assert _wait_gone(postmaster), "the leftover embedded PostgreSQL was not stopped"
    finally:
        if service.poll() is None:
            service.kill()
        _stop_leftover(data_dir)
