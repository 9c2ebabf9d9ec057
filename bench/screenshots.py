"""`python -m bench.screenshots` (scripts/screenshots): the dashboard's main pages as PNGs in docs/screenshots/,
taken by Debian's Chromium through Playwright from a receiver on loopback that ran the demo's jobs (every
provider and model), with one subscriber that takes every event and one that answers 500 until its deliveries
are dead. Nothing leaves 127.0.0.1; no browser is downloaded. The browser tests launch Chromium the same way."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.app import create_app
from receiver.cli.demo import DEMO_JOBS, DEMO_KEY, IMAGE, demo_settings, sample_image_data_uri
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
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import open_services

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/test installs it with apt when missing)
VIEWPORT = {"width": 1280, "height": 800}
OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
TOKEN = "screenshots-token"
# Every image in view loaded (the thumbnails load lazily).
IMAGES_SHOWN = """Array.from(document.images)
    .filter((img) => img.getBoundingClientRect().top < window.innerHeight)
    .every((img) => img.complete && img.naturalWidth > 0)"""
WAIT_S = 120.0  # bounds a broken run only


def chromium_args() -> list[str]:
    """Chromium's arguments; fails naming the package when /usr/bin/chromium is missing."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (as root: apt-get install -y chromium)")
    return ["--no-sandbox"] if os.geteuid() == 0 else []


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless /usr/bin/chromium driven by Playwright, closed after the block. As root Chromium's sandbox
    cannot start, so it runs without one there (it only ever opens the receiver on loopback)."""
    args = chromium_args()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def failing_target() -> Starlette:
    """A subscriber that answers 500 to everything: its deliveries end dead."""

    async def refuse(request: Request) -> Response:
        return Response(status_code=500)

    return Starlette(routes=[Route("/{path:path}", refuse, methods=["POST"])])


def taking_target() -> Starlette:
    async def take(request: Request) -> Response:
        return Response(status_code=204)

    return Starlette(routes=[Route("/{path:path}", take, methods=["POST"])])


async def poll(client: httpx.AsyncClient, path: str, done: Any, what: str) -> Any:
    """GET `path` every 0.1 s until `done(json)` holds (at most WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        body = (await client.get(path)).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def run_jobs(client: httpx.AsyncClient, ok_url: str, failing_url: str) -> list[str]:
    """Two subscriptions (one healthy, one failing), the demo's jobs run to the end; their ids."""
    for url, events in ((ok_url, None), (failing_url, ["job.succeeded"])):
        body: dict[str, Any] = {"kind": "webhook", "url": url, **({"events": events} if events else {})}
        response = await client.post("/v1/subscriptions", json=body)
        response.raise_for_status()
    image = sample_image_data_uri()
    ids = []
    for provider, model, template in DEMO_JOBS:
        job_input = {name: image if value == IMAGE else value for name, value in template.items()}
        response = await client.post("/v1/jobs", json={"provider": provider, "model": model, "input": job_input})
        response.raise_for_status()
        ids.append(response.json()["id"])
    for job_id in ids:
        await poll(client, f"/v1/jobs/{job_id}", lambda job: job["images_status"] in ("stored", "failed"), job_id)
    await poll(client, "/v1/deliveries?status=dead", lambda page: len(page["deliveries"]) >= 1, "a dead delivery")
    return ids


async def log_in(page: Page, token: str) -> None:
    """Log in through the login form, as a person would."""
    await page.goto("/login")
    await page.locator('#login input[name="token"]').fill(token)
    await page.locator('#login button[type="submit"]').click()
    await page.wait_for_url(lambda url: not url.endswith("/login") and "/login?" not in url)


async def shoot(browser: Browser, url: str, first_job: str, out: Path) -> list[Path]:
    context = await browser.new_context(base_url=url, viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        await log_in(page, TOKEN)
        shots = {
            "jobs.png": "/",
            "job.png": f"/jobs/{first_job}",
            "deliveries.png": "/deliveries",
            "subscriptions.png": "/subscriptions",
        }
        written = []
        for name, path in shots.items():
            await page.goto(path, wait_until="load")
            await page.wait_for_function(IMAGES_SHOWN)  # (no "networkidle": the jobs list keeps its feed open)
            written.append(save_small(await page.screenshot(), out / name))
        return written
    finally:
        await context.close()


def save_small(png: bytes, path: Path) -> Path:
    """The screenshot as a 256-colour PNG (a third of the bytes; pages are mostly flat colour and text)."""
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    return path


async def main(out: Path) -> list[Path]:
    fast = {"queue_s": 0.1, "inference_s": 0.3, "api_key": DEMO_KEY}
    emulators = Emulators(
        fal=FalEmulator(FalEmulatorConfig(**fast)),
        wavespeed=WaveSpeedEmulator(WaveSpeedEmulatorConfig(**fast)),
        stepfun=StepFunEmulator(StepFunEmulatorConfig(latency_s=0.3, api_key=DEMO_KEY)),
        modelverse=ModelverseEmulator(ModelverseEmulatorConfig(latency_s=0.3, api_key=DEMO_KEY)),
    )
    with tempfile.TemporaryDirectory(prefix="receiver-screenshots-") as scratch:
        async with (
            running_server(create_emulator_app(emulators=emulators)) as emulator_url,
            running_server(taking_target()) as ok_url,
            running_server(failing_target()) as failing_url,
        ):
            sock = bind_socket("127.0.0.1", 0)
            url = base_url(*sock.getsockname()[:2])
            settings = demo_settings(Path(scratch), url, emulator_url).model_copy(
                # the day-long retry schedule in a moment (below the setting's floor, as the tests do)
                update={"api_token": SecretStr(TOKEN), "notify_retry_scale": 0.000001}
            )
            async with open_services(settings) as services, services.workers():
                async with (
                    running_server(create_app(services), sock=sock),
                    httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
                ):
                    ids = await run_jobs(client, f"{ok_url}/hook", f"{failing_url}/hook")
                    async with chromium() as browser:
                        written = await shoot(browser, url, ids[0], out)
            await emulators.aclose()
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go (default {OUT})")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(main(out)):
        print(f"{path}  {path.stat().st_size // 1024} KiB")
