"""The failure drills of scripts/stack_drills.py, short, on the real stack (Debian's
PostgreSQL, PgBouncer and nginx, started by scripts/stack.sh in a folder of its own),
and the read routing to its streaming standby that the script checks first.

Part of the fault suite (`python3 dev.py test -m faults`). Skipped, saying why, when the
stack's packages are missing and cannot be installed (not root, no apt-get, no network).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.faults

CANNOT_INSTALL = 4  # scripts/stack_drills.py's exit code when the packages cannot be installed


def test_short_failure_drills_lose_nothing_and_recover(tmp_path: Path) -> None:
    results = tmp_path / "drills.json"
    done = subprocess.run(
        [sys.executable, "scripts/stack_drills.py", "--window", "6", "--clients", "8", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode == CANNOT_INSTALL:
        pytest.skip(f"the stack's packages cannot be installed: {done.stderr.strip()[-300:]}")
    print(done.stdout)
    assert results.exists(), done.stderr[-3000:]
    recorded = json.loads(results.read_text())
    drills = {d["name"]: d for d in recorded["drills"]}
    assert set(drills) == {"kill-replica", "restart-pgbouncer", "standby-outage", "restart-primary"}
    for drill in drills.values():
        assert drill["invariants"] == "0 invariant violation(s)", drill
        assert drill["lost"] == [], drill  # every order and payment answered 201 is stored, charged once
        assert drill["statuses"].get("201", 0) > 0, drill  # orders went through during the drill
        assert drill["recovery_s"] < 6, drill  # the last failure came before the window closed
        assert not set(drill["statuses"]) & {"500", "504"}, drill  # failures are 502/503 or refusals, never 500
    assert drills["standby-outage"]["failed"] == 0  # reads fall back to the primary at once
    routing = recorded["read_routing"]
    assert routing["change_visible_max_s"] < 1.0, routing  # through nginx, the standby in the path
    assert routing["reads_standby_up"]["standby"] > 0, routing
    assert routing["reads_standby_stopped"] == {"primary": 21, "standby": 0}, routing  # 20 products, a search
    assert routing["reads_standby_back"]["standby"] > 0, routing
    assert done.returncode == 0, done.stderr[-3000:]
