"""One process per core: workers sharing the port with SO_REUSEPORT.

With WORKERS=1 the main process serves. With more, it becomes a small supervisor:
it starts the workers (`python -m server worker`, each with its own pool and
actors; the kernel spreads connections over them), restarts one that dies, and on
SIGTERM, SIGINT or SIGHUP tells each to stop (SIGTERM) and waits for all of them to drain
and exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import uvloop

from server.app import Options, resolve_jwt_secret
from server.runtime.config import Config

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
# While stopping, the signal is forwarded again this often to the workers still alive.
# Once was seen not to stop a worker (a fault-suite run: the worker had its handlers
# and stopped on a later SIGHUP, cause not found); again costs a draining worker
# nothing, since its stop is already under way.
_RESIGNAL_SECONDS = 5.0
# A worker that dies sooner than this after starting is restarted after a growing
# pause, so a worker that cannot start does not spin.
_HEALTHY_AFTER_SECONDS = 10.0
_MAX_BACKOFF_SECONDS = 30.0


def run(config: Config, dsn: str) -> int:
    secret = resolve_jwt_secret(config)
    if config.workers == 1:
        uvloop.run(_serve(config, Options(dsn=dsn, jwt_secret=secret), reuse_port=False))
        return 0
    return _supervise(config, dsn, secret)


def run_worker(config: Config, dsn: str) -> int:
    assert config.jwt_secret, "workers get JWT_SECRET from their parent"
    uvloop.run(_serve(config, Options(dsn=dsn, jwt_secret=config.jwt_secret), reuse_port=True))
    return 0


async def _serve(config: Config, options: Options, *, reuse_port: bool) -> None:
    from server.entry.serving import serve

    await serve(config, options, reuse_port=reuse_port)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float
    failures: int = 0


def _supervise(config: Config, dsn: str, secret: str) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="storefront-metrics-")
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "JWT_SECRET": secret,  # every worker must accept every worker's tokens
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    # When the stop was last forwarded to the workers; None until a signal asks to stop.
    forwarded_at: float | None = None

    def forward() -> None:
        nonlocal forwarded_at
        forwarded_at = time.monotonic()
        for worker in workers:
            if worker.process.poll() is None:
                # SIGTERM: a SIGINT reaching a worker whose loop has closed would end it
                # with a KeyboardInterrupt traceback; a worker stops alike on all three.
                worker.process.send_signal(signal.SIGTERM)

    def on_signal(signum: int, _frame: object) -> None:
        forward()

    def start(index: int, failures: int = 0) -> _Worker:
        process = subprocess.Popen([sys.executable, "-m", "server", "worker"], env=env)
        log.info("worker started", extra={"worker": index, "pid": process.pid})
        return _Worker(index, process, time.monotonic(), failures)

    workers = [start(i) for i in range(config.workers)]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, on_signal)
    try:
        while True:
            time.sleep(_POLL_SECONDS)
            if forwarded_at is not None:
                if all(w.process.poll() is not None for w in workers):
                    return 0
                if time.monotonic() - forwarded_at >= _RESIGNAL_SECONDS:
                    forward()
                continue
            for slot, worker in enumerate(workers):
                code = worker.process.poll()
                if code is None:
                    continue
                _forget_metrics(worker.process.pid, metrics_dir)
                lived = time.monotonic() - worker.started
                failures = 0 if lived > _HEALTHY_AFTER_SECONDS else worker.failures + 1
                pause = min(_MAX_BACKOFF_SECONDS, 2.0**failures - 1)
                log.error(
                    "worker died; restarting",
                    extra={"worker": worker.index, "pid": worker.process.pid, "exit_code": code, "pause_s": pause},
                )
                time.sleep(pause)
                if forwarded_at is None:
                    workers[slot] = start(worker.index, failures)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _forget_metrics(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
