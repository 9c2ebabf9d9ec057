"""The CLI through real processes: serve's loopback guard, submit/jobs against a live server, kill -9 and restart."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from receiver.cli.main import app
from receiver.emulators.fal import FalEmulator
from receiver.web.asgi_server import running_server
from tests.helpers.cli import run_cli
from tests.helpers.database import rows
from tests.helpers.processes import RECEIVER, ServerProcess, cli_env, wait_status
from tests.helpers.stack import StackFactory


def test_serve_refuses_public_host_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """`receiver serve --host 0.0.0.0` exits non-zero with a message when RECEIVER_API_TOKEN is unset."""
    monkeypatch.delenv("RECEIVER_API_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])  # noqa: S104 (the point of the test)
    assert result.exit_code == 2
    assert "RECEIVER_API_TOKEN" in result.output


def test_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed setting stops the CLI with the variable's name, not a traceback."""
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "mysql://nope")
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert "RECEIVER_DATABASE_URL" in result.output


def test_submit_refuses_missing_file() -> None:
    """A --image that is neither a URL nor a file is a clear error."""
    result = CliRunner().invoke(
        app,
        ["submit", "--provider", "fal", "--model", "fal-ai/stepx-edit2", "--image", "/no/such.png", "--prompt", "x"],
    )
    assert result.exit_code == 1
    assert "neither an http(s) URL nor a readable file" in result.output


MODELS = [
    ("fal", "fal-ai/stepx-edit2"),
    ("wavespeed", "wavespeed-ai/step1x-edit"),
    ("stepfun", "step-image-edit-2"),
    ("modelverse", "stepfun-ai/step1x-edit"),
]


@pytest.mark.parametrize(("provider", "model"), MODELS, ids=[provider for provider, _ in MODELS])
async def test_submit_puts_the_image_where_the_provider_reads_it(
    make_stack: StackFactory, provider: str, model: str
) -> None:
    """`receiver submit` sends `--image` in the input field the provider's adapter reads the image from (the
    server refuses unknown input fields, so a wrong field would fail the command)."""
    stack = await make_stack(workers=False)
    image = "https://example.com/photo.png"
    args = ["submit", "--provider", provider, "--model", model, "--image", image, "--prompt", "x", "--json"]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", stack.url])
    assert result.exit_code == 0, result.output
    job = await stack.services.store.select_job(json.loads(result.output)["id"])
    assert job.input == {stack.services.providers[provider].image_field: image, "prompt": "x"}


async def test_submit_wait_and_jobs_commands(server: ServerProcess, tmp_path: Path) -> None:
    """`receiver submit --wait` with a local file ends succeeded; `jobs` and `jobs show` find the job."""
    await server.start()
    image = Path(__file__).parents[2] / "receiver" / "assets" / "sample.png"
    env = {**server.env, "RECEIVER_URL": server.url}
    submitted = await run_cli(
        "submit", "--provider", "fal", "--model", "fal-ai/stepx-edit2", "--image", str(image),
        "--prompt", "make head band red", "--wait", "--json", env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded"
    listed = await run_cli("jobs", "--json", env=env)
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job["id"]]
    shown = await run_cli("jobs", "show", job["id"], env=env)
    assert shown.returncode == 0 and "succeeded" in shown.stdout
    missing = await run_cli("jobs", "show", "job_NOPE", env=env)
    assert missing.returncode == 1 and "not_found" in missing.stderr


async def test_kill_9_with_job_in_flight_loses_nothing(
    server: ServerProcess, emulator: tuple[FalEmulator, str]
) -> None:
    """kill -9 while a job runs: the acknowledged job survives, and fal's webhook retry finishes the other."""
    emu, _ = emulator
    image = (Path(__file__).parents[2] / "receiver" / "assets" / "sample.png").read_bytes()
    release = asyncio.Event()  # the second job's input is held back until the server is dead

    async def held_input(request: Request) -> Response:
        await release.wait()
        return Response(image, media_type="image/png")

    async with running_server(Starlette(routes=[Route("/in.png", held_input)])) as inputs:
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            image_url = "data:image/png;base64," + base64.b64encode(image).decode()
            body: dict[str, Any] = {
                "provider": "fal",
                "model": "fal-ai/stepx-edit2",
                "input": {"prompt": "blur it", "image_url": image_url},
            }
            done = (await client.post("/v1/jobs", json=body)).json()
            await wait_status(client, done["id"], {"succeeded"})
            body["input"]["image_url"] = f"{inputs}/in.png"  # fal is still running this job when the server dies
            in_flight = (await client.post("/v1/jobs", json=body)).json()
            await wait_status(client, in_flight["id"], {"submitted", "running"})
        await server.stop()
        release.set()
        request = emu.requests[in_flight_request_id(emu, in_flight["id"])]
        deadline = time.monotonic() + 30
        while not request.deliveries:  # the emulator finishes the job; its delivery fails, nobody listens
            assert time.monotonic() < deadline, "the emulator never tried to deliver"
            await asyncio.sleep(0.05)
        assert request.deliveries[0].status_code is None  # connection refused, to be retried by "fal"
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get(f"/v1/jobs/{done['id']}")).json()["status"] == "succeeded"
        final = await wait_status(client, in_flight["id"], {"succeeded", "failed", "cancelled"})
    assert final["status"] == "succeeded"


def in_flight_request_id(emu: FalEmulator, job_id: str) -> str:
    return next(rid for rid, request in emu.requests.items() if job_id in (request.webhook_url or ""))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_demo_succeeds(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """`receiver demo` runs every demo job to success and prints the table (exit code 0); on its own SQLite file,
    or on the PostgreSQL database `RECEIVER_DATABASE_URL` names (whose job rows then show the demo's jobs)."""
    env = cli_env(tmp_path)
    if backend == "postgres":
        env["RECEIVER_DATABASE_URL"] = url = request.getfixturevalue("postgres_url")
    result = subprocess.run(
        [*RECEIVER, "demo"], env=env, capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every demo job succeeded" in result.stdout
    assert re.search(r"^dashboard +http://127\.0\.0\.1:\d+/$", result.stdout, re.MULTILINE), result.stdout
    assert result.stdout.count("succeeded") >= 5
    for provider in ("fal", "wavespeed", "stepfun", "modelverse"):
        assert provider in result.stdout
    if backend == "postgres":
        statuses = {row[0] for row in rows(url, "SELECT status FROM jobs")}
        assert statuses == {"succeeded"}
