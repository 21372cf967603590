"""Run `python -m server` and start it again whenever it exits, until SIGTERM.

scripts/stack.sh starts each API replica under this loop (what compose's `restart:` or a
kubelet does), so a replica killed by the failure drills comes back by itself. The
server's pid is written to the file named by PIDFILE, for the drills to kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

stopping = False
child: subprocess.Popen[bytes] | None = None


def stop(signum: int, frame: FrameType | None) -> None:
    global stopping
    stopping = True
    if child is not None:
        child.send_signal(signal.SIGTERM)  # the service drains within SHUTDOWN_GRACE_SECONDS


def main() -> int:
    global child
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        child = subprocess.Popen([sys.executable, "-m", "server"])
        with open(os.environ["PIDFILE"], "w") as f:
            f.write(str(child.pid))
        code = child.wait()
        if not stopping:
            print(f"replica exited with {code}; restarting in 1 s", file=sys.stderr, flush=True)
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
