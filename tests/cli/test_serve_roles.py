"""`receiver serve --role all|web|worker` in real processes on one SQLite file: what each role runs, the worker
child of `all`, takeover of a killed worker's tasks, the heartbeat, wake-ups across processes, SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.processes import pids
from receiver.emulators import Emulators, StepFunEmulator, StepFunEmulatorConfig, create_emulator_app
from receiver.web.asgi_server import running_server
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.processes import RECEIVER, ServerProcess, cli_env, free_port, tail, wait_status
from tests.helpers.waiting import until

STEPFUN_BODY = {"provider": "stepfun", "model": "step-image-edit-2", "input": {"prompt": "red", "image": SMALL_PNG_URI}}
FINAL = {"succeeded", "failed", "cancelled"}
LONG_LEASE_S = "600"  # only the dead-owner path can explain a takeover within the test's deadline


@pytest.fixture
async def stepfun_url() -> AsyncIterator[tuple[StepFunEmulator, str]]:
    emulator = StepFunEmulator(StepFunEmulatorConfig(latency_s=0.01))
    async with running_server(create_emulator_app(emulators=Emulators(stepfun=emulator))) as url:
        yield emulator, url


@pytest.fixture
def stepfun(stepfun_url: tuple[StepFunEmulator, str]) -> StepFunEmulator:
    return stepfun_url[0]


class Deployment:
    """Processes of `receiver serve` in their roles on one database in `tmp_path`, one environment."""

    def __init__(self, tmp_path: Path, stepfun_url: str, **settings: str) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()  # the first web process's (public URL)
        self.env = cli_env(
            tmp_path,
            RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{self.port}",
            RECEIVER_STEPFUN_URL=f"{stepfun_url}/stepfun",
            RECEIVER_FETCH_ALLOW_PRIVATE="true",
            RECEIVER_NOTIFY_ALLOW_PRIVATE="true",
            RECEIVER_LOG_LEVEL="info",
            STEP_API_KEY="test-step-key",
            **settings,
        )
        self.db = tmp_path / "receiver.db"
        self.servers: list[ServerProcess] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def web(self, *args: str, role: str = "web", port: int | None = None) -> ServerProcess:
        port = port or (self.port if not self.servers else free_port())
        argv = [*RECEIVER, "serve", "--role", role, "--port", str(port), *args]
        log_path = self.tmp_path / f"{role}-{len(self.servers)}.log"
        server = ServerProcess(self.env, port, cwd=self.tmp_path, log_path=log_path, argv=argv, name=f"serve {role}")
        self.servers.append(server)
        return server

    async def worker(self) -> subprocess.Popen[bytes]:
        """A `--role worker` process, once its task runner is running."""
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [*RECEIVER, "serve", "--role", "worker"], env=self.env, cwd=self.tmp_path, stdout=log, stderr=log
            )
        self.workers.append(proc)
        await until_logged(log_path, f"receiver worker started (pid {proc.pid})", proc)
        return proc

    async def stop_all(self) -> None:
        for server in self.servers:
            if server.alive:
                await server.stop(signal.SIGTERM)
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 60)

    async def task(self, kind: str) -> dict[str, Any]:
        [row] = await read_rows(self.db, "SELECT * FROM tasks WHERE kind = ?", kind)
        return dict(row)


@pytest.fixture
async def deployment(tmp_path: Path, stepfun_url: tuple[StepFunEmulator, str]) -> AsyncIterator[Any]:
    """A `Deployment` maker (settings as keyword arguments); every process it started is stopped after."""
    made: list[Deployment] = []

    def make(**settings: str) -> Deployment:
        made.append(Deployment(tmp_path, stepfun_url[1], **settings))
        return made[-1]

    yield make
    for deployment in made:
        await deployment.stop_all()


async def until_logged(log_path: Path, line: str, proc: subprocess.Popen[bytes]) -> None:
    def logged() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{tail(log_path)}"
        return line in log_path.read_text(errors="replace")

    await until(logged, what=f"{line!r} in {log_path.name}")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def children(pid: int) -> list[int]:
    return [child for child in pids(pid) if child != pid]


def gone(pid: int) -> bool:
    """No such process, not even a zombie waiting for its parent."""
    return not Path(f"/proc/{pid}").exists()


async def create_job(client: httpx.AsyncClient) -> dict[str, Any]:
    created = await client.post("/v1/jobs", json=STEPFUN_BODY)
    assert created.status_code == 202, created.text
    job: dict[str, Any] = created.json()
    return job


# --- what each role runs ------------------------------------------------------------------------


async def test_web_runs_no_task_and_a_worker_binds_no_port(deployment: Any, stepfun: StepFunEmulator) -> None:
    """`--role web` takes a job but never runs its submit (no task runner is alive in it); a `--role worker`
    process then runs it, listening on no port."""
    d: Deployment = deployment()
    web = d.web()
    await web.start()
    async with httpx.AsyncClient(base_url=web.url, timeout=10) as client:
        job = await create_job(client)
        # Nothing can announce that a task did not run: give a runner 10 of its poll intervals to show up.
        with contextlib.suppress(AssertionError):
            await until(lambda: stepfun.calls > 0, timeout_s=1.0)
        assert stepfun.calls == 0
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "pending"
        assert (await d.task("submit"))["attempts"] == 0
        assert not any((d.tmp_path / "receiver.db.owners").glob("*"))  # no runner ever marked alive here
        worker = await d.worker()
        final = await wait_status(client, job["id"], FINAL)
    assert final["status"] == "succeeded", final
    assert stepfun.calls == 1
    assert listening_ports(worker.pid) == set()
    assert listening_ports(web.pid) == {web.port}


async def test_all_starts_a_worker_child_and_sigterm_stops_both(deployment: Any, stepfun: StepFunEmulator) -> None:
    """`--role all` (the default) runs the tasks in a worker child it started; SIGTERM stops the child
    gracefully first, then the web part, exit status 0 and no child left behind."""
    d: Deployment = deployment()
    server = d.web(role="all")
    await server.start()
    await until(lambda: len(children(server.pid)) == 1, what="the worker child")
    [child] = children(server.pid)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        final = await wait_status(client, (await create_job(client))["id"], FINAL)
    assert final["status"] == "succeeded", final
    assert listening_ports(child) == set()
    assert await server.stop(signal.SIGTERM) == 0
    assert gone(child)
    log = server.log_path.read_text()  # the child writes to the parent's stderr
    assert f"receiver worker started (pid {child})" in log
    assert "receiver worker stopped" in log  # gracefully, not killed


# --- takeover and the heartbeat -------------------------------------------------------------------


async def test_kill_9_of_a_worker_mid_submit_is_taken_over_at_once_and_not_resent(
    deployment: Any, stepfun: StepFunEmulator
) -> None:
    """A `--role worker` killed with SIGKILL in the middle of a StepFun call, leases of 600 s: a new worker puts
    the task back at once (its owner is dead), and the job fails as outcome unknown: the call is never sent
    twice."""
    d: Deployment = deployment(RECEIVER_TASK_LEASE_S=LONG_LEASE_S)
    web = d.web()
    await web.start()
    stepfun.config.latency_s = 600
    async with httpx.AsyncClient(base_url=web.url, timeout=10) as client:
        first = await d.worker()
        job = await create_job(client)
        await until(lambda: stepfun.calls == 1, what="the StepFun call")
        first.kill()
        await asyncio.to_thread(first.wait)
        assert (await d.task("submit"))["status"] == "leased"
        stepfun.config.latency_s = 0.01
        await d.worker()
        final = await wait_status(client, job["id"], FINAL)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "provider_outcome_unknown"
    assert stepfun.calls == 1
    task = await d.task("submit")
    assert (task["status"], task["interrupted"], task["attempts"]) == ("done", 1, 2)
    assert "lease owner died" in task["last_error"]


class HeldTarget:
    """A subscriber whose first delivery hangs until the test ends; later ones answer 204. Records each
    `webhook-id`."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.hang = asyncio.Event()

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.ids.append(request.headers["webhook-id"])
            if len(self.ids) == 1:
                await self.hang.wait()
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def test_kill_9_of_the_all_child_mid_delivery_resumes_at_once(deployment: Any, stepfun: StepFunEmulator) -> None:
    """SIGKILL of the worker child of `--role all` while it delivers a notification (leases of 600 s): the
    parent starts a new child, which takes the delivery over at once and sends it again (same webhook-id)."""
    d: Deployment = deployment(RECEIVER_TASK_LEASE_S=LONG_LEASE_S)
    target = HeldTarget()
    async with running_server(target.app()) as target_url:
        server = d.web(role="all")
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            sub = {"kind": "webhook", "url": f"{target_url}/hook", "events": ["job.succeeded"]}
            assert (await client.post("/v1/subscriptions", json=sub)).status_code == 201
            await create_job(client)
            await until(lambda: len(target.ids) == 1, what="the first delivery")
            [child] = children(server.pid)
            os.kill(child, signal.SIGKILL)
            await until(lambda: len(target.ids) == 2, what="the delivery resent by the new child")
            target.hang.set()
        assert target.ids[0] == target.ids[1]
        [new_child] = children(server.pid)
        assert new_child != child and gone(child)
        assert f"worker process {child} died" in server.log_path.read_text()
        await server.stop(signal.SIGTERM)


async def test_heartbeat_keeps_a_long_task_past_its_lease(deployment: Any, stepfun: StepFunEmulator) -> None:
    """A StepFun call that lasts longer than two leases, with a second worker waiting to take over any
    lease that runs out: the heartbeat keeps it, so the task runs once, uninterrupted, and the job succeeds."""
    d: Deployment = deployment(RECEIVER_TASK_LEASE_S="3")
    web = d.web()
    await web.start()
    stepfun.config.latency_s = 7
    async with httpx.AsyncClient(base_url=web.url, timeout=10) as client:
        await d.worker()
        await d.worker()
        job = await create_job(client)
        final = await wait_status(client, job["id"], FINAL)
    assert final["status"] == "succeeded", final
    assert stepfun.calls == 1
    task = await d.task("submit")
    assert (task["status"], task["interrupted"], task["attempts"]) == ("done", 0, 1)


# --- wake-ups across processes, shared port -------------------------------------------------------


async def test_stream_on_a_web_process_sees_events_a_worker_commits(deployment: Any, stepfun: StepFunEmulator) -> None:
    """`/v1/stream` on a `--role web` process shows `job.succeeded` committed by a separate worker, woken by
    the commit (its keep-alive poll is 10 minutes: only the cross-process wake-up explains it)."""
    d: Deployment = deployment(RECEIVER_STREAM_PING_S="600")
    web = d.web()
    await web.start()
    await d.worker()
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
        async with client.stream("GET", "/v1/stream") as stream:
            job = await create_job(client)
            async for line in stream.aiter_lines():
                seen.append(line)
                if line.startswith("data: ") and "event: job.succeeded" in seen:
                    break
    assert job["id"] in seen[-1]


async def test_two_web_processes_share_a_port_with_reuse_port(deployment: Any) -> None:
    """Two `--role web --reuse-port` processes listen on one port; the port keeps answering when either stops."""
    d: Deployment = deployment()
    first, second = d.web("--reuse-port"), d.web("--reuse-port", port=d.port)
    await first.start()
    await second.start()  # the port answers already: wait for the second to say it listens too
    assert second.proc is not None
    await until_logged(second.log_path, f"receiver web listening on 127.0.0.1:{d.port}", second.proc)
    assert listening_ports(first.pid) == listening_ports(second.pid) == {d.port}
    async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
        await first.stop(signal.SIGTERM)
        assert (await client.get("/healthz")).status_code == 200
    assert second.alive
