"""`receiver submit --wait` against a live server: its exit code says whether the job succeeded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from receiver.cli.main import app
from receiver.emulators.fal import FalEmulatorConfig
from tests.helpers.stack import StackFactory

SAMPLE_PNG = Path(__file__).parents[2] / "receiver" / "assets" / "sample.png"
FAST = {"queue_s": 0.01, "inference_s": 0.02, "time_scale": 0.001}


@pytest.mark.parametrize(
    ("model_error", "status", "exit_code"), [(False, "succeeded", 0), (True, "failed", 1)], ids=["succeeded", "failed"]
)
async def test_submit_wait_exit_code_follows_the_job(
    make_stack: StackFactory, model_error: bool, status: str, exit_code: int
) -> None:
    """`submit --wait` exits 0 when the job succeeded and non-zero when it failed (the job is still printed)."""
    stack = await make_stack(emulator_config=FalEmulatorConfig(**FAST, model_error=model_error))
    args = ["submit", "--provider", "fal", "--model", "fal-ai/stepx-edit2", "--image", str(SAMPLE_PNG)]
    args += ["--prompt", "make it red", "--wait", "--json", "--url", stack.url]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == exit_code, result.output
    job = json.loads(result.stdout)
    assert job["status"] == status
    assert (await stack.job(job["id"]))["status"] == status
