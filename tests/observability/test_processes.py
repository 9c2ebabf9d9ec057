"""A full run in real processes with JSON logs: `receiver emulate`, and `receiver serve` (web plus its worker child,
which serves its own metrics) running one job of each of the five models, with a subscription and a callback.

Afterwards: every process's log is one JSON object per line, with the ids bound, and holds none of the secrets the
run used; each process's `/metrics` (read with prometheus_client's own parser) shows the counters moved, and asks
for the token.
"""

from __future__ import annotations

import json
import signal
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from receiver.ingest.signatures import job_token
from receiver.notify.delivery import callback_secret
from receiver.settings import Settings
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.processes import RECEIVER, ServerProcess, free_port, serve_env, wait_status
from tests.helpers.receivers import HookReceiver
from tests.helpers.waiting import until

TOKEN = "obs-api-token-5d1c0e8f"
SECRET_KEY = "obs-secret-key-0b6a93c2d41e7f58"
PROVIDER_KEYS = {
    "FAL_KEY": "obs-fal-key-77a1",
    "WAVESPEED_API_KEY": "obs-wavespeed-key-88b2",
    "STEP_API_KEY": "obs-step-key-99c3",
    "MODELVERSE_API_KEY": "obs-modelverse-key-aad4",
}
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("fal", "fal-ai/stepx-edit2", {"image_url": SMALL_PNG_URI}),
    ("fal", "fal-ai/fast-sdxl/image-to-image", {"image_url": SMALL_PNG_URI}),
    ("wavespeed", "wavespeed-ai/step1x-edit", {"image": SMALL_PNG_URI}),
    ("stepfun", "step-image-edit-2", {"image": SMALL_PNG_URI}),
    ("modelverse", "stepfun-ai/step1x-edit", {"image": SMALL_PNG_URI}),
]


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value, through prometheus_client's text parser."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def total(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    """The sum of the samples whose labels include `labels`."""
    return sum(value for key, value in samples.items() if set(labels.items()) <= set(key))


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's log, each parsed as one JSON object (fails on any other line)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(line, dict) and {"ts", "level", "logger", "message"} <= set(line) for line in parsed)
    return parsed


async def test_a_full_run_logs_json_without_secrets_and_counts_in_metrics(tmp_path: Path) -> None:
    """Five models end to end across three processes: JSON log lines with ids, no secret in any log, metrics moved."""
    emulator_port, port, worker_port = free_port(), free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    common = {"RECEIVER_LOG_FORMAT": "json", "RECEIVER_LOG_LEVEL": "debug"}
    emulate = ServerProcess(
        serve_env(tmp_path, **common),
        emulator_port,
        cwd=tmp_path,
        log_path=tmp_path / "emulate.log",
        argv=[*RECEIVER, "emulate", "--port", str(emulator_port)],
        name="receiver emulate",
    )
    env = serve_env(
        tmp_path,
        **common,
        **PROVIDER_KEYS,
        RECEIVER_API_TOKEN=TOKEN,
        RECEIVER_SECRET_KEY=SECRET_KEY,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_WORKER_METRICS_PORT=str(worker_port),
        RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
        RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
        RECEIVER_WAVESPEED_URL=f"{emulator_url}/wavespeed",
        RECEIVER_STEPFUN_URL=f"{emulator_url}/stepfun",
        RECEIVER_MODELVERSE_URL=f"{emulator_url}/modelverse",
        RECEIVER_FETCH_ALLOW_PRIVATE="true",
        RECEIVER_FETCH_ALLOWED_HOSTS="127.0.0.1",
        RECEIVER_NOTIFY_ALLOW_PRIVATE="true",
        RECEIVER_TASK_POLL_INTERVAL_S="0.1",
    )
    serve = ServerProcess(env, port, cwd=tmp_path, log_path=tmp_path / "serve.log")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    secrets = [TOKEN, SECRET_KEY, *PROVIDER_KEYS.values()]
    async with HookReceiver().running() as subscriber, HookReceiver().running() as callback:
        await emulate.start()
        try:
            await serve.start()
            try:
                async with httpx.AsyncClient(base_url=serve.url, headers=headers, timeout=30) as client:
                    created = await client.post("/v1/subscriptions", json={"kind": "webhook", "url": subscriber.url})
                    assert created.status_code == 201, created.text
                    secrets.append(created.json()["secret"])
                    jobs = []
                    for provider, model, image in MODELS:
                        body = {
                            "provider": provider,
                            "model": model,
                            "input": {"prompt": "make it red", **image},
                            "callback_url": callback.url,
                        }
                        answer = await client.post("/v1/jobs", json=body)
                        assert answer.status_code == 202, answer.text
                        jobs.append(answer.json())
                    for job in jobs:
                        final = await wait_status(client, job["id"], {"succeeded", "failed", "cancelled"})
                        assert final["status"] == "succeeded", final["error"]
                        secrets.append(job_token(SECRET_KEY.encode(), job["provider"], job["id"]))
                    await until(lambda: len(subscriber.succeeded()) == 5 and len(callback.succeeded()) == 5)
                    web = await client.get("/metrics")
                    assert web.status_code == 200
                    async with httpx.AsyncClient(timeout=10) as plain:
                        worker_url = f"http://127.0.0.1:{worker_port}/metrics"
                        assert (await plain.get(f"{serve.url}/metrics")).status_code == 401
                        assert (await plain.get(worker_url)).status_code == 401
                        worker = await plain.get(worker_url, headers=headers)
                        assert worker.status_code == 200
            finally:
                await serve.stop(signal.SIGTERM)
        finally:
            await emulate.stop(signal.SIGTERM)
    secrets.append(callback_secret(Settings(_env_file=None), SECRET_KEY.encode()))  # type: ignore[call-arg]

    # Metrics: the web process counted the webhooks it took; the worker the jobs, calls, deliveries, bytes.
    web_samples, worker_samples = scrape(web.text), scrape(worker.text)
    webhooks = web_samples["receiver_webhooks_total"]
    assert total(webhooks, outcome="accepted") >= 3  # fal twice and WaveSpeed answer by webhook
    assert total(webhooks, provider="fal", outcome="accepted") >= 2
    assert total(web_samples["receiver_ingest_seconds_count"], provider="fal") >= 2
    finished = worker_samples["receiver_jobs_finished_total"]
    assert total(finished, outcome="succeeded") == 5
    assert {dict(key)["provider"] for key in finished} == {"fal", "wavespeed", "stepfun", "modelverse"}
    assert total(worker_samples["receiver_job_duration_seconds_count"]) == 5
    assert total(worker_samples["receiver_provider_requests_total"], operation="submit", outcome="ok") == 5
    deliveries = worker_samples["receiver_deliveries_total"]
    assert total(deliveries, outcome="delivered", target_kind="webhook") == 5  # the subscription's
    assert total(deliveries, outcome="delivered", target_kind="callback") == 5
    image_bytes = worker_samples["receiver_image_bytes_total"]
    assert total(image_bytes, direction="fetched") > 0 and total(image_bytes, direction="stored") > 0
    assert (
        total(worker_samples["receiver_jwks_refreshes_total"], outcome="ok")
        + total(web_samples["receiver_jwks_refreshes_total"], outcome="ok")
        >= 1
    )
    for samples in (web_samples, worker_samples):
        assert total(samples["receiver_tasks_queued"]) == 0
        assert "process_cpu_seconds_total" in samples

    # Logs: JSON lines only, ids bound where a job is handled, and no secret in any form.
    serve_lines, emulate_lines = json_lines(tmp_path / "serve.log"), json_lines(tmp_path / "emulate.log")
    assert any({"task_kind", "task_id", "job_id", "provider"} <= set(line) for line in serve_lines)
    assert any("request_id" in line for line in serve_lines)
    assert any(line["logger"] == "uvicorn.access" for line in emulate_lines)  # emulate logs each request
    logs = (tmp_path / "serve.log").read_text() + (tmp_path / "emulate.log").read_text()
    for secret in secrets:
        for form in {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}:
            assert form not in logs, f"a secret ({secret[:6]}...) is in the logs"
    assert len(secrets) == 13  # token, key, 4 provider keys, subscription secret, 5 job tokens, callback secret
