"""What a measured run cost beyond its rate, for `python -m loadtests.bench --observe`:

- the server's event-loop threads (the main thread of each of its processes): the share
  of the run they spent on a CPU, and runnable but waiting for one (a loop that waits
  for a CPU delays every request it holds), and how often they were put aside for
  another task (involuntary context switches);
- PostgreSQL's backends serving the run's database: their CPU (user and system), their
  transactions (read-only ones too), and the tuples their sequential scans read, by
  table, each per request;
- the cluster's WAL: flushes (fsyncs) per second and bytes per request;
- what the database's active sessions were doing, sampled every 20 ms: the mean number
  running (`CPU`: on a CPU or waiting for one) and waiting on each wait event.

Figures, not verdicts: they say where a run's time went when its rate alone does not.
PostgreSQL flushes a busy backend's counters about once a second, so over a 10-s run the
figures per request are good to about a tenth. The watch itself costs the machine 50
small queries a second (the sampling) and two reads of /proc. Linux only.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

_SAMPLE_SECONDS = 0.02
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_COUNTERS = """
SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()) AS transactions,
       (SELECT wal_bytes::bigint FROM pg_stat_wal) AS wal_bytes,
       (SELECT wal_sync FROM pg_stat_wal) AS wal_syncs
"""
_SEQ_TUPLES = "SELECT relname::text AS name, seq_tup_read AS tuples FROM pg_stat_user_tables"
# The run's backends (this watch's own session aside).
_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""

# Each active session of the run's database once: running, or the event it waits on.
_ACTIVITY = """
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS state, count(*) AS sessions
FROM pg_stat_activity
WHERE datname = $1 AND state = 'active' AND backend_type = 'client backend'
GROUP BY 1
"""


class ObservationFailed(RuntimeError):
    """The watch broke off (a database connection it reads through went away): the run
    has its rate, and no observation."""


@dataclass(frozen=True)
class ThreadTimes:
    """A thread's scheduling so far (its schedstat and status under /proc)."""

    on_cpu_ns: int
    waiting_ns: int  # runnable, on a run queue, not running
    preempted: int  # involuntary context switches


def thread_times(pid: int) -> ThreadTimes:
    """The main thread of process `pid` (an event loop's, in the server)."""
    task = Path(f"/proc/{pid}/task/{pid}")
    on_cpu, waiting, _slices = (int(field) for field in (task / "schedstat").read_text().split())
    switches = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", (task / "status").read_text(), re.MULTILINE)
    assert switches is not None
    return ThreadTimes(on_cpu, waiting, int(switches.group(1)))


def _stat_fields(pid: str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces);
    None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def session_processes(session: int) -> list[int]:
    """The processes of session `session` (the server's: it is started as a session
    leader, and its workers are its children)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat_fields(pid)
        if fields is not None and int(fields[3]) == session:
            found.append(int(pid))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process `pid` so far (0 when it is gone). PostgreSQL's
    backends are processes of this machine's when it runs here: their pids come from
    pg_stat_activity."""
    fields = _stat_fields(str(pid))
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _loop_times(server_pid: int) -> ThreadTimes:
    """The main threads of the server's processes, added up."""
    times = []
    for pid in session_processes(server_pid):
        try:
            times.append(thread_times(pid))
        except OSError:
            continue  # gone meanwhile
    return ThreadTimes(
        sum(t.on_cpu_ns for t in times), sum(t.waiting_ns for t in times), sum(t.preempted for t in times)
    )


@dataclass(frozen=True)
class _Snapshot:
    at: float
    loop: ThreadTimes
    backend_cpu: float
    transactions: int
    wal_bytes: int
    wal_syncs: int
    seq_tuples: dict[str, int]


@dataclass(frozen=True)
class Observation:
    seconds: float
    requests: int
    loop_on_cpu: float  # share of the run, summed over the server's event-loop threads
    loop_waiting_for_cpu: float
    preemptions_per_s: float
    backend_cpu_ms_per_request: float
    transactions_per_request: float
    wal_syncs_per_s: float
    wal_bytes_per_request: float
    seq_tuples_per_request: dict[str, float]  # by table, most first (those read at all)
    sessions: dict[str, float]  # mean active sessions running (CPU) or waiting, most first

    def line(self) -> str:
        scanned = ", ".join(
            f"{table} {tuples:,.0f}" for table, tuples in list(self.seq_tuples_per_request.items())[:3] if tuples >= 1
        )
        sessions = ", ".join(f"{state} {mean:.2f}" for state, mean in list(self.sessions.items())[:4])
        return (
            f"server loops (summed): on a CPU {self.loop_on_cpu:.0%}, waiting for one {self.loop_waiting_for_cpu:.0%}, "
            f"{self.preemptions_per_s:,.0f} preemptions/s | a request: PostgreSQL CPU "
            f"{self.backend_cpu_ms_per_request:.2f} ms, {self.transactions_per_request:.2f} transactions, "
            f"{self.wal_bytes_per_request / 1024:.1f} kB of WAL, seq-scanned tuples: {scanned or 'none'} | "
            f"WAL flushes {self.wal_syncs_per_s:,.0f}/s | active sessions: {sessions or 'none'}"
        )


class Observer:
    """Watches one run of the server `server_pid` (a session leader) on `database_url`:
    `start` before the run, `stop` after it. The database is read from a thread of its
    own (the bench's event loop is blocked while wrk runs). Sessions are sampled through
    `sampler_url`, another database of the same server, so that the sampling is not
    counted among the run's transactions."""

    def __init__(self, server_pid: int, database_url: str, sampler_url: str) -> None:
        self.server_pid = server_pid
        self.database_url = database_url
        self.sampler_url = sampler_url
        self.database = urlsplit(database_url).path.lstrip("/")
        self.samples = 0  # activity samples taken so far
        self._states: collections.Counter[str] = collections.Counter()
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._snapshots: list[_Snapshot] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> None:
        """Returns once the first snapshot is taken; raises ObservationFailed when it
        cannot be."""
        self._thread.start()
        self._started.wait()
        self._raise_error()

    def stop(self) -> None:
        """Ends the watch (with the last snapshot); call it even when the run failed."""
        self._stopping.set()
        self._thread.join()

    def observation(self, requests: int) -> Observation:
        """What was seen between `start` and `stop`, for a run of `requests` requests;
        raises ObservationFailed when the watch broke off."""
        self._raise_error()
        first, last = self._snapshots
        return _observation(first, last, requests, self._states, self.samples)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise ObservationFailed(f"the watch broke off: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._observe())
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._started.set()

    async def _observe(self) -> None:
        run_db = await asyncpg.connect(self.database_url)
        sampler = await asyncpg.connect(self.sampler_url)
        try:
            self._snapshots.append(await self._snapshot(run_db))
            self._started.set()
            while not self._stopping.is_set():
                for row in await sampler.fetch(_ACTIVITY, self.database):
                    self._states[row["state"]] += row["sessions"]
                self.samples += 1
                await asyncio.sleep(_SAMPLE_SECONDS)
            self._snapshots.append(await self._snapshot(run_db))
        finally:
            await run_db.close()
            await sampler.close()

    async def _snapshot(self, conn: asyncpg.Connection) -> _Snapshot:
        counters = await conn.fetchrow(_COUNTERS)
        assert counters is not None
        seq_tuples = {row["name"]: row["tuples"] for row in await conn.fetch(_SEQ_TUPLES)}
        return _Snapshot(
            at=time.monotonic(),
            loop=_loop_times(self.server_pid),
            backend_cpu=sum(cpu_seconds(row["pid"]) for row in await conn.fetch(_BACKENDS)),
            transactions=counters["transactions"],
            wal_bytes=counters["wal_bytes"],
            wal_syncs=counters["wal_syncs"],
            seq_tuples=seq_tuples,
        )


def _observation(
    first: _Snapshot, last: _Snapshot, requests: int, states: collections.Counter[str], samples: int
) -> Observation:
    seconds = last.at - first.at
    per_request = 1 / max(requests, 1)
    window_ns = seconds * 1e9
    scanned = {
        table: (tuples - first.seq_tuples.get(table, 0)) * per_request for table, tuples in last.seq_tuples.items()
    }
    return Observation(
        seconds=round(seconds, 3),
        requests=requests,
        loop_on_cpu=(last.loop.on_cpu_ns - first.loop.on_cpu_ns) / window_ns,
        loop_waiting_for_cpu=(last.loop.waiting_ns - first.loop.waiting_ns) / window_ns,
        preemptions_per_s=(last.loop.preempted - first.loop.preempted) / seconds,
        backend_cpu_ms_per_request=(last.backend_cpu - first.backend_cpu) * 1000 * per_request,
        transactions_per_request=(last.transactions - first.transactions) * per_request,
        wal_syncs_per_s=(last.wal_syncs - first.wal_syncs) / seconds,
        wal_bytes_per_request=(last.wal_bytes - first.wal_bytes) * per_request,
        seq_tuples_per_request=dict(sorted(((t, n) for t, n in scanned.items() if n > 0), key=lambda tn: -tn[1])),
        sessions={state: count / max(samples, 1) for state, count in states.most_common()},
    )
