"""Load on a real ``curvscope serve``: probes ingesting, browsers watching, readers drawing.

For each configuration (a row of the table) the benchmark starts a real server process
(``python -m curvscope.server.cli serve``; readiness: ``/api/health`` polled with a
deadline) on a fresh database, seeds one run (``seed``) with a snapshot of 50 groups of
K = 200, and then, for ``--seconds``:

- P probes (``--probes``, 8), each a thread with its own websocket to ``/ws/ingest`` and its
  own run, send snapshot messages (the wire schema of ``server/protocol.py``: one group of
  K = 1000 eigenvalues, top-k 50 statistics) one at a time, each after the previous one's
  ``ack``; a broken connection is reopened and the unacknowledged message resent;
- B browsers (``--subscribers``, 20) hold ``/ws/runs/{run}`` websockets (spread over the
  probes' runs) and timestamp every ``snapshot`` message: ingest -> browser latency is its
  arrival time minus the probe's send time (the message's ``wall_time``);
- R readers (``--readers``, 6; rows ``+r`` only) repeatedly ``GET
  /api/runs/seed/figures/step`` (the per-step figures of the 50-group snapshot).

Probes, browsers and readers run in three processes of their own (threads inside), on the
same machine as the server. At the end every acknowledged ``(run, step)`` is looked up
with paged ``GET /api/runs/{run}/snapshots?start=&end=``: ``lost`` (acked, not stored) and
``dup`` (stored more than once) must both be 0. Peak RSS is the largest sum, over the
server's process tree (the uvicorn parent and its workers), of each process's VmHWM
(sampled every 0.2 s).

Rows: ``sqlite`` (SQLite, 1 worker), ``pg1`` (PostgreSQL, 1 worker), ``pg2`` (PostgreSQL,
``--workers 2``), each without and with the readers (``+r``). The PostgreSQL rows need
``--postgres-url`` (an admin URL: a fresh database ``bench_<random>`` is created for each
row and dropped after); ``bash .ci/postgres.sh`` starts a throwaway cluster. ``--kill`` adds
the row ``pg2+r+kill``: midway, one uvicorn worker is SIGKILLed; probes reconnect and
resend, and every acknowledged snapshot must still be stored.

Usage::

    python benchmarks/server_load.py [--quick] [--seconds 20] [--probes 8]
        [--subscribers 20] [--readers 6] [--rate 0] [--read-pause 0] [--postgres-url URL] [--kill]
        [--rows sqlite,sqlite+r,pg1,pg1+r,pg2,pg2+r]

``--rate R`` paces each probe at R snapshots/s (default: closed loop, the next snapshot as
soon as the previous one is acked, i.e. the server's saturation throughput, where the ack
latency is mostly queueing: about P / throughput).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

try:  # optional: process-tree walking and CPU times; /proc is the fallback
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

SEED_RUN = "seed"
ACK_TARGET_MS = 100.0
BROWSER_TARGET_MS = 100.0
TARGET_SIZES = (8, 20, 6)
"""(probes, subscribers, readers) the issue's targets are stated for."""
ROWS = ("sqlite", "sqlite+r", "pg1", "pg1+r", "pg2", "pg2+r")
KILL_ROW = "pg2+r+kill"
RESEND_GRACE_S = 60.0
"""How long after the load window a probe keeps trying to get its last message acked."""

WS_ERRORS = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError)


# -- configurations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One configuration: the store, the uvicorn workers, readers or not, a SIGKILL or not."""

    name: str
    postgres: bool
    workers: int
    readers: bool
    kill: bool = False

    @classmethod
    def parse(cls, name: str) -> Row:
        base, *flags = name.split("+")
        if base not in ("sqlite", "pg1", "pg2") or not set(flags) <= {"r", "kill"}:
            raise ValueError(f"unknown row {name!r}")
        workers = 2 if base == "pg2" else 1
        return cls(name, base != "sqlite", workers, "r" in flags, "kill" in flags)

    def label(self) -> str:
        store = f"PostgreSQL ×{self.workers}" if self.postgres else "SQLite ×1"
        return store + (" + readers" if self.readers else "") + (" + SIGKILL" if self.kill else "")


@dataclass
class Sizes:
    probes: int
    subscribers: int
    readers: int
    seconds: float
    k: int
    top_k: int
    seed_groups: int
    seed_k: int
    rate: float = 0.0
    """Snapshots per second per probe; 0: the next as soon as the previous is acked."""
    read_pause: float = 0.0
    """Seconds a reader waits between its requests; 0: none (back to back)."""


# -- wire messages (plain dicts and JSON text, as the probe sends them) -----------------------
def make_group(name: str, k: int, top_k: int, rng: random.Random) -> dict[str, Any]:
    """A group payload: K positive eigenvalues in descending order, top-k statistics."""
    k_stats = min(top_k, k)
    return {
        "name": name,
        "num_params": 100_000,
        "eigvals": sorted((rng.lognormvariate(0.0, 2.0) for _ in range(k)), reverse=True),
        "gamma": [rng.gauss(0.0, 1.0) for _ in range(k_stats)],
        "snr_gamma": [rng.expovariate(1.0) for _ in range(k_stats)],
        "snr_lambda": [rng.expovariate(0.5) for _ in range(k_stats)],
        "grad_overlap": [rng.random() for _ in range(k_stats)],
        "grad_norm_sq": rng.expovariate(1.0),
    }


class SnapshotText:
    """The JSON text of a run's snapshot messages; only ``step`` and ``wall_time`` change,
    so the groups are serialised once."""

    def __init__(self, run: str, instance: str, groups: list[dict[str, Any]], top_k: int):
        head = {"type": "snapshot", "schema_version": 1, "run": run, "instance": instance}
        tail = {
            "loss": 0.5,
            "batch_size": 32,
            "config": {"curvature": "exact", "top_k": top_k, "mode": "function"},
            "groups": groups,
        }
        self._head = json.dumps(head)[:-1] + ","
        self._tail = json.dumps(tail, allow_nan=False)[1:]

    def render(self, step: int, wall_time: float) -> str:
        return f'{self._head}"step":{step},"wall_time":{wall_time!r},{self._tail}'


# -- the server process -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A ``curvscope serve`` process on a free localhost port."""

    db: str
    workers: int
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60.0) -> Server:
        for _ in range(3):  # another process may take the port between free_port and bind
            self.port = free_port()
            argv = [sys.executable, "-m", "curvscope.server.cli", "serve", "--host", "127.0.0.1"]
            argv += ["--port", str(self.port), "--db", self.db, "--log-level", "warning"]
            argv += ["--workers", str(self.workers)]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError as exc:
                if "address already in use" not in str(exc).lower():
                    raise
        raise RuntimeError(f"could not start curvscope serve:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"curvscope serve exited:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    healthy = client.get(self.url("/api/health")).status_code == 200
                    # several workers: wait until they have all been spawned too
                    if healthy and len(self.worker_pids()) >= (self.workers > 1) * self.workers:
                        return
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.05)
        self.stop()
        raise RuntimeError(f"curvscope serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tree(self) -> list[int]:
        """The server's pid and its descendants' (the uvicorn workers)."""
        return [self.proc.pid, *descendants(self.proc.pid)] if self.proc else []

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (multiprocessing children of the parent)."""
        if self.proc is None:
            return []
        return [pid for pid in descendants(self.proc.pid) if b"spawn_main" in _cmdline(pid)]

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (psutil, else a scan of /proc)."""
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        return []
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _status_kib(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _cpu_seconds(pid: int) -> float | None:
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        return None
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _host_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine so far (/proc/stat, in ticks)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        ticks = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        total = sum(ticks[:8])  # guest time is already counted in user
        return total - idle, total
    return None


class TreeSampler(threading.Thread):
    """Samples the server tree every ``interval``: the largest sum of VmHWM (peak RSS;
    psutil's current RSS where /proc has no VmHWM) and the CPU seconds it used."""

    def __init__(self, server: Server, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.peak_kib = 0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop_event = threading.Event()
        self._first_t: float | None = None
        self._last_t = 0.0
        self._host_first: tuple[float, float] | None = None
        self._host_last: tuple[float, float] | None = None

    def sample(self) -> None:
        total = 0
        for pid in self.server.tree():
            kib = _status_kib(pid, "VmHWM")
            if kib is None and psutil is not None:
                with contextlib.suppress(psutil.Error):
                    kib = psutil.Process(pid).memory_info().rss // 1024
            total += kib or 0
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                self._cpu_first.setdefault(pid, cpu)
                self._cpu_last[pid] = cpu
        self.peak_kib = max(self.peak_kib, total)
        now = time.monotonic()
        if self._first_t is None:
            self._first_t = now
        self._last_t = now
        host = _host_cpu()
        if host is not None:
            self._host_first = self._host_first or host
            self._host_last = host

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def finish(self) -> None:
        self.sample()
        self._stop_event.set()
        self.join(timeout=5)

    def span_s(self) -> float:
        return self._last_t - (self._first_t or self._last_t)

    def host_pct(self) -> float | None:
        """The whole machine's busy CPU over the samples, in % of one core."""
        if self._host_first is None or self._host_last is None:
            return None
        busy = self._host_last[0] - self._host_first[0]
        total = self._host_last[1] - self._host_first[1]
        return 100 * (os.cpu_count() or 1) * busy / total if total > 0 else None

    def cpu_seconds(self) -> float:
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last)


# -- databases --------------------------------------------------------------------------------
@contextlib.contextmanager
def database(row: Row, tmp: Path, postgres_url: str | None) -> Iterator[str]:
    """A fresh database for one row: a SQLite file, or ``bench_<random>`` on the cluster."""
    if not row.postgres:
        yield str(tmp / f"{row.name.replace('+', '_')}.sqlite")
        return
    import psycopg

    assert postgres_url is not None
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres_url)
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Clock:
    """This process's CPU seconds and wall seconds from the start of the load."""

    def __init__(self, go: Any) -> None:
        go.wait()
        self.cpu, self.wall = time.process_time(), time.monotonic()

    def read(self) -> dict[str, float]:
        return {"cpu_s": time.process_time() - self.cpu, "wall_s": time.monotonic() - self.wall}


# -- probes -----------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    run: str
    acked: list[int] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    resent: int = 0
    dup_acks: int = 0
    errors: list[str] = field(default_factory=list)
    unacked: int | None = None
    """A step sent but never acknowledged (given up after the grace period)."""


def _probe(
    url: str,
    text: SnapshotText,
    result: ProbeResult,
    ready: threading.Barrier,
    go: Any,
    end: Any,
    interval: float,
    offset: float,
) -> None:
    ws = None
    step, pending, first_sent, sent = 0, None, 0.0, False
    backoff = 0.05
    try:
        try:
            ws = connect(url, max_size=None, open_timeout=10)
        except BaseException:
            ready.abort()
            raise
        ready.wait()
        go.wait()
        due = time.monotonic() + offset
        while True:
            if pending is None:
                if interval:  # paced: the next snapshot is due `interval` after the last
                    time.sleep(max(0.0, min(due - time.monotonic(), end.value - time.time())))
                    due += interval
                if time.time() >= end.value:
                    return
                first_sent, sent = time.perf_counter(), False
                pending = text.render(step, time.time())
            if time.time() > end.value + RESEND_GRACE_S:
                result.unacked = step
                result.errors.append(f"step {step}: no ack {RESEND_GRACE_S:.0f} s after the end")
                return
            try:
                if ws is None:
                    ws = connect(url, max_size=None, open_timeout=10)
                    backoff = 0.05
                result.resent += sent
                sent = True
                ws.send(pending)
                reply = json.loads(ws.recv(timeout=60))
            except WS_ERRORS as exc:
                result.reconnects += 1
                if ws is not None:
                    with contextlib.suppress(Exception):
                        ws.close()
                ws = None
                time.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                if result.reconnects > 1000:
                    result.errors.append(f"gave up reconnecting: {exc!r}")
                    result.unacked = step
                    return
                continue
            if reply.get("type") == "ack" and reply.get("step") == step:
                result.ack_ms.append(1e3 * (time.perf_counter() - first_sent))
                result.acked.append(step)
                result.dup_acks += bool(reply.get("duplicate"))
                pending, step = None, step + 1
            elif reply.get("type") == "error" and reply.get("code") == "store_failed":
                continue  # the server closes the connection next: resend on a new one
            else:
                result.errors.append(f"step {step}: {json.dumps(reply)[:300]}")
                pending, step = None, step + 1
    except Exception as exc:  # reported, not raised in a thread
        result.errors.append(f"probe crashed: {exc!r}")
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()


def probes_main(url: str, runs: list[str], sizes: dict, ready: Any, go: Any, end: Any, q: Any):
    """Process: one thread per probe run (its own instance id and websocket)."""
    sz = Sizes(**sizes)
    interval = 1.0 / sz.rate if sz.rate > 0 else 0.0
    texts = []
    for i, run in enumerate(runs):
        groups = [make_group("all", sz.k, sz.top_k, random.Random(i))]
        texts.append(SnapshotText(run, uuid.uuid4().hex, groups, sz.top_k))
    results = [ProbeResult(run) for run in runs]
    barrier = threading.Barrier(len(runs) + 1)
    threads = [
        threading.Thread(
            target=_probe,
            args=(url, t, r, barrier, go, end, interval, i * interval / len(runs)),
            daemon=True,
        )
        for i, (t, r) in enumerate(zip(texts, results, strict=True))
    ]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=60)
        ready.set()
    clock = _Clock(go)
    for t in threads:
        t.join()
    q.put(("probes", {"results": [r.__dict__ for r in results], **clock.read()}))


# -- browsers ---------------------------------------------------------------------------------
_SNAPSHOT_HEAD = re.compile(
    r'^\{"type":"snapshot","run":"([^"]*)","snapshot":\{"run":"[^"]*","step":(\d+),'
    r'.*?"wall_time":([-+0-9.eE]+)'
)


def _snapshot_key(text: str) -> tuple[str, int, float] | None:
    """(run, step, wall_time) of a browser ``snapshot`` message; None for other messages."""
    m = _SNAPSHOT_HEAD.match(text[:1024])
    if m is not None:
        return m.group(1), int(m.group(2)), float(m.group(3))
    data = json.loads(text)
    if data.get("type") != "snapshot":
        return None
    snap = data["snapshot"]
    return data["run"], int(snap["step"]), float(snap["wall_time"])


def _subscriber(url: str, out: dict, ready: threading.Barrier, stop: Any, counter: Any) -> None:
    ws = None
    first = True
    while not stop.is_set():
        try:
            if ws is None:
                ws = connect(url, max_size=None, open_timeout=10)
                if json.loads(ws.recv(timeout=10)).get("type") != "subscribed":
                    raise RuntimeError("no 'subscribed' message")
                if first:
                    first = False
                    ready.wait()
            try:
                text = ws.recv(timeout=0.25)
            except TimeoutError:
                continue
            now = time.time()
            key = _snapshot_key(text)
            if key is None:
                continue
            _, step, wall_time = key
            out["steps"].append(step)
            out["latency_ms"].append(1e3 * (now - wall_time))
            with counter.get_lock():
                counter.value += 1
        except (*WS_ERRORS, RuntimeError) as exc:
            out["reconnects"] += 1
            out["closes"].append(repr(exc)[:200])
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()
            ws = None
            stop.wait(0.1)
    if first:  # never subscribed: do not leave the others waiting
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.abort()
    if ws is not None:
        with contextlib.suppress(Exception):
            ws.close()


def subscribers_main(urls: list[str], ready: Any, go: Any, stop: Any, counter: Any, q: Any) -> None:
    """Process: one thread per browser websocket."""
    outs = [{"steps": [], "latency_ms": [], "reconnects": 0, "closes": []} for _ in urls]
    barrier = threading.Barrier(len(urls) + 1)
    threads = [
        threading.Thread(target=_subscriber, args=(u, o, barrier, stop, counter), daemon=True)
        for u, o in zip(urls, outs, strict=True)
    ]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=60)
        ready.set()
    clock = _Clock(go)
    for t in threads:
        t.join()
    q.put(("subscribers", {"results": outs, **clock.read()}))


# -- readers ----------------------------------------------------------------------------------
def _reader(
    url: str,
    out: dict,
    barrier: threading.Barrier,
    go: Any,
    end: Any,
    stop: Any,
    pause: float,
) -> None:
    with httpx.Client(timeout=120) as client:
        with contextlib.suppress(Exception):
            client.get(url.split("/api/")[0] + "/api/health")  # connect before the start
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        go.wait()
        while not stop.is_set() and time.time() < end.value:  # readers stop with the window
            start = time.time()
            try:
                response = client.get(url)
                ok = response.status_code == 200
                if not ok:
                    out["errors"].append(f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                ok = False
                out["errors"].append(repr(exc)[:200])
                stop.wait(0.1)
            done = time.time()
            if ok and done <= end.value:  # completed within the load window
                out["latency_ms"].append(1e3 * (done - start))
                out["bytes"] = len(response.content)
            if pause:
                stop.wait(pause)


def readers_main(
    url: str, n: int, pause: float, ready: Any, go: Any, end: Any, stop: Any, q: Any
) -> None:
    """Process: one thread (and HTTP connection) per reader."""
    outs = [{"latency_ms": [], "errors": [], "bytes": 0} for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    threads = [
        threading.Thread(target=_reader, args=(url, o, barrier, go, end, stop, pause), daemon=True)
        for o in outs
    ]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=120)
    ready.set()
    clock = _Clock(go)
    for t in threads:
        t.join()
    q.put(("readers", {"results": outs, **clock.read()}))


# -- one row ----------------------------------------------------------------------------------
@dataclass
class Result:
    row: Row
    sizes: Sizes
    acked: int = 0
    rate: float = 0.0
    ack_ms: list[float] = field(default_factory=list)
    browser_ms: list[float] = field(default_factory=list)
    browser_missed: int = 0
    reads: int = 0
    read_ms: list[float] = field(default_factory=list)
    lost: int = 0
    dup: int = 0
    unacked_stored: int = 0
    reconnects: int = 0
    resent: int = 0
    dup_acks: int = 0
    peak_rss_mib: float = 0.0
    cpu_pct: float = 0.0
    load_cpu_pct: float = 0.0
    host_cpu_pct: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each phase of the row (progress output only)."""
    notes: list[str] = field(default_factory=list)


def seed(server: Server, sizes: Sizes) -> None:
    """Run ``seed``: one snapshot of ``seed_groups`` groups of K = ``seed_k``."""
    rng = random.Random(12345)
    groups = [
        make_group(f"layer{i:02d}.weight", sizes.seed_k, sizes.top_k, rng)
        for i in range(sizes.seed_groups)
    ]
    text = SnapshotText(SEED_RUN, uuid.uuid4().hex, groups, sizes.top_k).render(0, time.time())
    with connect(server.ws_url("/ws/ingest"), max_size=None, open_timeout=10) as ws:
        ws.send(text)
        reply = json.loads(ws.recv(timeout=60))
    if reply.get("type") != "ack":
        raise RuntimeError(f"seeding failed: {reply}")


def stored_steps(client: httpx.Client, server: Server, run: str, last: int, page: int = 100):
    """Every stored step of ``run`` (with repeats, if any), read ``page`` steps at a time."""
    steps: list[int] = []
    start = 0
    while True:
        params: dict[str, int] = {"start": start}
        if start <= last:
            params["end"] = start + page - 1
        response = client.get(server.url(f"/api/runs/{run}/snapshots"), params=params)
        if response.status_code == 404:
            return steps
        response.raise_for_status()
        steps += [int(s["step"]) for s in response.json()]
        if "end" not in params:
            return steps
        start += page


def _collect(q: Any, procs: dict[str, Any], got: dict[str, Any], timeout: float) -> None:
    """Wait for the results of the role processes ``procs`` on ``q`` (read before joining
    them: no pipe deadlock) into ``got``, which keeps early results of other roles too."""
    deadline = time.monotonic() + timeout
    while any(name not in got for name in procs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with contextlib.suppress(queue.Empty):
            name, data = q.get(timeout=min(remaining, 1.0))
            got[name] = data
            continue
        dead = [n for n, p in procs.items() if n not in got and not p.is_alive()]
        if dead:
            with contextlib.suppress(queue.Empty):  # they may have put results just now
                while True:
                    name, data = q.get(timeout=1.0)
                    got[name] = data
            if any(n not in got for n in dead):
                raise RuntimeError(f"load process(es) {dead} died without results")
    for name, proc in procs.items():
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        if name not in got:
            raise RuntimeError(f"no result from the {name} process")


def run_row(row: Row, sizes: Sizes, tmp: Path, postgres_url: str | None) -> Result:
    result = Result(row, sizes)
    ctx = mp.get_context("spawn")
    with database(row, tmp, postgres_url) as db:
        server = Server(db, row.workers, tmp / f"{row.name.replace('+', '_')}.log")
        clock = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            result.phases[name] = now - clock
            clock = now

        server.start()
        phase("start")
        sampler = TreeSampler(server)
        procs: dict[str, Any] = {}
        stop = ctx.Event()
        try:
            seed(server, sizes)
            runs = [f"load-{i}" for i in range(sizes.probes)]
            q = ctx.Queue()
            go, end = ctx.Event(), ctx.Value("d", 0.0)
            counter = ctx.Value("q", 0)
            sub_runs = [runs[i % len(runs)] for i in range(sizes.subscribers)]
            ready = {name: ctx.Event() for name in ("subscribers", "readers", "probes")}
            if sub_runs:
                procs["subscribers"] = ctx.Process(
                    target=subscribers_main,
                    args=(
                        [server.ws_url(f"/ws/runs/{r}") for r in sub_runs],
                        ready["subscribers"],
                        go,
                        stop,
                        counter,
                        q,
                    ),
                )
            if row.readers and sizes.readers:
                procs["readers"] = ctx.Process(
                    target=readers_main,
                    args=(
                        server.url(f"/api/runs/{SEED_RUN}/figures/step"),
                        sizes.readers,
                        sizes.read_pause,
                        ready["readers"],
                        go,
                        end,
                        stop,
                        q,
                    ),
                )
            procs["probes"] = ctx.Process(
                target=probes_main,
                args=(
                    server.ws_url("/ws/ingest"),
                    runs,
                    sizes.__dict__,
                    ready["probes"],
                    go,
                    end,
                    q,
                ),
            )
            for proc in procs.values():
                proc.start()
            for name in procs:
                if not ready[name].wait(timeout=120):
                    raise RuntimeError(f"the {name} process did not get ready")
            phase("clients")
            sampler.start()
            sampler.sample()
            t0 = time.time()
            end.value = t0 + sizes.seconds
            go.set()
            if row.kill:
                time.sleep(max(0.0, t0 + sizes.seconds / 2 - time.time()))
                result.notes.append(kill_a_worker(server, procs["probes"].pid, sampler, t0))
            got: dict[str, Any] = {}
            _collect(q, {"probes": procs["probes"]}, got, sizes.seconds + RESEND_GRACE_S + 90)
            probes = got.pop("probes")
            # let the browsers' queues drain: every delivery arrived, or none for 3 s
            acked = {r["run"]: r["acked"] for r in probes["results"]}
            expected = sum(len(acked[r]) for r in sub_runs)
            last, last_change = counter.value, time.monotonic()
            while counter.value < expected and time.monotonic() - last_change < 3.0:
                time.sleep(0.05)
                if counter.value != last:
                    last, last_change = counter.value, time.monotonic()
            if row.kill:
                result.notes.append(f"workers at the end: {server.worker_pids()}")
            sampler.finish()
            phase("load")
            stop.set()
            _collect(q, {k: v for k, v in procs.items() if k != "probes"}, got, 120)
            rest = got
            elapsed = sizes.seconds
            _summarise(result, probes, rest, sub_runs, elapsed, sampler)
            with httpx.Client(timeout=120) as client:
                for r in probes["results"]:
                    stored = stored_steps(client, server, r["run"], max(r["acked"], default=0))
                    unique = set(stored)
                    result.lost += len(set(r["acked"]) - unique)
                    result.dup += len(stored) - len(unique)
                    result.unacked_stored += len(unique - set(r["acked"]))
            if result.unacked_stored:
                result.notes.append(
                    f"{result.unacked_stored} snapshots stored but never acked (sent when a "
                    "connection broke, or the last one in flight): not a loss"
                )
            phase("check")
        finally:
            stop.set()
            for proc in procs.values():
                if proc.is_alive():
                    proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
            with contextlib.suppress(Exception):
                sampler.finish()
            server.stop()
            phase("stop")
    return result


def kill_a_worker(server: Server, probes_pid: int, sampler: TreeSampler, t0: float) -> str:
    """SIGKILL the uvicorn worker holding the most probe connections; say which."""
    workers = server.worker_pids()
    if not workers:
        raise RuntimeError("no uvicorn worker process to kill")
    held = probe_connections(server, probes_pid)
    victim = max(workers, key=lambda pid: held.get(pid, 0))
    sampler.sample()  # the victim's VmHWM, before it goes
    os.kill(victim, signal.SIGKILL)
    holding = (
        f"holding {held.get(victim, 0)} of {sum(held.values())} probe connections"
        if held
        else "probe connections unknown (no psutil)"
    )
    return (
        f"SIGKILLed worker pid {victim} ({holding}) at t = {time.time() - t0:.1f} s; "
        f"workers then: {workers}"
    )


def probe_connections(server: Server, probes_pid: int) -> dict[int, int]:
    """Worker pid -> how many of the probes process's websockets it holds (needs psutil)."""
    if psutil is None:
        return {}

    def tcp(pid: int) -> list[Any]:
        proc = psutil.Process(pid)
        conns = getattr(proc, "net_connections", None) or proc.connections
        with contextlib.suppress(psutil.Error):
            return [c for c in conns(kind="tcp") if c.raddr]
        return []

    ports = {c.laddr.port for c in tcp(probes_pid) if c.raddr.port == server.port}
    return {
        pid: sum(c.laddr.port == server.port and c.raddr.port in ports for c in tcp(pid))
        for pid in server.worker_pids()
    }


def _summarise(result: Result, probes, rest, sub_runs, elapsed, sampler) -> None:
    load_cpu = probes["cpu_s"] / probes["wall_s"]
    for r in probes["results"]:
        result.acked += len(r["acked"])
        result.ack_ms += r["ack_ms"]
        result.reconnects += r["reconnects"]
        result.resent += r["resent"]
        result.dup_acks += r["dup_acks"]
        result.notes += [f"probe {r['run']}: {e}" for e in r["errors"][:3]]
    result.rate = result.acked / elapsed
    acked = {r["run"]: set(r["acked"]) for r in probes["results"]}
    if result.resent:
        result.notes.append(
            f"probes resent {result.resent} messages after reconnecting; "
            f"{result.dup_acks} were acked as duplicates (stored before the connection broke); "
            f"longest ack wait {max(result.ack_ms):.0f} ms"
        )
    subscribers = rest["subscribers"]["results"] if "subscribers" in rest else []
    readers = rest["readers"]["results"] if "readers" in rest else []
    for role in rest.values():
        load_cpu += role["cpu_s"] / role["wall_s"]
    result.load_cpu_pct = 100 * load_cpu
    sub_reconnects = 0
    for run, out in zip(sub_runs, subscribers, strict=False):
        result.browser_ms += out["latency_ms"]
        result.browser_missed += len(acked[run] - set(out["steps"]))
        sub_reconnects += out["reconnects"]
    if sub_reconnects:
        closes = [c for out in subscribers for c in out["closes"]]
        result.notes.append(f"browsers reconnected {sub_reconnects} times ({closes[0]})")
    for out in readers:
        result.reads += len(out["latency_ms"])
        result.read_ms += out["latency_ms"]
    errors = [e for out in readers for e in out["errors"]]
    if errors:
        result.notes.append(f"reader errors: {len(errors)} ({errors[0]})")
    if readers:
        size = max(out["bytes"] for out in readers)
        result.notes.append(f"figures/step response: {size / 1024:.0f} KiB")
    result.peak_rss_mib = sampler.peak_kib / 1024
    result.cpu_pct = 100 * sampler.cpu_seconds() / max(sampler.span_s(), 1e-9)
    result.host_cpu_pct = sampler.host_pct()


# -- report -----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


COLUMNS = (
    "row", "configuration", "P", "B", "R", "snaps/s", "ack p50 ms", "ack p95 ms",
    "i→b p50 ms", "i→b p95 ms", "b.miss", "reads/s", "read p50 ms", "acked", "lost", "dup",
    "reconn", "srv CPU %", "load CPU %", "host CPU %", "peak RSS MiB",
)  # fmt: skip


def table_row(r: Result) -> list[str]:
    readers = r.sizes.readers if r.row.readers else 0
    return [
        r.row.name,
        r.row.label(),
        str(r.sizes.probes),
        str(r.sizes.subscribers),
        str(readers),
        fmt(r.rate),
        fmt(pct(r.ack_ms, 50)),
        fmt(pct(r.ack_ms, 95)),
        fmt(pct(r.browser_ms, 50)),
        fmt(pct(r.browser_ms, 95)),
        str(r.browser_missed),
        fmt(r.reads / r.sizes.seconds) if readers else "—",
        fmt(pct(r.read_ms, 50)) if readers else "—",
        str(r.acked),
        str(r.lost),
        str(r.dup),
        str(r.reconnects),
        fmt(r.cpu_pct, 0),
        fmt(r.load_cpu_pct, 0),
        fmt(r.host_cpu_pct, 0),
        fmt(r.peak_rss_mib, 0),
    ]


def print_table(results: list[Result]) -> None:
    rows = [list(COLUMNS)] + [table_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(rows[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in rows[1:]:
        print(line(cells))


def print_targets(results: list[Result], sizes: Sizes) -> None:
    at_target = (sizes.probes, sizes.subscribers, sizes.readers) == TARGET_SIZES
    print()
    if not at_target:
        print(
            f"targets (ack p95 < {ACK_TARGET_MS:.0f} ms, ingest→browser p95 < "
            f"{BROWSER_TARGET_MS:.0f} ms, zero loss) are stated for 8 probes, 20 subscribers, "
            "6 readers: not judged at these sizes"
        )
        return
    for r in results:
        if not r.row.readers or r.row.kill:
            continue
        ack95, b95 = pct(r.ack_ms, 95), pct(r.browser_ms, 95)
        checks = [
            (f"ack p95 {fmt(ack95)} ms < {ACK_TARGET_MS:.0f}", ack95 is not None and ack95 < 100),
            (f"i→b p95 {fmt(b95)} ms < {BROWSER_TARGET_MS:.0f}", b95 is not None and b95 < 100),
            (f"lost {r.lost} = 0", r.lost == 0 and r.dup == 0),
        ]
        verdict = "; ".join(f"{text}: {'met' if ok else 'MISSED'}" for text, ok in checks)
        print(f"target, {r.row.name} ({r.row.label()}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, small sizes")
    parser.add_argument("--seconds", type=float, help="load per row (default 20; quick 3)")
    parser.add_argument("--probes", type=int, help="probe connections (default 8; quick 2)")
    parser.add_argument("--subscribers", type=int, help="browser websockets (20; quick 4)")
    parser.add_argument("--readers", type=int, help="figure readers in +r rows (6; quick 2)")
    parser.add_argument("--k", type=int, help="eigenvalues per probe snapshot (1000; quick 200)")
    parser.add_argument("--top-k", type=int, default=50, help="statistics per group (50)")
    parser.add_argument("--seed-groups", type=int, help="groups of the seeded snapshot (50)")
    parser.add_argument("--seed-k", type=int, default=200, help="K of the seeded snapshot")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="snapshots/s per probe (default 0: each as soon as the previous is acked)",
    )
    parser.add_argument(
        "--read-pause",
        type=float,
        default=0.0,
        help="seconds each reader waits between requests (default 0: back to back)",
    )
    parser.add_argument("--postgres-url", help="admin URL of a PostgreSQL cluster")
    parser.add_argument("--kill", action="store_true", help=f"add the row {KILL_ROW}")
    parser.add_argument("--rows", help=f"comma-separated subset of {','.join(ROWS)}")
    args = parser.parse_args(argv)

    quick = args.quick
    sizes = Sizes(
        probes=args.probes or (2 if quick else 8),
        subscribers=args.subscribers if args.subscribers is not None else (4 if quick else 20),
        readers=args.readers if args.readers is not None else (2 if quick else 6),
        seconds=args.seconds or (3.0 if quick else 20.0),
        k=args.k or (200 if quick else 1000),
        top_k=args.top_k,
        seed_groups=args.seed_groups or (10 if quick else 50),
        seed_k=args.seed_k,
        rate=args.rate,
        read_pause=args.read_pause,
    )
    try:
        rows = [Row.parse(n) for n in (args.rows.split(",") if args.rows else ROWS)]
    except ValueError as exc:
        parser.error(str(exc))
    if args.kill:
        rows.append(Row.parse(KILL_ROW))

    print(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; server and load "
        "processes share it"
    )
    print(f"command: {shlex.join(['python', *(sys.argv if argv is None else ['-', *argv])])}")
    pace = f"{sizes.rate:g} snapshots/s each" if sizes.rate > 0 else "closed loop"
    print(
        f"load: {sizes.probes} probes (1 group, K={sizes.k}, top-k {sizes.top_k}, one in "
        f"flight each, {pace}), {sizes.subscribers} browser websockets, {sizes.readers} readers of "
        f"figures/step ({sizes.seed_groups} groups x K={sizes.seed_k}"
        f"{f', {sizes.read_pause:g} s apart' if sizes.read_pause else ', back to back'}) "
        "in +r rows; "
        f"{sizes.seconds:g} s per row"
    )
    skipped = [r for r in rows if r.postgres and not args.postgres_url]
    if skipped:
        print(
            f"skipped {', '.join(r.name for r in skipped)}: no --postgres-url (start a "
            "throwaway cluster with `bash .ci/postgres.sh`)"
        )
    rows = [r for r in rows if r not in skipped]
    sys.stdout.flush()

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="curvscope-server-load-") as tmp:
        for row in rows:
            started = time.perf_counter()
            result = run_row(row, sizes, Path(tmp), args.postgres_url)
            results.append(result)
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items())
            print(
                f"  {row.name}: done in {time.perf_counter() - started:.1f} s ({phases})",
                file=sys.stderr,
            )
    print()
    print_table(results)
    print(
        "snaps/s: acked snapshots per second; ack: send -> ack at the probe (a resent "
        "message counts from its first send); i→b: probe send -> browser receipt; b.miss: "
        "(browser, acked snapshot of its run) pairs never delivered; lost/dup: acked but "
        "not stored / stored twice (REST check); reconn: probe reconnects. CPU in % of one "
        f"core (this machine: {os.cpu_count()} cores): srv = the curvscope serve process "
        "tree, load = the probe/browser/reader processes, host = the whole machine "
        "(PostgreSQL and anything else running included)."
    )
    notes = [(r.row.name, n) for r in results for n in r.notes]
    if notes:
        print()
        for name, note in notes:
            print(f"note, {name}: {note}")
    print_targets(results, sizes)
    return 0 if all(r.lost == 0 and r.dup == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
