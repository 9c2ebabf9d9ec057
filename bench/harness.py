"""The crash harness: `receiver serve` under load and hostile webhooks, killed with SIGKILL and restarted.

One run (`run_chaos`):

1. In this process: the fal emulator (real Ed25519-signed webhooks with fal's retry policy, its delays
   shrunk by `time_scale`; duplicate, late, dropped deliveries and model errors switched at random as jobs
   come in) and a subscriber app that verifies every Standard Webhooks signature and records what came.
2. `receiver serve` in a subprocess on a fixed loopback port, with short leases and a fast reconciler.
3. Load: jobs created through `POST /v1/jobs` (both fal models, a tiny data-URI image). Meanwhile a
   hostile sender posts forged webhooks (a key not in the JWKS), stale ones (valid signature, 10 min
   old), wrong-token ones, validly signed ones for another job's request, and replays of genuine
   webhooks (duplicates, and reordered ahead of late deliveries); a watcher polls the API and checks
   that no job's status ever moves backwards.
4. Chaos: SIGKILL the server at random moments and restart it at once on the same port.
5. Settle (bounded), stop the server with SIGTERM, read the SQLite file and check every invariant
   (`evaluate`); `ChaosReport.table()` prints the counts.

Only 127.0.0.1 is used. `tests/test_crash.py` runs it small; `python -m bench.chaos` runs it long.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig, FalRequest, RequestStatus
from receiver.emulators.fal_delivery import webhook_body
from receiver.emulators.fal_requests import DELIVERY_DONE
from receiver.errors import SignatureError
from receiver.ingest.signatures import job_token, sign_fal
from receiver.notify.signing import verify
from receiver.web.asgi_server import bind_socket, running_server

MODELS = ("fal-ai/stepx-edit2", "fal-ai/fast-sdxl/image-to-image")
PROMPTS = ("make it red", "blur it", "flip it", "black and white", "sketch it", "make it blue")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
OPEN = ("pending", "submitted", "running")
RANK = {"pending": 0, "submitted": 1, "running": 2, "succeeded": 3, "failed": 3, "cancelled": 3}
SECRET_KEY = "chaos-harness-secret-key"  # fixed, so the harness can mint job tokens (bench/** allows S105)
FAL_KEY = "chaos-harness-fal-key"
MARKER = "chaos-forged"  # in every body the hostile sender makes up; must never reach the database
HOSTILE_WEIGHTS = {"forged": 3, "stale": 2, "wrong_token": 2, "mismatched": 1, "replay": 3}
EXPECTED_REFUSAL = {"forged": 401, "stale": 401, "wrong_token": 403, "mismatched": 409}
SUBSCRIPTIONS = {"all": None, "succeeded": ["job.succeeded"]}  # subscriber path -> events (None: all)


@dataclass
class ChaosOptions:
    """Knobs of one run. The test keeps it under a minute; `bench.chaos` turns it up."""

    workdir: Path
    jobs: int = 30
    duration_s: float = 15.0  # load and kills happen in this window
    kills: int = 3
    seed: int = 0
    settle_s: float = 40.0  # bound on waiting for everything to finish after the window
    job_timeout_s: float = 20.0  # a submit cut by a kill is never resent: the job timeout ends it
    create_window: float = 0.8  # jobs are created during this first fraction of the window
    hostile_per_s: float = 20.0
    flaky_subscriber: float = 0.1  # fraction of notifications the subscriber answers with 503
    time_scale: float = 0.002  # shrinks the emulator's webhook retry delays (15 s doubling)
    min_up_s: float = 1.0  # least time the server runs between two kills
    aim_s: float = 1.5  # from a kill's random moment, wait up to this long for a task in flight
    log: Callable[[str], None] = field(default=lambda line: None)


# --------------------------------------------------------------------------------------------------
# the pieces


def tiny_png() -> str:
    """A 24x24 gradient PNG as a data URI: small, so the emulator's real Pillow edits are instant."""
    image = Image.new("RGB", (24, 24))
    image.putdata([(x * 10, y * 10, 128) for y in range(24) for x in range(24)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def server_env(workdir: Path, *, port: int, emulator_url: str, job_timeout_s: float) -> dict[str, str]:
    """The subprocess environment: the caller's, minus any RECEIVER_* or provider key, plus the run's."""
    dropped = ("FAL_KEY", "WAVESPEED_API_KEY", "STEP_API_KEY", "MODELVERSE_API_KEY")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_") and k not in dropped}
    env.update(
        RECEIVER_DATABASE_URL=f"sqlite:///{workdir / 'receiver.db'}",
        RECEIVER_DATA_DIR=str(workdir),
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_SECRET_KEY=SECRET_KEY,
        RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
        RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
        RECEIVER_FETCH_ALLOW_PRIVATE="true",
        RECEIVER_FETCH_ALLOWED_HOSTS="127.0.0.1",
        RECEIVER_NOTIFY_ALLOW_PRIVATE="true",
        RECEIVER_NOTIFY_RETRY_SCALE="0.001",
        RECEIVER_RECONCILE_AFTER_S="2",
        RECEIVER_RECONCILE_INTERVAL_S="0.5",
        RECEIVER_POLL_INTERVAL_S="1",
        RECEIVER_TASK_LEASE_S="3",
        RECEIVER_TASK_POLL_INTERVAL_S="0.1",
        RECEIVER_JOB_TIMEOUT_S=f"{job_timeout_s:g}",
        RECEIVER_LOG_LEVEL="warning",
        FAL_KEY=FAL_KEY,
    )
    return env


class ServerProcess:
    """`receiver serve` in a subprocess on a fixed port; killed and restarted on the same port."""

    def __init__(self, env: dict[str, str], port: int, *, cwd: Path, log_path: Path) -> None:
        self.env, self.port, self.cwd, self.log_path = env, port, cwd, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_s: list[float] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout_s: float = 30.0) -> None:
        began = time.monotonic()
        command = [sys.executable, "-m", "receiver", "serve", "--port", str(self.port)]
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            # Popen returns at once, so it does not block the loop; cwd keeps a stray .env out.
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        break
                if self.proc.poll() is not None:
                    raise RuntimeError(f"receiver serve exited during start-up; see {self.log_path}")
                if time.monotonic() - began > timeout_s:
                    raise RuntimeError(f"receiver serve did not answer /healthz in {timeout_s:g} s")
                await asyncio.sleep(0.02)
        self.start_s.append(time.monotonic() - began)

    async def stop(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> int:
        """Send `sig` and wait for the exit (in a thread: the loop keeps serving the emulator meanwhile)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            raise


@dataclass
class Receipt:
    subscription: str
    webhook_id: str
    event_type: str
    job_id: str
    job_status: str
    images_status: str | None
    answered: int


class Subscriber:
    """Standard Webhooks receiver: verifies each notification with its subscription's secret, records it,
    and answers 503 to a random fraction (the receiver must retry with the same `webhook-id`)."""

    def __init__(self, rng: random.Random, flaky: float) -> None:
        self.rng = rng
        self.flaky = flaky
        self.secrets: dict[str, str] = {}
        self.receipts: list[Receipt] = []
        self.refused: list[str] = []  # bad or missing signatures
        self.app = Starlette(routes=[Route("/hooks/{name}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        secret = self.secrets.get(name)
        try:
            if secret is None:
                raise SignatureError("unknown subscription path")
            verify(secret, request.headers, body, now=time.time())
            event = json.loads(body)
            job = event["data"]["job"]
        except (SignatureError, ValueError, KeyError, TypeError) as exc:
            self.refused.append(f"{name}: {exc}")
            return Response(status_code=401)
        # Slow now and then, so that some deliveries are in flight when the server is killed.
        await asyncio.sleep(self.rng.uniform(0.1, 0.3) if self.rng.random() < 0.1 else self.rng.uniform(0, 0.03))
        status = 503 if self.rng.random() < self.flaky else 200
        receipt = Receipt(
            name,
            request.headers["webhook-id"],
            event["type"],
            job["id"],
            job["status"],
            job.get("images_status"),
            status,
        )
        self.receipts.append(receipt)
        return Response(status_code=status)


class Watcher:
    """Polls `GET /v1/jobs` and checks every job's status only moves forward and its request id never changes."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.bound: dict[str, str] = {}  # job id -> provider_request_id, once the API showed one
        self.violations: list[str] = []
        self.polls = 0
        self.failed_polls = 0
        self.changes = 0

    def observe(self, job: dict[str, Any]) -> None:
        job_id, status, request_id = job["id"], job["status"], job.get("provider_request_id")
        before = self.last.get(job_id)
        if before is not None and before != status:
            self.changes += 1
            if before in TERMINAL or RANK[status] < RANK[before]:
                self.violations.append(f"job {job_id} moved backwards or out of a final state: {before} -> {status}")
        if before is None or before != status:
            self.last[job_id] = status
        bound = self.bound.get(job_id)
        if request_id:
            if bound is not None and bound != request_id:
                self.violations.append(f"job {job_id} changed its provider request id: {bound} -> {request_id}")
            self.bound[job_id] = request_id
        elif bound is not None:
            self.violations.append(f"job {job_id} lost its provider request id {bound}")

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        cursor: str | None = None
        for _ in range(100):  # bounded paging
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/jobs", params=params)
            if response.status_code != 200:
                self.failed_polls += 1
                return
            page = response.json()
            for job in page["jobs"]:
                self.observe(job)
            cursor = page["next_cursor"]
            if not cursor:
                break
        self.polls += 1

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once(client)
            except httpx.TransportError:
                self.failed_polls += 1  # the server is down (killed) right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.15)


@dataclass
class Sent:
    """One webhook the hostile sender posted, and what came back."""

    kind: str
    job_id: str
    request_id: str
    status_code: int | None
    result: str | None = None  # the receiver's `status` field on a 2xx (applied, recorded, duplicate)
    error: str | None = None


def target_of(request: FalRequest) -> tuple[str, str]:
    """(job id, token) from the webhook URL the receiver handed the emulator."""
    assert request.webhook_url is not None
    parts = urlsplit(request.webhook_url)
    return parts.path.rsplit("/", 1)[1], parse_qs(parts.query)["token"][0]


class Hostile:
    """Posts forged, stale, wrong-token, mismatched and replayed fal webhooks at the receiver."""

    def __init__(
        self, rng: random.Random, emulator: FalEmulator, key: Ed25519PrivateKey, server: ServerProcess, watcher: Watcher
    ) -> None:
        self.rng = rng
        self.emulator = emulator
        self.key = key
        self.rogue = Ed25519PrivateKey.generate()  # not in the JWKS
        self.server = server
        self.watcher = watcher
        self.secret = SECRET_KEY.encode()
        self.sent: list[Sent] = []
        self.forged_bodies: set[bytes] = set()
        self.harness_errors: list[str] = []
        self._serial = 0

    def _forged(self, kind: str, request_id: str) -> bytes:
        """A made-up ERROR completion for a real request: applied, it would fail the job."""
        self._serial += 1
        note = f"{MARKER} {kind} #{self._serial}"
        document = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "error": note,
            "payload": {"detail": [{"loc": ["body", "prompt"], "msg": note, "type": MARKER}]},
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        self.forged_bodies.add(body)
        return body

    def _headers(self, key: Ed25519PrivateKey, request_id: str, body: bytes, *, age_s: int = 0) -> dict[str, str]:
        user_id = self.emulator.config.user_id
        headers = sign_fal(key, request_id=request_id, user_id=user_id, timestamp=int(time.time()) - age_s, body=body)
        headers["Content-Type"] = "application/json"
        return headers

    def pick(self) -> tuple[str, str, str, bytes, dict[str, str]] | None:
        """(kind, job id, token, body, headers) of the next hostile webhook, or None when no target exists yet."""
        requests = [r for r in list(self.emulator.requests.values()) if r.webhook_url]
        if not requests:
            return None
        kinds = list(HOSTILE_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[HOSTILE_WEIGHTS[k] for k in kinds])[0]
        request = self.rng.choice(requests)
        job_id, token = target_of(request)
        if token != job_token(self.secret, "fal", job_id):
            self.harness_errors.append(f"the webhook URL token of {job_id} is not job_token(secret, 'fal', id)")
        rid = request.request_id
        if kind == "replay":
            done = [r for r in requests if r.status is RequestStatus.COMPLETED]
            if not done:
                return None
            request = self.rng.choice(done)
            job_id, token = target_of(request)
            body = webhook_body(request)  # byte for byte what the emulator sends
            return kind, job_id, token, body, self._headers(self.key, request.request_id, body)
        if kind == "forged":
            body = self._forged(kind, rid)
            return kind, job_id, token, body, self._headers(self.rogue, rid, body)
        if kind == "stale":
            body = self._forged(kind, rid)
            return kind, job_id, token, body, self._headers(self.key, rid, body, age_s=600)
        if kind == "wrong_token":
            other = f"job_{self.rng.getrandbits(64):016x}"
            wrong = job_token(self.secret, "fal", other) if self.rng.random() < 0.5 else token[::-1]
            body = self._forged(kind, rid)
            return kind, job_id, wrong, body, self._headers(self.key, rid, body)
        # mismatched: validly signed, the right token, but another job's request; only once the target job
        # is bound (the API showed its request id), so the refusal is deterministic.
        bound = list(self.watcher.bound.items())
        if len(bound) < 2:
            return None
        (job_id, own), (_, foreign) = self.rng.sample(bound, 2)
        if own == foreign:
            return None
        body = self._forged(kind, foreign)
        return kind, job_id, job_token(self.secret, "fal", job_id), body, self._headers(self.key, foreign, body)

    async def send(self, client: httpx.AsyncClient) -> None:
        picked = self.pick()
        if picked is None:
            return
        kind, job_id, token, body, headers = picked
        request_id = headers["X-Fal-Webhook-Request-Id"]
        url = f"{self.server.url}/webhooks/fal/{job_id}?{urlencode({'token': token})}"
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            self.sent.append(Sent(kind, job_id, request_id, None, error=type(exc).__name__))
            return
        result = None
        if 200 <= response.status_code < 300:
            with contextlib.suppress(ValueError, AttributeError):
                result = response.json().get("status")
        self.sent.append(Sent(kind, job_id, request_id, response.status_code, result=result))

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event, per_s: float) -> None:
        slots = asyncio.Semaphore(8)
        running: set[asyncio.Task[None]] = set()

        async def one() -> None:
            async with slots:
                await self.send(client)

        while not stop.is_set():
            task = asyncio.create_task(one())
            running.add(task)
            task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(per_s))
        await asyncio.gather(*running, return_exceptions=True)


async def shuffle_faults(emulator: FalEmulator, rng: random.Random, stop: asyncio.Event) -> None:
    """Re-roll the emulator's delivery faults every 0.2 s: each request keeps the config it was submitted
    under, so the load gets a mix of duplicate, late and dropped webhooks and model errors."""
    while not stop.is_set():
        emulator.config = emulator.config.merged(
            {
                "duplicate_delivery": rng.random() < 0.5,
                "late_delivery_s": rng.choice((0.0, 0.0, 0.0, 0.3, 1.0, 3.0)),
                "no_delivery": rng.random() < 0.08,
                "model_error": rng.random() < 0.08,
            }
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


@dataclass
class Load:
    acked: dict[str, int] = field(default_factory=dict)  # job id -> sequence number
    unknown: int = 0  # the request may have reached the server, but no answer came (killed mid-call)
    refused: list[str] = field(default_factory=list)
    connect_retries: int = 0


async def create_jobs(client: httpx.AsyncClient, options: ChaosOptions, rng: random.Random, load: Load) -> None:
    """Create `options.jobs` jobs at random moments in the first part of the window, concurrently.
    A connection refused (server down) is retried; a request cut after sending is not (it may exist)."""
    image = tiny_png()
    started = time.monotonic()
    window = options.duration_s * options.create_window
    moments = sorted(rng.uniform(0, window) for _ in range(options.jobs))

    async def create(seq: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
        model = MODELS[seq % 2]
        data: dict[str, Any] = {"prompt": rng.choice(PROMPTS), "image_url": image}
        if model == MODELS[1]:
            data["image_size"] = {"width": 64, "height": 64}
        body = {"provider": "fal", "model": model, "input": data, "metadata": {"chaos_seq": seq}}
        for _ in range(300):  # bounded: about 30 s of connection refusals
            try:
                response = await client.post("/v1/jobs", json=body)
            except httpx.ConnectError:
                load.connect_retries += 1
                await asyncio.sleep(0.1)
                continue
            except httpx.TransportError:
                load.unknown += 1
                return
            if response.status_code == 202:
                load.acked[response.json()["id"]] = seq
            else:
                load.refused.append(f"{response.status_code} {response.text[:200]}")
            return
        load.refused.append("server unreachable for 30 s")

    await asyncio.gather(*(create(seq, at) for seq, at in enumerate(moments)))


def leased_kinds(db_path: Path) -> list[str]:
    """The kinds of the tasks leased right now (a handler is running them)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return [row[0] for row in conn.execute("SELECT kind FROM tasks WHERE status = 'leased'")]
    finally:
        conn.close()


async def kill_at_random(
    server: ServerProcess, options: ChaosOptions, rng: random.Random, db_path: Path
) -> list[tuple[float, list[str]]]:
    """SIGKILL the server at `kills` random moments of the window, restarting it at once each time.

    From each moment the killer waits up to `aim_s` for a task to be leased, so most kills land in the
    middle of a handler (a submit, an image fetch, a delivery) rather than on an idle server."""
    started = time.monotonic()
    moments = sorted(rng.uniform(0.5, max(0.6, options.duration_s - 0.5)) for _ in range(options.kills))
    up_since = started
    kills: list[tuple[float, list[str]]] = []
    for moment in moments:
        now = time.monotonic()
        await asyncio.sleep(max(0.0, max(started + moment, up_since + options.min_up_s) - now))
        aim_until = time.monotonic() + options.aim_s
        leased: list[str] = []
        while time.monotonic() < aim_until:
            with contextlib.suppress(sqlite3.Error):
                leased = await asyncio.to_thread(leased_kinds, db_path)
            if leased:
                break
            await asyncio.sleep(0.003)
        await server.stop(signal.SIGKILL)
        kills.append((round(time.monotonic() - started, 2), sorted(leased)))
        options.log(f"  kill -9 at t={kills[-1][0]:.2f}s with {', '.join(leased) or 'no task'} leased; restarting")
        await server.start()
        up_since = time.monotonic()
    return kills


# --------------------------------------------------------------------------------------------------
# the database, read directly (read-only) with the stdlib


@dataclass
class Snapshot:
    jobs: dict[str, dict[str, Any]]
    inbox: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    events: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    images: list[dict[str, Any]]
    job_images: list[dict[str, Any]]


def read_db(path: Path) -> Snapshot:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:

        def rows(sql: str) -> list[dict[str, Any]]:
            return [dict(row) for row in conn.execute(sql)]

        jobs = rows(
            "SELECT id, status, provider_request_id, error, images_status, images_error, metadata, created_at,"
            " completed_at FROM jobs"
        )
        return Snapshot(
            jobs={job["id"]: job for job in jobs},
            inbox=rows("SELECT provider, kind, dedup_key, job_id, body, outcome FROM inbox"),
            tasks=rows("SELECT id, kind, job_id, status, attempts, last_error, interrupted FROM tasks"),
            events=rows("SELECT id, type, job_id FROM events"),
            deliveries=rows("SELECT id, event_id, subscription_id, webhook_id, status, attempts FROM deliveries"),
            images=rows("SELECT sha256, thumbnail_sha256 FROM images"),
            job_images=rows("SELECT job_id, role, position, sha256, error FROM job_images"),
        )
    finally:
        conn.close()


def error_code(job: dict[str, Any]) -> str | None:
    if not job["error"]:
        return None
    with contextlib.suppress(ValueError, AttributeError):
        code = json.loads(job["error"]).get("code")
        return str(code) if code is not None else None
    return None


# --------------------------------------------------------------------------------------------------
# the report


@dataclass
class ChaosReport:
    seed: int
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    kills_mid_task: int = 0  # SIGKILLs that landed while a task was leased
    hostile_refused: int = 0  # forged, stale, wrong-token and mismatched webhooks answered with their refusal

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, section: str, name: str, value: Any) -> None:
        self.counts.setdefault(section, {})[name] = value

    def table(self) -> str:
        width = max((len(name) for values in self.counts.values() for name in values), default=10)
        lines = [f"chaos run: seed {self.seed}, {self.elapsed_s:.1f} s"]
        for section, values in self.counts.items():
            lines.append(f"[{section}]")
            lines.extend(f"  {name:<{width}}  {value}" for name, value in values.items())
        if self.violations:
            lines.append(f"VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"  - {violation}" for violation in self.violations[:60])
            if len(self.violations) > 60:
                lines.append(f"  ... and {len(self.violations) - 60} more")
        else:
            lines.append("every invariant held")
        return "\n".join(lines)


def status_class(code: int | None) -> str:
    return "no answer" if code is None else f"{code // 100}xx"


@dataclass
class World:
    """Everything a run observed, for `evaluate`."""

    options: ChaosOptions
    emulator: FalEmulator
    subscriber: Subscriber
    subscription_ids: dict[str, str]
    hostile: Hostile
    watcher: Watcher
    load: Load
    server: ServerProcess
    killed_at: list[tuple[float, list[str]]]
    exit_code: int | None
    settled: bool
    settle_s: float
    snapshot: Snapshot


def evaluate(world: World, report: ChaosReport) -> None:
    """Check every invariant against what the run saw and what the database holds; fill in the counts."""
    db, emu, sub, hostile, load = world.snapshot, world.emulator, world.subscriber, world.hostile, world.load
    v = report.violations
    v.extend(world.watcher.violations)
    v.extend(hostile.harness_errors)

    # --- the run
    report.count("run", "seed", report.seed)
    report.count("run", "kills (SIGKILL) at s", ", ".join(f"{t:.1f}" for t, _ in world.killed_at) or "-")
    mid_task = [kinds for _, kinds in world.killed_at if kinds]
    report.kills_mid_task = len(mid_task)
    report.count("run", "kills with a task leased", f"{len(mid_task)} of {len(world.killed_at)}")
    report.count("run", "task kinds leased at kills", dict(Counter(k for kinds in mid_task for k in kinds)) or "-")
    report.count("run", "server starts", world.server.starts)
    report.count("run", "start-up time s (max)", f"{max(world.server.start_s, default=0):.2f}")
    report.count("run", "settled within bound", f"{world.settled} ({world.settle_s:.1f} s)")
    report.count("run", "final SIGTERM exit code", world.exit_code)
    if not world.settled:
        v.append(f"the run did not settle within {world.options.settle_s:g} s (see the counts)")
    if world.exit_code != 0:
        v.append(f"receiver serve exited with {world.exit_code} on SIGTERM (expected 0)")

    # --- jobs
    jobs = db.jobs
    by_status = Counter(job["status"] for job in jobs.values())
    report.count("jobs", "created (202 seen)", len(load.acked))
    report.count("jobs", "create cut by a kill", load.unknown)
    report.count("jobs", "create refused", len(load.refused))
    report.count("jobs", "in database", len(jobs))
    for status in ("succeeded", "failed", "cancelled", *OPEN):
        report.count("jobs", status, by_status.get(status, 0))
    failed_codes = Counter(error_code(job) for job in jobs.values() if job["status"] == "failed")
    report.count("jobs", "failed by code", dict(failed_codes) or "-")
    images = Counter(job["images_status"] for job in jobs.values() if job["status"] == "succeeded")
    report.count("jobs", "succeeded: images stored", images.get("stored", 0))
    report.count("jobs", "status changes watched", world.watcher.changes)
    report.count("jobs", "API polls ok / failed", f"{world.watcher.polls} / {world.watcher.failed_polls}")
    v.extend(f"job create refused: {reason}" for reason in load.refused)
    for job_id in load.acked:
        if job_id not in jobs:
            v.append(f"job {job_id} was acknowledged with 202 but is not in the database")
    for job in jobs.values():
        if job["status"] not in TERMINAL:
            v.append(f"job {job['id']} never reached a final state (still {job['status']})")
        seen = world.watcher.last.get(job["id"])
        if seen in TERMINAL and seen != job["status"]:
            v.append(f"job {job['id']} was {seen} in the API but ends {job['status']}")
        if MARKER in str(job["error"] or ""):
            v.append(f"job {job['id']} carries a forged error: {job['error']}")
        if job["status"] == "succeeded" and job["images_status"] != "stored":
            v.append(f"job {job['id']} succeeded but images are {job['images_status']}: {job['images_error']}")

    # --- the emulator and what it delivered
    requests = [r for r in emu.requests.values() if r.webhook_url]
    by_job: defaultdict[str, list[FalRequest]] = defaultdict(list)
    for request in requests:
        by_job[target_of(request)[0]].append(request)
    attempts = [a for r in requests for a in r.deliveries]
    report.count("emulator", "requests (submits reaching fal)", len(requests))
    report.count("emulator", "with duplicate delivery", sum(r.config.duplicate_delivery for r in requests))
    report.count("emulator", "with late delivery", sum(r.config.late_delivery_s > 0 for r in requests))
    report.count("emulator", "with no delivery", sum(r.config.no_delivery for r in requests))
    report.count("emulator", "with model error", sum(r.failure is not None for r in requests))
    report.count("emulator", "delivery attempts", len(attempts))
    for name, n in sorted(Counter(status_class(a.status_code) for a in attempts).items()):
        report.count("emulator", f"  answered {name}", n)
    report.count("emulator", "deliveries given up", sum(r.delivery_state.value == "gave_up" for r in requests))
    for request in requests:
        if request.status is not RequestStatus.COMPLETED or request.delivery_state not in DELIVERY_DONE:
            v.append(f"emulator request {request.request_id} unfinished: {request.status} {request.delivery_state}")
    for job_id, reqs in by_job.items():
        if len(reqs) > 1:
            v.append(f"job {job_id} was submitted to fal {len(reqs)} times (a submit was resent)")
        if job_id not in jobs:
            v.append(f"fal got a submit for job {job_id}, which is not in the database")

    # --- who got a 2xx for which fal request, and what the inbox holds
    acked_2xx: dict[str, list[str]] = defaultdict(list)  # request id -> senders that got a 2xx
    for request in requests:
        if any(a.ok for a in request.deliveries):
            acked_2xx[request.request_id].append("emulator")
    replays = [s for s in hostile.sent if s.kind == "replay"]
    for sent in replays:
        if sent.status_code is not None and 200 <= sent.status_code < 300:
            acked_2xx[sent.request_id].append("replay")
    genuine = {r.request_id: r for r in requests}
    webhook_rows: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in db.inbox:
        if row["provider"] == "fal" and row["kind"] == "webhook":
            webhook_rows[row["dedup_key"]].append(row)
    report.count("inbox", "rows by kind", dict(Counter(row["kind"] for row in db.inbox)) or "-")
    report.count("inbox", "fal requests with a 2xx", len(acked_2xx))
    report.count("inbox", "fal requests with a webhook row", len(webhook_rows))
    dupes = Counter((row["provider"], row["kind"], row["dedup_key"]) for row in db.inbox)
    for key, n in dupes.items():
        if n > 1:
            v.append(f"inbox holds {n} rows for {key}")
    for request_id, senders in acked_2xx.items():
        rows = webhook_rows.get(request_id, [])
        if len(rows) != 1:
            v.append(f"fal request {request_id} got a 2xx ({', '.join(sorted(set(senders)))}) but has {len(rows)} rows")
    for request_id, rows in webhook_rows.items():
        sender = genuine.get(request_id)
        if sender is None:
            v.append(f"inbox has a webhook for unknown fal request {request_id}")
            continue
        for row in rows:
            if bytes(row["body"]) != webhook_body(sender):
                v.append(f"inbox body of {request_id} is not the body fal sent (forged or re-serialised)")
            if row["job_id"] != target_of(sender)[0]:
                v.append(f"inbox row of {request_id} is bound to {row['job_id']}, not {target_of(sender)[0]}")
    for row in db.inbox:
        body = bytes(row["body"])
        if MARKER.encode() in body or body in hostile.forged_bodies:
            v.append(f"a forged webhook was recorded: {row['kind']} {row['dedup_key']}")

    # --- each job's outcome follows from what fal did
    outcomes: Counter[str] = Counter()
    for job in jobs.values():
        reqs = by_job.get(job["id"], [])
        if not reqs:
            outcomes["never reached fal (submit cut by a kill): failed"] += job["status"] == "failed"
            if job["status"] != "failed":
                v.append(f"job {job['id']} never reached fal but ends {job['status']}")
            continue
        request = reqs[0]
        bound = job["provider_request_id"]
        if bound not in (None, request.request_id):
            v.append(f"job {job['id']} is bound to {bound}, but fal ran it as {request.request_id}")
        expected = "failed" if request.failure is not None else "succeeded"
        if bound or request.request_id in acked_2xx:
            outcomes[f"reached fal: {expected}"] += 1
            if job["status"] != expected:
                v.append(f"job {job['id']} ends {job['status']} ({job['error']}); fal's result was {expected}")
        else:
            # The submit answer was lost to a kill and no webhook got through: the job can only time out.
            outcomes["reached fal, answer lost, no webhook: timed out"] += 1
            if job["status"] != "failed" or error_code(job) != "timeout":
                v.append(f"job {job['id']}: unbound and never told, yet ends {job['status']} ({job['error']})")
    for name, n in sorted(outcomes.items()):
        report.count("outcomes", name, n)

    # --- the hostile sender
    for kind in HOSTILE_WEIGHTS:
        mine = [s for s in hostile.sent if s.kind == kind]
        classes = Counter(status_class(s.status_code) for s in mine)
        shown = ", ".join(f"{name} {n}" for name, n in sorted(classes.items())) or "-"
        report.count("hostile", kind, f"{len(mine)} sent: {shown}")
        for sent in mine:
            code = sent.status_code
            if kind == "replay":
                if code is not None and not 200 <= code < 300:
                    v.append(f"a genuine replay for {sent.request_id} was answered {code}")
            elif code is not None and code != EXPECTED_REFUSAL[kind]:
                v.append(f"{kind} webhook for job {sent.job_id} answered {code}, expected {EXPECTED_REFUSAL[kind]}")
    report.hostile_refused = sum(1 for s in hostile.sent if s.status_code == EXPECTED_REFUSAL.get(s.kind))
    results = Counter(s.result for s in replays if s.result)
    report.count("hostile", "replay 2xx results", dict(results) or "-")

    # --- notifications
    accepted = [r for r in sub.receipts if 200 <= r.answered < 300]
    report.count("subscriber", "receipts (raw)", len(sub.receipts))
    report.count("subscriber", "answered 503 on purpose", len(sub.receipts) - len(accepted))
    report.count("subscriber", "accepted", len(accepted))
    ids = Counter((r.subscription, r.webhook_id) for r in accepted)
    report.count("subscriber", "distinct webhook-ids accepted", len(ids))
    report.count("subscriber", "same webhook-id accepted again", sum(n - 1 for n in ids.values()))
    report.count("subscriber", "bad signatures", len(sub.refused))
    v.extend(f"subscriber refused a notification: {reason}" for reason in sub.refused[:20])
    per_job: defaultdict[tuple[str, str], list[Receipt]] = defaultdict(list)
    for receipt in accepted:
        per_job[(receipt.subscription, receipt.job_id)].append(receipt)
    events_per_job = Counter(event["job_id"] for event in db.events)
    for job in jobs.values():
        if job["status"] not in TERMINAL:
            continue
        wanted = f"job.{job['status']}"
        if events_per_job.get(job["id"], 0) != 1:
            v.append(f"job {job['id']} has {events_per_job.get(job['id'], 0)} events, expected 1")
        for name, events in SUBSCRIPTIONS.items():
            got = per_job.get((name, job["id"]), [])
            should = events is None or wanted in events
            distinct = {r.webhook_id for r in got}
            types = {r.event_type for r in got}
            if should and (len(distinct) != 1 or types != {wanted}):
                v.append(f"subscriber {name}: job {job['id']} ({job['status']}) got {sorted(types)} as {distinct}")
            if not should and got:
                v.append(f"subscriber {name}: job {job['id']} got unwanted {sorted(types)}")
            for receipt in got:
                if receipt.job_status != job["status"]:
                    v.append(f"subscriber {name}: job {job['id']} notified as {receipt.job_status}")
                if receipt.event_type == "job.succeeded" and receipt.images_status != "stored":
                    v.append(f"subscriber {name}: job {job['id']} succeeded with images {receipt.images_status}")
    delivery_status = Counter(d["status"] for d in db.deliveries)
    report.count("deliveries", "by status", dict(delivery_status) or "-")
    report.count("deliveries", "attempts (max per delivery)", max((d["attempts"] for d in db.deliveries), default=0))
    for delivery in db.deliveries:
        if delivery["status"] != "delivered":
            v.append(f"delivery {delivery['id']} ends {delivery['status']}")

    # --- stored images: every row's blob (and thumbnail) is on disk, complete, under its own hash
    blobs = world.options.workdir / "blobs"
    outputs = Counter(r["job_id"] for r in db.job_images if r["role"] == "output" and r["sha256"])
    report.count("images", "image rows / job image rows", f"{len(db.images)} / {len(db.job_images)}")
    report.count("images", "temp files left by kills", sum(1 for _ in blobs.rglob(".tmp-*")) if blobs.exists() else 0)
    for image in db.images:
        for digest in filter(None, (image["sha256"], image["thumbnail_sha256"])):
            path = blobs / digest[:2] / digest[2:4] / digest
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                v.append(f"blob {digest} is missing or corrupt")
    for job in jobs.values():
        if job["status"] == "succeeded" and not outputs.get(job["id"]):
            v.append(f"job {job['id']} succeeded without a stored output image")

    # --- tasks
    task_status = Counter(t["status"] for t in db.tasks)
    report.count("tasks", "by status", dict(task_status) or "-")
    report.count("tasks", "by kind", dict(Counter(t["kind"] for t in db.tasks)) or "-")
    report.count("tasks", "taken over after a kill", sum(t["interrupted"] for t in db.tasks))
    for task in db.tasks:
        if task["status"] in ("pending", "leased", "dead"):
            v.append(f"task {task['id']} {task['kind']} ({task['job_id']}) is {task['status']}: {task['last_error']}")


# --------------------------------------------------------------------------------------------------
# settling


def settled(snapshot: Snapshot, emulator: FalEmulator, subscriber: Subscriber) -> tuple[bool, str]:
    """Whether nothing is left to happen: every job final, images handled, every task and delivery done,
    every fal request delivered (or given up), the subscriber told. The string says what is still open."""
    open_jobs = [j for j in snapshot.jobs.values() if j["status"] not in TERMINAL]
    if open_jobs:
        return False, f"{len(open_jobs)} jobs open"
    fetching = [j for j in snapshot.jobs.values() if j["status"] == "succeeded" and j["images_status"] == "pending"]
    if fetching:
        return False, f"{len(fetching)} jobs fetching images"
    busy = [t for t in snapshot.tasks if t["status"] in ("pending", "leased")]
    if busy:
        return False, f"{len(busy)} tasks pending or leased"
    undelivered = [d for d in snapshot.deliveries if d["status"] not in ("delivered", "dead")]
    if undelivered:
        return False, f"{len(undelivered)} deliveries open"
    sending = [r for r in emulator.requests.values() if r.webhook_url and r.delivery_state not in DELIVERY_DONE]
    if sending:
        return False, f"{len(sending)} fal webhooks still being delivered"
    told = {(r.subscription, r.job_id) for r in subscriber.receipts if 200 <= r.answered < 300}
    if len({job_id for _, job_id in told}) < len(snapshot.jobs):
        return False, "the subscriber is still missing notifications"
    return True, "settled"


async def wait_settled(
    db_path: Path, emulator: FalEmulator, subscriber: Subscriber, bound_s: float, log: Callable[[str], None]
) -> tuple[bool, float]:
    began = time.monotonic()
    last_note, said = "", 0.0
    while True:
        snapshot = await asyncio.to_thread(read_db, db_path)
        done, note = settled(snapshot, emulator, subscriber)
        elapsed = time.monotonic() - began
        if done:
            return True, elapsed
        if elapsed > bound_s:
            log(f"  not settled after {bound_s:g} s: {note}")
            return False, elapsed
        if note != last_note and elapsed - said > 2:
            log(f"  settling ({elapsed:.0f} s): {note}")
            last_note, said = note, elapsed
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# one run


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """One chaos run as the module docstring describes; the report says what happened and what broke."""
    began = time.monotonic()
    report = ChaosReport(seed=options.seed)
    rng = random.Random(options.seed)
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    signing_key = Ed25519PrivateKey.generate()
    emulator = FalEmulator(
        FalEmulatorConfig(queue_s=0.05, inference_s=0.1, time_scale=options.time_scale), signing_key=signing_key
    )
    subscriber = Subscriber(random.Random(rng.random()), options.flaky_subscriber)
    watcher = Watcher()
    load = Load()
    stop_load = asyncio.Event()
    exit_code: int | None = None
    killed_at: list[tuple[float, list[str]]] = []
    async with contextlib.AsyncExitStack() as stack:
        emulator_url = await stack.enter_async_context(running_server(create_emulator_app(fal=emulator)))
        subscriber_url = await stack.enter_async_context(running_server(subscriber.app))
        port = free_port()
        env = server_env(workdir, port=port, emulator_url=emulator_url, job_timeout_s=options.job_timeout_s)
        server = ServerProcess(env, port, cwd=workdir, log_path=workdir / "serve.log")
        db_path = workdir / "receiver.db"
        hostile = Hostile(random.Random(rng.random()), emulator, signing_key, server, watcher)

        async def cleanup() -> None:
            if server.alive:
                await server.stop(signal.SIGKILL)

        stack.push_async_callback(cleanup)
        await server.start()
        api = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=10))
        hostile_client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        subscription_ids = {}
        for name, events in SUBSCRIPTIONS.items():
            body: dict[str, Any] = {"kind": "webhook", "url": f"{subscriber_url}/hooks/{name}"}
            if events is not None:
                body["events"] = events
            response = await api.post("/v1/subscriptions", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"creating a subscription failed: {response.status_code} {response.text}")
            created = response.json()
            subscriber.secrets[name] = created["secret"]
            subscription_ids[name] = created["id"]

        options.log(
            f"chaos: {options.jobs} jobs, {options.kills} kills in {options.duration_s:g} s, seed {options.seed}"
        )
        background = [
            asyncio.create_task(shuffle_faults(emulator, random.Random(rng.random()), stop_load)),
            asyncio.create_task(watcher.run(api, stop_load)),
            asyncio.create_task(hostile.run(hostile_client, stop_load, options.hostile_per_s)),
        ]
        window_ends = time.monotonic() + options.duration_s
        try:
            creating = asyncio.create_task(create_jobs(api, options, random.Random(rng.random()), load))
            killed_at = await kill_at_random(server, options, random.Random(rng.random()), db_path)
            await creating
            await asyncio.sleep(max(0.0, window_ends - time.monotonic()))  # hostile traffic fills the window
            stop_load.set()
            await asyncio.gather(*background)
        finally:
            stop_load.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        options.log(f"  load done after {time.monotonic() - began:.1f} s; settling")
        quiet = asyncio.Event()
        final_watch = asyncio.create_task(watcher.run(api, quiet))  # keep checking monotonicity while settling
        try:
            ok, settle_s = await wait_settled(db_path, emulator, subscriber, options.settle_s, options.log)
        finally:
            quiet.set()
            await final_watch
        with contextlib.suppress(httpx.TransportError):
            await watcher.poll_once(api)
        exit_code = await server.stop(signal.SIGTERM)
        snapshot = await asyncio.to_thread(read_db, db_path)
        world = World(
            options, emulator, subscriber, subscription_ids, hostile, watcher, load, server,
            killed_at, exit_code, ok, settle_s, snapshot,
        )  # fmt: skip
        evaluate(world, report)
    report.elapsed_s = time.monotonic() - began
    report.count("run", "wall time s", f"{report.elapsed_s:.1f}")
    return report


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file (the server's output), for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
