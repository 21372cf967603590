"""Ports for the servers the tests, benchmarks and the stack start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.runtime.ports import _LOWEST, _ephemeral_start, free_port
from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(
    _ephemeral_start() - _LOWEST < 1_000, reason="this machine's ephemeral range starts low: the OS picks ports here"
)


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_listened_on() -> None:
    port = free_port()
    assert port < _ephemeral_start()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_the_script_gives_only_ports_its_taken_file_does_not_list(tmp_path: Path) -> None:
    left: set[int] = set()
    while len(left) < 3:
        left.add(free_port())
    taken = tmp_path / "ports.taken"
    taken.write_text("".join(f"{port}\n" for port in range(_LOWEST, _ephemeral_start()) if port not in left))
    given = [
        subprocess.run(
            [sys.executable, "server/runtime/ports.py", "--taken", str(taken)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for _ in range(3)
    ]
    assert {int(port) for port in given} == left
    assert taken.read_text().split()[-3:] == given
