"""The scale-out proof of issue 10: `receiver serve` as 2 web processes sharing one port (`--reuse-port`) and 2
worker processes on one PostgreSQL database, one web and one worker killed with SIGKILL mid-run and restarted.

Everything is real: the processes, the PostgreSQL server (a fresh database of the test's own), the providers'
emulators on loopback (fal with both models, WaveSpeed, StepFun, Modelverse; fal and WaveSpeed send signed
webhooks, some twice and some late, switched at random while the jobs run), and a subscriber that checks every
Standard Webhooks signature with the standardwebhooks library (not our code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from receiver.emulators import (
    Emulators,
    ModelverseEmulator,
    ModelverseEmulatorConfig,
    StepFunEmulator,
    StepFunEmulatorConfig,
    WaveSpeedEmulator,
    WaveSpeedEmulatorConfig,
    create_emulator_app,
)
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.web.asgi_server import running_server
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.processes import RECEIVER, ServerProcess, free_port, serve_env, tail
from tests.helpers.provider_webhooks import SECRET_KEY
from tests.helpers.receivers import HookReceiver
from tests.helpers.waiting import until

JOBS = 300
# submits of a slow synchronous provider leased by one process (its pid is part of the lease owner's name)
HELD_SYNC_CALLS = (
    "SELECT COUNT(*) FROM tasks WHERE status = 'leased' AND kind = 'submit' AND lane = 'stepfun' AND lease_owner LIKE ?"
)
BUSY = "SELECT COUNT(*) FROM tasks WHERE status IN ('pending', 'leased')"
# the failed jobs: their error, and how often their submit task was cut by a kill
FAILURES = """SELECT j.id, j.error, MAX(t.interrupted) FROM jobs AS j JOIN tasks AS t ON t.job_id = j.id
              WHERE j.status = 'failed' AND t.kind = 'submit' GROUP BY j.id, j.error"""
OPEN_JOBS = "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"
FINAL_EVENTS = """SELECT job_id, COUNT(*) FROM events WHERE type IN ('job.succeeded', 'job.failed', 'job.cancelled')
                  GROUP BY job_id"""
JOB_TIMEOUT_S = 20.0  # ends a job whose submit a kill cut before it left (no webhook will ever come)
# A dead owner's leases go at once (its liveness lock is gone); a few lease lengths only bound that wait. Live
# leases are kept by the heartbeat. Known bug, open: when a stalled runner's lease runs out and the same runner
# claims the task again, the first run's outcome write (owner-checked only) can complete the second claim after
# its own announce found no lease, so the job never gets its job.succeeded event (seen with 2 s leases on a
# machine loaded ~10x over its cores).
LEASE_S = 5.0
FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.02, "time_scale": 0.001}
# provider, model, input: fal's two models, WaveSpeed (webhooks), StepFun and Modelverse (synchronous calls)
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("fal", "fal-ai/stepx-edit2", {"image_url": SMALL_PNG_URI}),
    ("fal", "fal-ai/fast-sdxl/image-to-image", {"image_url": SMALL_PNG_URI}),
    ("wavespeed", "wavespeed-ai/step1x-edit", {"image": SMALL_PNG_URI}),
    ("stepfun", "step-image-edit-2", {"image": SMALL_PNG_URI}),
    ("modelverse", "stepfun-ai/step1x-edit", {"image": SMALL_PNG_URI}),
]


class Deployment:
    """Two web processes on one port and two workers, on the PostgreSQL database at `url`."""

    def __init__(self, tmp_path: Path, url: str, emulator_url: str) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.env = serve_env(
            tmp_path,
            RECEIVER_DATABASE_URL=url,
            RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{self.port}",
            RECEIVER_SECRET_KEY=SECRET_KEY.decode(),
            RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
            RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
            RECEIVER_WAVESPEED_URL=f"{emulator_url}/wavespeed",
            RECEIVER_STEPFUN_URL=f"{emulator_url}/stepfun",
            RECEIVER_MODELVERSE_URL=f"{emulator_url}/modelverse",
            FAL_KEY="test-fal-key",
            WAVESPEED_API_KEY="test-wavespeed-key",
            STEP_API_KEY="test-step-key",
            MODELVERSE_API_KEY="test-modelverse-key",
            RECEIVER_FETCH_ALLOW_PRIVATE="true",
            RECEIVER_FETCH_ALLOWED_HOSTS="127.0.0.1",
            RECEIVER_NOTIFY_ALLOW_PRIVATE="true",
            RECEIVER_NOTIFY_RETRY_SCALE="0.001",
            RECEIVER_RECONCILE_AFTER_S="2",
            RECEIVER_RECONCILE_INTERVAL_S="0.5",
            RECEIVER_POLL_INTERVAL_S="1",
            RECEIVER_TASK_LEASE_S=f"{LEASE_S:g}",
            RECEIVER_TASK_POLL_INTERVAL_S="0.1",
            # the provider caps hold across the processes; WaveSpeed's default (2, its Bronze tier) would queue
            # its 60 jobs behind late webhooks for longer than the job timeout
            RECEIVER_WAVESPEED_CONCURRENCY="8",
            RECEIVER_STEPFUN_CONCURRENCY="8",
            RECEIVER_MODELVERSE_CONCURRENCY="8",
            RECEIVER_JOB_TIMEOUT_S=f"{JOB_TIMEOUT_S:g}",
            RECEIVER_LOG_LEVEL="info",
        )
        argv = [*RECEIVER, "serve", "--role", "web", "--reuse-port", "--port", str(self.port)]
        self.webs = [
            ServerProcess(self.env, self.port, cwd=tmp_path, log_path=tmp_path / f"web-{n}.log", argv=argv, name="web")
            for n in range(2)
        ]
        self.workers: list[subprocess.Popen[bytes] | None] = [None, None]
        self.worker_starts = 0

    def log(self, name: str) -> Path:
        return self.tmp_path / name

    async def start_worker(self, slot: int) -> None:
        """Start the worker of `slot`; returns once its task runner runs."""
        self.worker_starts += 1
        log_path = self.log(f"worker-{slot}-{self.worker_starts}.log")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [*RECEIVER, "serve", "--role", "worker"], env=self.env, cwd=self.tmp_path, stdout=log, stderr=log
            )
        self.workers[slot] = proc

        def started() -> bool:
            assert proc.poll() is None, f"worker exited {proc.returncode}:\n{tail(log_path)}"
            return f"receiver worker started (pid {proc.pid})" in log_path.read_text(errors="replace")

        await until(started, timeout_s=30, what=f"worker {slot} started")  # as ServerProcess.start

    async def start_web(self, slot: int) -> None:
        """Start the web process of `slot`; returns once it listens (its own log says so: the port may be
        answered by the other one already)."""
        web = self.webs[slot]
        await web.start()
        assert web.proc is not None
        line = f"receiver web listening on 127.0.0.1:{self.port}"

        def listening() -> bool:
            assert web.alive, f"web {slot} exited:\n{tail(web.log_path)}"
            return web.log_path.read_text(errors="replace").count(line) == web.starts

        await until(listening, timeout_s=30, what=f"web {slot} listening")

    async def kill_worker(self, slot: int) -> None:
        proc = self.workers[slot]
        assert proc is not None and proc.poll() is None
        proc.kill()
        await asyncio.to_thread(proc.wait)

    async def stop(self) -> list[int]:
        """SIGTERM to every process still up; their exit codes."""
        codes = []
        for web in self.webs:
            if web.alive:
                codes.append(await web.stop(signal.SIGTERM))
        for proc in self.workers:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                codes.append(await asyncio.to_thread(proc.wait, 60))
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{tail(path)}" for path in sorted(self.tmp_path.glob("*.log")))


@contextlib.asynccontextmanager
async def running_emulators() -> AsyncIterator[tuple[Emulators, str]]:
    emulators = Emulators(
        fal=FalEmulator(FalEmulatorConfig(**FAST)),
        wavespeed=WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST)),
        # StepFun's calls are slow (as its real edits are): the worker is killed while it holds one of them.
        stepfun=StepFunEmulator(StepFunEmulatorConfig(latency_s=1.0)),
        modelverse=ModelverseEmulator(ModelverseEmulatorConfig(latency_s=0.01)),
    )
    try:
        async with running_server(create_emulator_app(emulators=emulators)) as url:
            yield emulators, url
    finally:
        await emulators.aclose()


async def shuffle_faults(emulators: Emulators, rng: random.Random, stop: asyncio.Event) -> None:
    """Re-roll fal's and WaveSpeed's delivery faults every 0.1 s (each job keeps the config it was submitted
    under): duplicate webhooks, late ones, both."""
    while not stop.is_set():
        for emulator in (emulators.fal, emulators.wavespeed):
            assert emulator is not None
            emulator.config = emulator.config.merged(
                {"duplicate_delivery": rng.random() < 0.4, "late_delivery_s": rng.choice((0.0, 0.0, 0.3, 1.5))}
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def create(client: httpx.AsyncClient, n: int, body: dict[str, Any]) -> str:
    """POST /v1/jobs with an idempotency key, again on a cut connection (a web process killed mid-request) or a
    503: one job per key whatever the kills did. Returns the job's id."""
    headers = {"Idempotency-Key": f"proof-{n}"}
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            response = await client.post("/v1/jobs", json=body, headers=headers)
            if response.status_code in (200, 202):
                return str(response.json()["id"])
            assert response.status_code == 503, response.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {n} was never created")


async def create_all(client: httpx.AsyncClient, rng: random.Random) -> list[str]:
    bodies = []
    for n in range(JOBS):
        provider, model, image = MODELS[n % len(MODELS)]
        bodies.append({"provider": provider, "model": model, "input": {"prompt": f"edit {n}", **image}})
    rng.shuffle(bodies)
    gate = asyncio.Semaphore(32)

    async def one(n: int) -> str:
        async with gate:
            return await create(client, n, bodies[n])

    return list(await asyncio.gather(*(one(n) for n in range(JOBS))))


async def _at_least(rows: Awaitable[list[Any]], n: int) -> bool:
    [row] = await rows
    return int(row[0]) >= n


async def leased_by_dead_owners(url: str) -> list[Any]:
    """Tasks leased by an owner whose process holds no liveness lock any more (the test's own SQL on pg_locks:
    an owner's process holds a shared session advisory lock on a key hashed from its name while it lives)."""
    return await read_rows(
        url,
        """SELECT t.id, t.kind, t.lease_owner FROM tasks AS t
           WHERE t.status = 'leased' AND NOT EXISTS (
               SELECT 1 FROM pg_locks AS l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = ((hashtextextended(t.lease_owner, 0) >> 32) & 4294967295)::oid
                 AND l.objid = (hashtextextended(t.lease_owner, 0) & 4294967295)::oid)""",
    )


async def test_two_web_and_two_worker_processes_on_postgres_survive_kill_9(
    tmp_path: Path, postgres_url: str, hook: HookReceiver
) -> None:
    """300 jobs across every provider through 2 `--role web --reuse-port` processes on one port and 2
    `--role worker` processes, fal and WaveSpeed webhooks duplicated and late at random; one worker is
    SIGKILLed while it holds leases and one web process while jobs are created, both restarted. Then:

    - every job is final, with exactly one final event in the events table;
    - the subscriber got, per succeeded job, exactly one `webhook-id` for `job.succeeded` (resends carry the
      same id), none for a job that did not succeed, and every signature verifies;
    - no task stays leased by a dead owner for more than a few lease lengths (checked with the test's own SQL
      on PostgreSQL's locks right after the kill), and in the end no task is pending or leased;
    - every process exits 0 on SIGTERM.
    """
    began = time.monotonic()
    seed = random.randrange(2**32)
    print(f"scale-out seed {seed}")
    rng = random.Random(seed)
    async with running_emulators() as (emulators, emulator_url):
        d = Deployment(tmp_path, postgres_url, emulator_url)
        stop_faults = asyncio.Event()
        faults = asyncio.create_task(shuffle_faults(emulators, rng, stop_faults))
        try:
            await asyncio.gather(d.start_web(0), d.start_web(1), d.start_worker(0), d.start_worker(1))
            async with httpx.AsyncClient(base_url=d.webs[0].url, timeout=10) as client:
                created = await client.post("/v1/subscriptions", json={"kind": "webhook", "url": hook.url})
                assert created.status_code == 201, created.text
                verifier = Webhook(created.json()["secret"])
                up_s = time.monotonic() - began
                creating = asyncio.create_task(create_all(client, rng))

                # kill -9 one web process while jobs are still being created, and restart it on the port
                await until(lambda: _at_least(read_rows(postgres_url, "SELECT COUNT(*) FROM jobs"), 20), what="jobs")
                assert not creating.done(), "the jobs were all created before the web process could be killed"
                await d.webs[1].stop(signal.SIGKILL)
                await d.start_web(1)
                # kill -9 the first worker while it holds leases, and restart it
                worker = d.workers[0]
                assert worker is not None
                held = (postgres_url, HELD_SYNC_CALLS, f"%:{worker.pid}:%")
                await until(lambda: _positive(read_rows(*held)), what="worker 0 inside a StepFun call")
                await d.kill_worker(0)
                killed_at = time.monotonic()
                took_over: list[float] = []
                # from now, a dead owner's leases must go within a few lease lengths (not: wait, then look)
                takeover = asyncio.create_task(
                    until(
                        lambda: _empty(leased_by_dead_owners(postgres_url)),
                        timeout_s=4 * LEASE_S,
                        what="no task leased by the killed worker",
                    )
                )
                takeover.add_done_callback(lambda _: took_over.append(time.monotonic() - killed_at))
                await d.start_worker(0)
                await takeover
                [took_over_s] = took_over
                job_ids = await creating
                assert len(set(job_ids)) == JOBS

                created_s = time.monotonic() - began
                await until(lambda: _zero(read_rows(postgres_url, OPEN_JOBS)), timeout_s=60, what="every job final")
                final_s = time.monotonic() - began
                await until(lambda: _zero(read_rows(postgres_url, BUSY)), timeout_s=30, what="no task left")
                succeeded = {
                    row[0] for row in await read_rows(postgres_url, "SELECT id FROM jobs WHERE status = 'succeeded'")
                }

                def unnotified() -> set[str]:
                    return succeeded - {
                        hook.json["data"]["job"]["id"] for hook in hook.hooks if hook.json["type"] == "job.succeeded"
                    }

                try:
                    await until(
                        lambda: not unnotified(),
                        timeout_s=30,
                        what="a job.succeeded notification for every succeeded job",
                    )
                except AssertionError:
                    raise AssertionError(
                        [await describe(postgres_url, job) for job in sorted(unnotified())[:3]]
                    ) from None
        finally:
            stop_faults.set()
            await faults
            codes = await d.stop()
        assert codes == [0] * 4, d.logs()

    # one final transition per job, in the events table
    finals = await read_rows(postgres_url, FINAL_EVENTS)
    per_job = {row[0]: row[1] for row in finals}
    assert set(per_job) == set(job_ids), "a job without a final event"
    assert {n for n in per_job.values()} == {1}, [job for job, n in per_job.items() if n != 1]
    jobs = {row[0]: row[1] for row in await read_rows(postgres_url, "SELECT id, status FROM jobs")}
    assert set(jobs) == set(job_ids)
    # one job.succeeded webhook-id per succeeded job, every signature good
    ids: dict[str, set[str]] = {}
    for received in hook.hooks:
        verifier.verify(received.body, dict(received.headers))
        if received.json["type"] == "job.succeeded":
            ids.setdefault(received.json["data"]["job"]["id"], set()).add(received.headers["webhook-id"])
    assert set(ids) == succeeded
    assert all(len(webhook_ids) == 1 for webhook_ids in ids.values()), {j: i for j, i in ids.items() if len(i) > 1}
    assert len({next(iter(webhook_ids)) for webhook_ids in ids.values()}) == len(ids)
    # the run proves something only if most jobs went through and the faults and kills landed
    failures = await read_rows(postgres_url, FAILURES)
    statuses = Counter(jobs.values())
    assert statuses["succeeded"] >= JOBS * 0.9, (statuses, failures)
    errors = Counter(json.loads(row[1])["code"] for row in failures)
    # Only a provider call cut by the kill may fail: its outcome is unknown (never sent twice), or for a queue
    # provider the submit may never have left, so no webhook ever comes and the job times out.
    # The web kill may cut WaveSpeed's download of a job's input from our public URL: WaveSpeed fails that
    # prediction (1402), as it would in production.
    input_cut = {"wavespeed_1402"}
    uncut = [row[0] for row in failures if row[2] == 0 and json.loads(row[1])["code"] not in input_cut]
    assert len(failures) == statuses["failed"] and not uncut, [await describe(postgres_url, job) for job in uncut]
    assert set(errors) <= {"provider_outcome_unknown", "timeout", *input_cut}, errors
    interrupted = await read_rows(postgres_url, "SELECT kind, COUNT(*) FROM tasks WHERE interrupted > 0 GROUP BY kind")
    assert interrupted, "no task was taken over: the worker was killed while it ran none"
    sent = [*emulators.fal.requests.values(), *emulators.wavespeed.predictions.values()]  # type: ignore[union-attr]
    duplicates = sum(1 for job in sent if any(a.delivery == 2 and a.ok for a in job.deliveries))
    late = sum(1 for job in sent if job.config.late_delivery_s > 0)
    assert duplicates and late, (duplicates, late)
    print(
        f"scale-out: {dict(statuses)} ({dict(errors)}), tasks taken over { {row[0]: row[1] for row in interrupted} }, "
        f"{duplicates} duplicate and {late} late provider webhooks, "
        f"{len(hook.hooks)} notifications; dead owner's leases gone {took_over_s:.2f} s after its kill; "
        f"up by {up_s:.1f} s, created by {created_s:.1f} s, all final by {final_s:.1f} s, "
        f"wall time {time.monotonic() - began:.1f} s"
    )


async def describe(url: str, job_id: str) -> dict[str, Any]:
    """A job's row, tasks, events and inbox rows, for a failure message."""
    [job] = await read_rows(url, "SELECT * FROM jobs WHERE id = ?", job_id)
    tasks = await read_rows(url, "SELECT * FROM tasks WHERE job_id = ? ORDER BY id", job_id)
    events = await read_rows(url, "SELECT type, created_at, id FROM events WHERE job_id = ? ORDER BY seq", job_id)
    inbox = await read_rows(url, "SELECT kind, outcome, received_at FROM inbox WHERE job_id = ? ORDER BY id", job_id)
    deliveries = await read_rows(
        url, "SELECT d.* FROM deliveries AS d JOIN events AS e ON e.id = d.event_id WHERE e.job_id = ?", job_id
    )
    drop = ("input", "result", "provider_result")
    return {
        "job": {k: v for k, v in dict(job).items() if k not in drop},
        "tasks": [dict(task) for task in tasks],
        "events": [tuple(event) for event in events],
        "inbox": [tuple(row) for row in inbox],
        "deliveries": [dict(row) for row in deliveries],
    }


async def _count(rows: Any) -> int:
    [row] = await rows
    return int(row[0])


async def _positive(rows: Any) -> bool:
    return await _count(rows) > 0


async def _zero(rows: Any) -> bool:
    return await _count(rows) == 0


async def _empty(rows: Any) -> bool:
    return not await rows
