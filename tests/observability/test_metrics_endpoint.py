"""`GET /metrics`: Prometheus text, behind the bearer token unless public, task gauges read from the database."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.helpers.stack import StackFactory

TOKEN = "metrics-test-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_need_the_token_unless_public(make_stack: StackFactory) -> None:
    """With an API token, /metrics answers 401 in the error shape without it, and the text with it."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN))
    refused = await stack.client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json() == {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}
    wrong = await stack.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    answer = await stack.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    assert ("process_cpu_seconds_total", ()) in samples(answer.text)


async def test_public_metrics_need_no_token(make_stack: StackFactory) -> None:
    """`RECEIVER_METRICS_PUBLIC=true` serves /metrics to anyone while /v1 still takes the token."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN), metrics_public=True)
    assert (await stack.client.get("/metrics")).status_code == 200
    assert (await stack.client.get("/v1/jobs")).status_code == 401


async def test_task_gauges_are_read_from_the_database(make_stack: StackFactory, tmp_path: Path) -> None:
    """A job waiting to be submitted shows as one queued submit task; every known kind is reported."""
    stack = await make_stack(workers=False)
    await stack.create_job()
    found = samples((await stack.client.get("/metrics")).text)
    assert found[("receiver_tasks_queued", (("kind", "submit"),))] == 1
    assert found[("receiver_tasks_queued", (("kind", "deliver"),))] == 0
    assert found[("receiver_tasks_dead", (("kind", "submit"),))] == 0
    assert found[("receiver_tasks_oldest_age_seconds", (("kind", "submit"),))] >= 0
    assert await stack.services.runner.run_once() == 1
    after = samples((await stack.client.get("/metrics")).text)
    assert after[("receiver_tasks_queued", (("kind", "submit"),))] == 0
