"""What `bench.e2e` and the crash harness both run: the fal emulator (in this process, or one already served
elsewhere) and a signature-checking subscriber in this process, `receiver serve` in a subprocess configured
against them, and the jobs they send it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.processes import ServerProcess, clean_env, held_port
from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator
from receiver.errors import SignatureError
from receiver.notify.signing import verify
from receiver.web.asgi_server import running_server

MODELS = ("fal-ai/stepx-edit2", "fal-ai/fast-sdxl/image-to-image")
SECRET_KEY = "chaos-harness-secret-key"  # fixed, so the harness can mint job tokens (bench/** allows S105)
FAL_KEY = "chaos-harness-fal-key"
JOB_TIMEOUT_ENV = "RECEIVER_JOB_TIMEOUT_S"  # the killer lengthens it at each restart (bench/actors.py)


def tiny_png(variant: int = 0) -> str:
    """A 24x24 gradient PNG as a data URI: small, so the emulator's real Pillow edits are instant. Each
    `variant` is a different image (so are the edits of it), as a stream of real jobs would be."""
    image = Image.new("RGB", (24, 24))
    image.putdata([(x * 10, y * 10, 128) for y in range(24) for x in range(24)])
    image.putpixel((variant % 24, (variant // 24) % 24), (variant % 256, (variant // 576) % 256, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def job_body(model: str, prompt: str, image: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `POST /v1/jobs` body for one of the two fal `MODELS`."""
    data: dict[str, Any] = {"prompt": prompt, "image_url": image}
    if model == MODELS[1]:
        data["image_size"] = {"width": 64, "height": 64}
    body: dict[str, Any] = {"provider": "fal", "model": model, "input": data}
    if metadata is not None:
        body["metadata"] = metadata
    return body


def server_env(workdir: Path, *, port: int, emulator_url: str, job_timeout_s: float) -> dict[str, str]:
    """The subprocess environment: the caller's, minus any RECEIVER_* or provider key, plus the run's."""
    return clean_env(
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
    and answers 503 to a random fraction (the receiver must retry with the same `webhook-id`). `slow` (the
    crash harness): answer after 0-30 ms, and one in ten after 0.1-0.3 s; otherwise at once."""

    def __init__(self, rng: random.Random, flaky: float, *, slow: bool = True) -> None:
        self.rng = rng
        self.flaky = flaky
        self.slow = slow
        self.url = ""  # set while the rig runs
        self.secrets: dict[str, str] = {}
        self.receipts: list[Receipt] = []
        self.refused: list[str] = []  # bad or missing signatures
        self.app = Starlette(routes=[Route("/hooks/{name}", self.handle, methods=["POST"])])

    async def subscribe(self, api: httpx.AsyncClient, name: str, events: list[str] | None) -> str:
        """Create a webhook subscription to `/hooks/{name}` through the API; keeps its secret, returns its id."""
        body: dict[str, Any] = {"kind": "webhook", "url": f"{self.url}/hooks/{name}"}
        if events is not None:
            body["events"] = events
        response = await api.post("/v1/subscriptions", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"creating a subscription failed: {response.status_code} {response.text}")
        created = response.json()
        self.secrets[name] = created["secret"]
        return str(created["id"])

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
        if self.slow:  # slow now and then, so that some deliveries are in flight when the server is killed
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


@contextlib.asynccontextmanager
async def running_rig(
    workdir: Path, emulator: FalEmulator | str, subscriber: Subscriber, *, job_timeout_s: float, **settings: str
) -> AsyncIterator[ServerProcess]:
    """Serve `emulator` (or use the emulators already served at that base URL) and `subscriber` here and start
    `receiver serve` against them (`settings` override its environment; its database and log `serve.log` in
    `workdir`); yields the server, SIGKILLed at the end if still up."""
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(emulator, str):
            emulator_url = emulator
        else:
            emulator_url = await stack.enter_async_context(running_server(create_emulator_app(fal=emulator)))
        subscriber.url = await stack.enter_async_context(running_server(subscriber.app))
        # Held across the kills and restarts: no other process can take it meanwhile.
        port = stack.enter_context(held_port())
        env = server_env(workdir, port=port, emulator_url=emulator_url, job_timeout_s=job_timeout_s)
        env.update(settings)
        # A group of its own: a kill takes the web process and its worker child together, as a crash would.
        server = ServerProcess(env, port, cwd=workdir, log_path=workdir / "serve.log", group=True)
        try:
            await server.start()
            yield server
        finally:
            if server.alive:
                await server.stop(signal.SIGKILL)
