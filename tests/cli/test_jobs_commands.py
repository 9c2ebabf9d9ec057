"""`receiver jobs` as used by hand, through real processes: whole ids piped and in narrow or wide terminals,
`jobs show` with our stored copies and the deliveries, `jobs --watch` on the live feed (resumed after a cut)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.cli import CuttableProxy, run_cli, run_in_terminal
from tests.helpers.images import png_data_uri
from tests.helpers.processes import RECEIVER, ServerProcess, cli_env, free_port, wait_status
from tests.helpers.receivers import HookReceiver

TOKEN = "cli-test-token-0123456789"
COPIES = {  # images copied from the loopback emulator, notifications to the loopback subscriber
    "RECEIVER_API_TOKEN": TOKEN,
    "RECEIVER_FETCH_ALLOW_PRIVATE": "true",
    "RECEIVER_FETCH_ALLOWED_HOSTS": "127.0.0.1",
    "RECEIVER_NOTIFY_ALLOW_PRIVATE": "true",
}


@pytest.fixture
async def live(make_server: Callable[..., ServerProcess]) -> AsyncIterator[tuple[ServerProcess, httpx.AsyncClient]]:
    """A started server behind RECEIVER_API_TOKEN and a client of its API."""
    server = make_server(**COPIES)
    await server.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as client:
        yield server, client


async def create_job(client: httpx.AsyncClient, prompt: str = "make it red") -> str:
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": prompt, "image_url": png_data_uri()}}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def settled(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job once succeeded with its images stored and its one delivery made."""
    job = await wait_status(client, job_id, {"succeeded", "failed", "cancelled"})
    deadline = time.monotonic() + 30
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        deliveries = (await client.get("/v1/deliveries", params={"job_id": job_id})).json()["deliveries"]
        if job["images_status"] in ("stored", "failed") and deliveries and deliveries[0]["status"] == "delivered":
            return job
        assert time.monotonic() < deadline, (job, deliveries)
        await asyncio.sleep(0.05)


async def test_ids_are_never_cut(live: tuple[ServerProcess, httpx.AsyncClient]) -> None:
    """`receiver jobs` shows every id whole: piped (tab-separated, header first) at COLUMNS=40, in a 40-column
    terminal (one id per line) and in a wide one (a table)."""
    server, client = live
    ids = [await create_job(client) for _ in range(3)]
    env = {**server.env, "RECEIVER_URL": server.url}

    piped = await run_cli("jobs", env={**env, "COLUMNS": "40"})
    assert piped.returncode == 0, piped.stderr
    header, *rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert header == ["id", "provider", "model", "status", "created_at"]
    assert sorted(row[0] for row in rows) == sorted(ids)
    assert {row[2] for row in rows} == {"fal-ai/stepx-edit2"}

    for columns in (40, 160):
        code, shown = await run_in_terminal("jobs", env=env, columns=columns)
        assert code == 0, shown
        words = {word for line in shown.splitlines() for word in line.split()}
        assert set(ids) <= words, f"{columns} columns:\n{shown}"
    assert "provider" in shown and "created_at" in shown  # the wide terminal got the table


async def test_show_gives_our_copies_and_the_deliveries(
    live: tuple[ServerProcess, httpx.AsyncClient], hook: HookReceiver
) -> None:
    """`receiver jobs show ID` prints our stored image's URL (on the server the command talks to), the
    provider's, `images_status`, and each delivery with its target, status, attempts and last answer."""
    server, client = live
    subscription = (await client.post("/v1/subscriptions", json={"kind": "webhook", "url": hook.url})).json()
    job = await settled(client, await create_job(client))
    (stored,) = job["images"]
    (delivery,) = (await client.get("/v1/deliveries", params={"job_id": job["id"]})).json()["deliveries"]
    other_name = f"http://localhost:{server.port}"  # not RECEIVER_PUBLIC_URL: the URLs follow --url

    shown = await run_cli("jobs", "show", job["id"], "--url", other_name, env=server.env)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["images_status", "stored"] in lines
    assert ["images_error", "-"] in lines
    image_line = next(line for line in lines if line[0] == "image")
    assert image_line[1] == f"{other_name}/v1/images/{stored['sha256']}"
    assert ["provider_url", stored["source_url"]] in lines
    delivery_line = next(line for line in lines if delivery["id"] in line)
    assert delivery_line == [delivery["id"], subscription["id"], "delivered", "attempts", "1", "last", "200"]
    image = await client.get(image_line[1].replace(other_name, server.url))
    assert image.status_code == 200 and image.content


async def next_line(watcher: asyncio.subprocess.Process) -> str:
    """The watcher's next line; when it ended instead, fail with what it said (60 s: a hang guard only)."""
    assert watcher.stdout is not None and watcher.stderr is not None
    line = (await asyncio.wait_for(watcher.stdout.readline(), 60)).decode()
    assert line, (await watcher.stderr.read()).decode()
    return line


async def test_watch_prints_changes_and_resumes_after_a_cut(
    live: tuple[ServerProcess, httpx.AsyncClient], hook: HookReceiver
) -> None:
    """`receiver jobs --watch` prints a line per job change; after its connection is cut it reconnects with
    Last-Event-ID and prints what happened meanwhile, once; Ctrl-C ends it with exit code 0."""
    server, client = live
    await client.post("/v1/subscriptions", json={"kind": "webhook", "url": hook.url})  # delivered: event sent
    async with CuttableProxy(server.port).running() as proxy:
        watcher = await asyncio.create_subprocess_exec(
            *RECEIVER, "jobs", "--watch", "--url", proxy.url, env=server.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            await proxy.first_bytes.wait()  # the stream is open: what follows is on it
            first = await settled(client, await create_job(client, "make it blue"))
            line = await next_line(watcher)
            assert line.split()[1:4] == ["job.succeeded", first["id"], "fal"], line

            proxy.hold()
            proxy.cut()
            second = await settled(client, await create_job(client, "make it green"))
            proxy.release()
            line = await next_line(watcher)
            assert line.split()[1:4] == ["job.succeeded", second["id"], "fal"], line
            assert f"{proxy.url}/v1/images/{second['images'][0]['sha256']}" in line
            assert proxy.forwarded == 2
        finally:
            if watcher.returncode is None:
                watcher.send_signal(signal.SIGINT)
        assert await watcher.wait() == 0
        rest = (await watcher.stdout.read()).decode()
        assert first["id"] not in rest and second["id"] not in rest  # nothing printed twice
        assert "reconnecting" in (await watcher.stderr.read()).decode()


async def test_watch_unreachable_server_is_an_error(tmp_path: Path) -> None:
    """`receiver jobs --watch` against a port nobody serves exits 1 saying it cannot reach the receiver."""
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_cli("jobs", "--watch", "--url", url, env=cli_env(tmp_path))
    assert result.returncode == 1
    assert f"cannot reach the receiver at {url}" in result.stderr


async def test_watch_with_a_wrong_token_is_an_error(live: tuple[ServerProcess, httpx.AsyncClient]) -> None:
    """`receiver jobs --watch --token WRONG` exits 1 with the server's 401 answer."""
    server, _ = live
    result = await run_cli("jobs", "--watch", "--url", server.url, "--token", "wrong", env=server.env)
    assert result.returncode == 1
    assert "(401)" in result.stderr, result.stderr


async def test_list_json_is_whole(live: tuple[ServerProcess, httpx.AsyncClient]) -> None:
    """`receiver jobs --json` piped at COLUMNS=40 parses as JSON with the whole ids."""
    server, client = live
    job_id = await create_job(client)
    result = await run_cli("jobs", "--json", "--url", server.url, env={**server.env, "COLUMNS": "40"})
    assert [job["id"] for job in json.loads(result.stdout)["jobs"]] == [job_id]
