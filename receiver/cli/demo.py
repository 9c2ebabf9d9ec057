"""`receiver demo`: the emulator and the real service on loopback, a few edit jobs, progress, a table."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.app import create_app
from receiver.cli.client import AsyncClient, is_final
from receiver.emulators import (
    Emulators,
    FalEmulator,
    FalEmulatorConfig,
    ModelverseEmulator,
    ModelverseEmulatorConfig,
    StepFunEmulator,
    StepFunEmulatorConfig,
    WaveSpeedEmulator,
    WaveSpeedEmulatorConfig,
    create_emulator_app,
)
from receiver.errors import SignatureError
from receiver.notify.signing import verify
from receiver.settings import Settings
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import open_services

DEMO_KEY = "demo-key"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
IMAGE = "<sample>"  # replaced by the packaged sample image as a data URI
DEMO_JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("fal", "fal-ai/stepx-edit2", {"prompt": "make head band red", "image_url": IMAGE}),
    ("fal", "fal-ai/fast-sdxl/image-to-image", {"prompt": "mirror the scene", "image_url": IMAGE, "num_images": 2}),
    ("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "turn it into a pencil sketch", "image": IMAGE}),
    ("stepfun", "step-image-edit-2", {"prompt": "a blue evening", "image": IMAGE}),
    ("modelverse", "stepfun-ai/step1x-edit", {"prompt": "make it black and white", "image": IMAGE}),
]


def sample_image_data_uri() -> str:
    data = resources.files("receiver.assets").joinpath("sample.png").read_bytes()
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


@dataclass
class DemoResult:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    notified: dict[str, int] = field(default_factory=dict)  # job id -> verified job.succeeded received

    @property
    def ok(self) -> bool:
        """Every job succeeded, has its images in our store, and was announced exactly once."""
        return bool(self.jobs) and all(
            job["status"] == "succeeded" and job["images_status"] == "stored" and self.notified.get(job["id"]) == 1
            for job in self.jobs
        )


class Subscriber:
    """The demo's webhook subscriber: verifies each Standard Webhooks signature and counts events per job."""

    def __init__(self) -> None:
        self.secret = ""
        self.events: dict[str, int] = {}
        self.seen_ids: set[str] = set()
        self.app = Starlette(routes=[Route("/hook", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            verify(self.secret, request.headers, body, now=time.time())
        except SignatureError:
            return Response(status_code=400)
        if request.headers["webhook-id"] not in self.seen_ids:  # dedupe, as receivers should
            self.seen_ids.add(request.headers["webhook-id"])
            job_id = json.loads(body)["data"]["job"]["id"]
            self.events[job_id] = self.events.get(job_id, 0) + 1
        return Response(status_code=204)


async def run_demo(
    *,
    console: Console,
    data_dir: Path | None = None,
    database_url: str | None = None,
    timeout_s: float = 120.0,
    queue_s: float = 0.4,
    inference_s: float = 1.0,
    keep: bool = False,
) -> DemoResult:
    """Start the emulators, a webhook subscriber and the receiver on free loopback ports; run the demo jobs,
    print how they went and the dashboard's URL; with `keep`, go on serving until SIGINT or SIGTERM.
    The database is a SQLite file in `data_dir` unless `database_url` names one (PostgreSQL)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="receiver-demo-")))
        emulators = Emulators(
            fal=FalEmulator(FalEmulatorConfig(queue_s=queue_s, inference_s=inference_s, api_key=DEMO_KEY)),
            wavespeed=WaveSpeedEmulator(
                WaveSpeedEmulatorConfig(queue_s=queue_s, inference_s=inference_s, api_key=DEMO_KEY)
            ),
            stepfun=StepFunEmulator(StepFunEmulatorConfig(latency_s=inference_s, api_key=DEMO_KEY)),
            modelverse=ModelverseEmulator(ModelverseEmulatorConfig(latency_s=inference_s, api_key=DEMO_KEY)),
        )
        subscriber = Subscriber()
        async with (
            running_server(create_emulator_app(emulators=emulators)) as emulator_url,
            running_server(subscriber.app) as subscriber_url,
        ):
            sock = bind_socket("127.0.0.1", 0)
            receiver_url = base_url(*sock.getsockname()[:2])
            settings = demo_settings(data_dir, receiver_url, emulator_url, database_url)
            console.print(f"emulators   {emulator_url}/{{fal,wavespeed,stepfun,modelverse}}")
            console.print(f"receiver    {receiver_url}  (data in {data_dir})")
            console.print(f"subscriber  {subscriber_url}/hook")
            async with open_services(settings) as services, services.workers():
                async with running_server(create_app(services), sock=sock):
                    result = await _drive(receiver_url, f"{subscriber_url}/hook", subscriber, console, timeout_s)
                    _print_table(console, result)
                    _print_outcome(console, result, receiver_url, keep=keep)
                    if keep:
                        await serve_until_interrupted()
            await emulators.aclose()
    return result


async def serve_until_interrupted() -> None:
    """Until SIGINT (Ctrl-C) or SIGTERM; then the servers around the caller shut down in order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _print_outcome(console: Console, result: DemoResult, receiver_url: str, *, keep: bool) -> None:
    if result.ok:
        console.print("[green]every demo job succeeded[/]")
    else:
        console.print("[red]demo failed:[/] not every job succeeded")
    console.print(f"dashboard   {receiver_url}/", soft_wrap=True)
    if keep:
        console.print("serving the receiver and the emulators until Ctrl-C", soft_wrap=True)
    console.file.flush()  # a pipe (scripts/demo | tee) sees the URL now, not at exit


def demo_settings(data_dir: Path, receiver_url: str, emulator_url: str, database_url: str | None = None) -> Settings:
    key = SecretStr(DEMO_KEY)
    return Settings(
        database_url=database_url or f"sqlite:///{data_dir / 'receiver.db'}",
        data_dir=data_dir,
        public_url=receiver_url,
        fal_queue_url=f"{emulator_url}/fal",
        fal_jwks_url=f"{emulator_url}/fal/.well-known/jwks.json",
        wavespeed_url=f"{emulator_url}/wavespeed",
        stepfun_url=f"{emulator_url}/stepfun",
        modelverse_url=f"{emulator_url}/modelverse",
        fal_key=key,
        wavespeed_api_key=key,
        step_api_key=key,
        modelverse_api_key=key,
        # Everything lives on loopback here: let fetches and notifications reach it.
        fetch_allow_private=True,
        fetch_allowed_hosts="127.0.0.1",
        notify_allow_private=True,
        reconcile_after_s=10,
        task_poll_interval_s=0.2,
    )


async def _drive(
    receiver_url: str, hook_url: str, subscriber: Subscriber, console: Console, timeout_s: float
) -> DemoResult:
    client = AsyncClient(receiver_url)
    result = DemoResult()
    image = sample_image_data_uri()
    try:
        subscription = await client.call("POST", "/v1/subscriptions", {"kind": "webhook", "url": hook_url})
        subscriber.secret = subscription["secret"]
        created = []
        for provider, model, template in DEMO_JOBS:
            job_input = {name: image if value == IMAGE else value for name, value in template.items()}
            created.append(await client.create_job({"provider": provider, "model": model, "input": job_input}))
        deadline = time.monotonic() + timeout_s
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
            bars = {job["id"]: bar.add_task(_label(job, subscriber), total=1) for job in created}
            latest = {job["id"]: job for job in created}
            while time.monotonic() < deadline and not all(_settled(job, subscriber) for job in latest.values()):
                await asyncio.sleep(0.2)
                for job_id, job in latest.items():
                    if not _settled(job, subscriber):
                        latest[job_id] = job = await client.get_job(job_id)
                        bar.update(
                            bars[job_id], description=_label(job, subscriber), completed=_settled(job, subscriber)
                        )
        result.jobs = list(latest.values())
        result.notified = dict(subscriber.events)
    finally:
        await client.aclose()
    return result


def _settled(job: dict[str, Any], subscriber: Subscriber) -> bool:
    """Final, and (when succeeded) its images handled and its notification received."""
    if not is_final(job):
        return False
    return job["status"] != "succeeded" or (
        job["images_status"] in ("stored", "failed") and job["id"] in subscriber.events
    )


def _label(job: dict[str, Any], subscriber: Subscriber) -> str:
    stage = job["status"]
    if stage == "succeeded":
        stage = "notified" if job["id"] in subscriber.events else f"images {job.get('images_status') or 'pending'}"
    return f"{job['provider']:<10} {job['model']:<32} {stage}"


def _print_table(console: Console, result: DemoResult) -> None:
    table = Table(title="demo jobs")
    for column in ("provider", "model", "status", "time", "stored images", "notified"):
        table.add_column(column)
    for job in result.jobs:
        timings = job.get("timings") or {}
        taken = f"{timings['total_s']:.1f} s" if "total_s" in timings else "-"
        images = job.get("images") or []
        stored = ", ".join(
            f"{img['width']}x{img['height']} {img['bytes'] / 1024:.0f} KiB" for img in images if img["sha256"]
        )
        if job.get("error"):
            stored = f"{job['error'].get('code')}: {job['error'].get('message')}"
        elif job.get("images_error"):
            stored = str(job["images_error"])
        notified = result.notified.get(job["id"], 0)
        table.add_row(job["provider"], job["model"], job["status"], taken, stored or "-", f"{notified} signed")
    # Piped output has no terminal to fit: rich's 80-column default would cut the model names.
    out = console if console.is_terminal else Console(file=console.file, width=max(console.width, 132))
    out.print(table)
