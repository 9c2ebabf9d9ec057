"""`receiver demo --keep` through a real process: the table, the dashboard URL, then serving until Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import RECEIVER, cli_env


async def test_demo_keep_serves_until_ctrl_c(tmp_path: Path) -> None:
    """After its table, `receiver demo --keep` prints the dashboard's URL and keeps the receiver (`/healthz`, the
    demo's jobs) and the emulators answering; SIGINT then ends it with exit code 0 and the ports closed."""
    demo = await asyncio.create_subprocess_exec(
        *RECEIVER, "demo", "--keep", env=cli_env(tmp_path), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert demo.stdout is not None and demo.stderr is not None
    shown: list[str] = []
    try:
        while not shown or not shown[-1].startswith("serving"):
            line = (await asyncio.wait_for(demo.stdout.readline(), 300)).decode()  # a hang guard only
            assert line, "".join(shown) + (await demo.stderr.read()).decode()
            shown.append(line)
        text = "".join(shown)
        assert text.index("demo jobs") < text.index("every demo job succeeded") < text.index("dashboard")
        (dashboard,) = re.findall(r"^dashboard +(http://127\.0\.0\.1:\d+/)$", text, re.MULTILINE)
        (emulators,) = re.findall(r"^emulators +(http://127\.0\.0\.1:\d+)/", text, re.MULTILINE)
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{dashboard}healthz")).status_code == 200
            jobs = (await client.get(f"{dashboard}v1/jobs")).json()["jobs"]
            assert len(jobs) == 5 and {job["status"] for job in jobs} == {"succeeded"}
            table = text[text.index("demo jobs") : text.index("every demo job succeeded")]
            cut = [job["model"] for job in jobs if job["model"] not in table]  # piped: the table keeps them whole
            assert not cut, text
            assert (await client.get(f"{emulators}/healthz")).status_code == 200
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(demo.wait(), 60) == 0
    async with httpx.AsyncClient(timeout=10) as client:
        for url in (f"{dashboard}healthz", f"{emulators}/healthz"):
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
