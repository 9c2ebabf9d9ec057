"""The deployment shapes `scripts/bench` loads: the baseline servers and `receiver serve` on SQLite, on
PostgreSQL with one or two web processes beside a worker; each started and stopped as one, its processes
(children too) named and measured from /proc, and its database polled until the follow-up work is done."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import ROOT, ServerProcess, command_line, cpu_s, free_port, pids, rss_kb, tail
from bench.wrk import receiver_env
from receiver.storage import events, tasks
from receiver.storage.backends import open_database
from receiver.storage.base import Database

RECEIVER = [sys.executable, "-m", "receiver", "serve"]


@dataclass
class Member:
    """One process the shape starts itself (its children, if it starts any, are found in /proc)."""

    role: str
    process: ServerProcess


@dataclass
class Shape:
    """Processes serving one port together: a baseline server or a receiver deployment."""

    key: str  # the `--shapes` name
    name: str  # the table's
    port: int
    members: list[Member]
    database_url: str | None = None  # receivers: where the jobs are seeded and the backlog is polled
    #: The database server's processes (PostgreSQL's), measured apart from the shape's own.
    server_pids: Callable[[], list[int]] | None = None

    @property
    def receiver(self) -> bool:
        return self.database_url is not None

    @property
    def webs(self) -> int:
        return sum(1 for member in self.members if member.process.healthz)

    async def start(self) -> None:
        try:
            for member in self.members:
                await member.process.start()
            await wait_listeners(self.port, self.webs)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM to every process, the web ones first (they stop taking requests; workers finish theirs)."""
        for member in self.members:
            if member.process.alive:
                await member.process.stop(signal.SIGTERM)

    def check_alive(self) -> None:
        for member in self.members:
            if not member.process.alive:
                log = member.process.log_path
                raise RuntimeError(f"{self.name}: {member.role} exited ({log}):\n{tail(log)}")

    def processes(self) -> dict[str, int]:
        """Every process of the shape by a stable label: the members' roles, and for their descendants the
        role given on their command line (`--role worker`) or `child` (numbered in pid order)."""
        labelled: dict[str, int] = {}
        for member in self.members:
            if not member.process.alive:
                continue
            root, *descendants = pids(member.process.pid)
            labelled[member.role] = root
            for number, pid in enumerate(descendants, 1):
                labelled[f"{member.role}/{child_role(pid, number)}"] = pid
        return labelled


def child_role(pid: int, number: int) -> str:
    argv = command_line(pid)
    if "--role" in argv[:-1]:
        return argv[argv.index("--role") + 1]
    if "multiprocessing.resource_tracker" in " ".join(argv):
        return "resource tracker"
    return f"child {number}"


async def wait_listeners(port: int, count: int, timeout_s: float = 15.0) -> None:
    """Wait until `count` sockets listen on the loopback `port` (web processes sharing it with SO_REUSEPORT
    each have their own; the first one answering /healthz says nothing of the second)."""
    deadline = time.monotonic() + timeout_s
    while listeners(port) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{listeners(port)} of {count} web processes listen on port {port}")
        await asyncio.sleep(0.05)


def listeners(port: int) -> int:
    """Listening TCP sockets on `port` (from /proc/net/tcp: state 0A)."""
    found = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            found += 1
    return found


# --------------------------------------------------------------------------------------------------
# The shapes


def baseline(mode: str, workers: int, *, jwk_x: str, data: Path) -> Shape:
    """One of the baseline servers of `bench/baseline.py` under uvicorn with `workers` processes."""
    port = free_port()
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_JWK_X": jwk_x, "BENCH_DB": str(data / f"naive-{port}.db")}
    argv = [sys.executable, "-m", "uvicorn", "bench.baseline:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    name = f"baseline-{mode}" + (f" x{workers}" if workers > 1 else "")
    process = ServerProcess(env, port, cwd=ROOT, log_path=data / f"{name}.log", argv=argv, name=name)
    key = mode + (str(workers) if workers > 1 else "")
    return Shape(key, name, port, [Member("uvicorn", process)])


def sqlite_default(*, url: str, data: Path, jwks_url: str, key: str = "sqlite", **settings: str) -> Shape:
    """`receiver serve` on the SQLite database `url`, as a user starts it (with its worker, however it runs it)."""
    port = free_port()
    workdir = data / key
    workdir.mkdir()
    env = receiver_env(workdir, jwks_url, port, RECEIVER_DATABASE_URL=url, **settings)
    argv = [*RECEIVER, "--port", str(port)]
    process = ServerProcess(env, port, cwd=ROOT, log_path=data / f"{key}.log", argv=argv, name=f"{key} serve")
    name = "receiver sqlite" + (", verify thread" if settings else "")
    return Shape(key, name, port, [Member("serve", process)], database_url=url)


def postgres(
    *, webs: int, key: str, url: str, data: Path, jwks_url: str, server_pids: Callable[[], list[int]]
) -> Shape:
    """`webs` web processes sharing one port (`--role web --reuse-port`) and one `--role worker`, all on the
    PostgreSQL database `url`."""
    port = free_port()
    workdir = data / key
    workdir.mkdir()
    env = receiver_env(workdir, jwks_url, port, RECEIVER_DATABASE_URL=url)
    members = []
    for number in range(1, webs + 1):
        argv = [*RECEIVER, "--role", "web", "--reuse-port", "--port", str(port)]
        role = "web" if webs == 1 else f"web {number}"
        log = data / f"{key}-web{number}.log"
        members.append(Member(role, ServerProcess(env, port, cwd=ROOT, log_path=log, argv=argv, name=f"{key} {role}")))
    argv = [*RECEIVER, "--role", "worker"]
    worker = ServerProcess(
        env, port, cwd=ROOT, log_path=data / f"{key}-worker.log", argv=argv, name=f"{key} worker", healthz=False
    )
    members.append(Member("worker", worker))
    name = f"receiver pg {webs}web+worker"
    return Shape(key, name, port, members, database_url=url, server_pids=server_pids)


# --------------------------------------------------------------------------------------------------
# Measuring


class Meter:
    """CPU of every process of a shape between `Meter(shape)` and `read()`, and their peak RSS."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.wall0 = time.monotonic()
        self.cpu0 = {pid: cpu_s([pid]) for pid in shape.processes().values()}
        self.server0 = cpu_s(shape.server_pids(), reaped=True) if shape.server_pids else 0.0

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        by_process = {}
        for label, pid in self.shape.processes().items():
            by_process[label] = {
                "cores": round((cpu_s([pid]) - self.cpu0.get(pid, 0.0)) / wall, 2),
                "peak_rss_mb": round(rss_kb([pid], "VmHWM") / 1024, 1),
            }
        result: dict[str, Any] = {
            "cores_used": round(sum(p["cores"] for p in by_process.values()), 2),
            "peak_rss_mb": round(sum(p["peak_rss_mb"] for p in by_process.values()), 1),
            "processes": by_process,
        }
        if self.shape.server_pids:
            server = cpu_s(self.shape.server_pids(), reaped=True) - self.server0
            result["database_cores"] = round(server / wall, 2)
        return result


def rss_sample(shape: Shape, webhooks: int) -> dict[str, Any]:
    """The RSS of each process of the shape, after `webhooks` webhooks sent to it."""
    return {
        "webhooks": webhooks,
        "rss_mb": {label: round(rss_kb([pid]) / 1024, 1) for label, pid in shape.processes().items()},
    }


class Backlog:
    """A receiver shape's follow-up work, read from its database through the storage layer."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def wait_drained(self, *, timeout_s: float, poll_s: float = 0.25) -> dict[str, Any]:
        """Poll until the follow-up work is done: no task due (`tasks.next_run_at`) and no new event between
        two polls (the tasks still leased at the first of them have finished: each webhook's `fetch_images`
        ends with its `job.succeeded` event). Returns the seconds from the call to the first of those two
        polls, and the events written meanwhile (the backlog drained)."""
        began = time.monotonic()
        first_seq = previous_seq = await events.last_event_seq(self.db)
        quiet_since: float | None = None
        while True:
            now, elapsed = time.time(), time.monotonic() - began
            due = await tasks.next_run_at(self.db)
            seq = await events.last_event_seq(self.db)
            idle = due is None or due > now
            if idle and seq == previous_seq and quiet_since is not None:
                return {"drained": True, "drain_s": round(quiet_since, 1), "events": seq - first_seq}
            quiet_since = elapsed if idle else None
            previous_seq = seq
            if elapsed > timeout_s:
                return {"drained": False, "drain_s": round(elapsed, 1), "events": seq - first_seq}
            await asyncio.sleep(poll_s)


@contextlib.asynccontextmanager
async def backlog(url: str) -> AsyncIterator[Backlog]:
    """The database `url` names, open for the block: wrap the shape's whole life in it. On SQLite this
    process must not be the last to close the file while the shape runs: a connection that closes believing
    itself the last checkpoints and deletes the write-ahead log, and a server whose own file locks are gone
    (see the report of issue 10's bench helper) would then go on in a log nobody else sees."""
    async with open_database(url) as db:
        yield Backlog(db)
