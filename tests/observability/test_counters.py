"""The webhook counters at the edge, read from the process's registry before and after (deltas: the registry is
the process's, shared by the tests it runs)."""

from __future__ import annotations

import pytest

from receiver.observability.metrics import REGISTRY
from tests.helpers.provider_webhooks import signed_fal_webhook, webhook_path
from tests.helpers.stack import Stack, StackFactory

PAYLOAD = {"images": [], "seed": 7}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False)


async def test_webhooks_are_counted_by_outcome_and_reason(stack: Stack) -> None:
    """A webhook accepted, the same again (duplicate), one with a wrong token and one for an unknown provider
    (refused; the unknown name is counted as `other`) each move their own counter by one."""
    stack.emulator.config.no_delivery = True
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    request_id = (await stack.job(job["id"]))["provider_request_id"]
    body, headers = signed_fal_webhook(stack.signing_key, request_id, PAYLOAD)
    labels = {
        "accepted": {"provider": "fal", "outcome": "accepted", "reason": "applied"},
        "duplicate": {"provider": "fal", "outcome": "duplicate", "reason": "duplicate"},
        "bad_token": {"provider": "fal", "outcome": "refused", "reason": "bad_token"},
        "other": {"provider": "other", "outcome": "refused", "reason": "not_found"},
    }
    before = {key: value("receiver_webhooks_total", **names) for key, names in labels.items()}
    observed = value("receiver_ingest_seconds_count", provider="fal")
    path = webhook_path("fal", job["id"])
    assert (await stack.client.post(path, content=body, headers=headers)).json() == {"status": "applied"}
    assert (await stack.client.post(path, content=body, headers=headers)).json() == {"status": "duplicate"}
    wrong = path.rsplit("=", 1)[0] + "=AAAA"
    assert (await stack.client.post(wrong, content=body, headers=headers)).status_code == 403
    unknown = await stack.client.post(f"/webhooks/no-such-provider-{job['id']}/{job['id']}?token=x", content=b"{}")
    assert unknown.status_code == 404
    after = {key: value("receiver_webhooks_total", **names) for key, names in labels.items()}
    assert {key: after[key] - before[key] for key in labels} == {key: 1.0 for key in labels}
    assert value("receiver_ingest_seconds_count", provider="fal") - observed == 1.0
