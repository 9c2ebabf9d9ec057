"""The whole path once: API -> submit task -> emulator -> signed webhook -> durable record; on SQLite and on
PostgreSQL."""

from tests.helpers.stack import ON_BOTH_BACKENDS, StackFactory

pytestmark = ON_BOTH_BACKENDS


async def test_job_succeeds_end_to_end(make_stack: StackFactory) -> None:
    """A job submitted through the API ends succeeded with fal's output, recorded from the webhook."""
    stack = await make_stack()
    job = await stack.create_job()
    assert job["status"] == "pending"
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded", final["error"]
    assert final["result"]["images"][0]["width"] == 8
    events = (await stack.client.get(f"/v1/jobs/{job['id']}/events")).json()["events"]
    assert [event["kind"] for event in events] == ["webhook"]
