"""`receiver demo`: the emulator and the real service on loopback, a few edit jobs, progress, a table."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from receiver.app import create_app
from receiver.client import AsyncClient, is_final
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
from receiver.servers import base_url, bind_socket, running_server
from receiver.services import open_services
from receiver.settings import Settings

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
    output_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.jobs) and all(job["status"] == "succeeded" for job in self.jobs)


async def run_demo(
    *,
    console: Console,
    data_dir: Path | None = None,
    timeout_s: float = 120.0,
    queue_s: float = 0.4,
    inference_s: float = 1.0,
) -> DemoResult:
    """Start the fal emulator and the receiver on free loopback ports and run the demo jobs through them."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="receiver-demo-")))
        emulators = Emulators(
            fal=FalEmulator(FalEmulatorConfig(queue_s=queue_s, inference_s=inference_s, api_key="demo-key")),
            wavespeed=WaveSpeedEmulator(
                WaveSpeedEmulatorConfig(queue_s=queue_s, inference_s=inference_s, api_key="demo-key")
            ),
            stepfun=StepFunEmulator(StepFunEmulatorConfig(latency_s=inference_s, api_key="demo-key")),
            modelverse=ModelverseEmulator(ModelverseEmulatorConfig(latency_s=inference_s, api_key="demo-key")),
        )
        async with running_server(create_emulator_app(emulators=emulators)) as emulator_url:
            sock = bind_socket("127.0.0.1", 0)
            receiver_url = base_url(*sock.getsockname()[:2])
            key = SecretStr("demo-key")
            settings = Settings(
                database_url=f"sqlite:///{data_dir / 'receiver.db'}",
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
                fetch_allow_private=True,  # the emulators live on loopback
                reconcile_after_s=10,
                task_poll_interval_s=0.2,
            )
            console.print(f"emulators  {emulator_url}/{{fal,wavespeed,stepfun,modelverse}}")
            console.print(f"receiver   {receiver_url}  (data in {data_dir})")
            async with open_services(settings) as services, services.workers():
                async with running_server(create_app(services), sock=sock):
                    result = await _drive(receiver_url, console, timeout_s)
            await emulators.aclose()
    _print_table(console, result)
    return result


async def _drive(receiver_url: str, console: Console, timeout_s: float) -> DemoResult:
    client = AsyncClient(receiver_url)
    result = DemoResult()
    image = sample_image_data_uri()
    try:
        created = []
        for provider, model, template in DEMO_JOBS:
            job_input = {name: image if value == IMAGE else value for name, value in template.items()}
            created.append(await client.create_job({"provider": provider, "model": model, "input": job_input}))
        deadline = time.monotonic() + timeout_s
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            bars = {job["id"]: progress.add_task(_label(job), total=1) for job in created}
            latest = {job["id"]: job for job in created}
            while time.monotonic() < deadline and not all(is_final(job) for job in latest.values()):
                await asyncio.sleep(0.2)
                for job_id in latest:
                    if not is_final(latest[job_id]):
                        latest[job_id] = await client.get_job(job_id)
                        done = 1 if is_final(latest[job_id]) else 0
                        progress.update(bars[job_id], description=_label(latest[job_id]), completed=done)
        result.jobs = list(latest.values())
        async with httpx.AsyncClient(timeout=10) as http:
            for job in result.jobs:
                for image_info in (job.get("result") or {}).get("images", []):
                    size = (image_info.get("inline") or {}).get("bytes", 0)
                    if image_info.get("url"):
                        response = await http.get(image_info["url"])
                        size = len(response.content) if response.is_success else 0
                    result.output_bytes[job["id"]] = result.output_bytes.get(job["id"], 0) + size
    finally:
        await client.aclose()
    return result


def _label(job: dict[str, Any]) -> str:
    return f"{job['id']}  {job['provider']:<10} {job['model']:<32} {job['status']}"


def _print_table(console: Console, result: DemoResult) -> None:
    table = Table(title="demo jobs")
    for column in ("job", "provider", "model", "status", "time taken", "output"):
        table.add_column(column)
    for job in result.jobs:
        timings = job.get("timings") or {}
        taken = f"{timings['total_s']:.2f} s" if "total_s" in timings else "-"
        images = (job.get("result") or {}).get("images", [])
        sizes = ", ".join(f"{img.get('width') or '?'}x{img.get('height') or '?'}" for img in images)
        size_kb = result.output_bytes.get(job["id"])
        output = f"{len(images)} image(s) {sizes}" + (f", {size_kb / 1024:.1f} KiB" if size_kb else "")
        if job.get("error"):
            output = f"{job['error'].get('code')}: {job['error'].get('message')}"
        table.add_row(job["id"], job["provider"], job["model"], job["status"], taken, output)
    console.print(table)
