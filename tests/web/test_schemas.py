"""The body models routes answer with: they pass on what they are given byte for byte, stored JSON as stored,
and refuse a field the document does not declare; a column added to a table reaches none of them."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from receiver.app import OPERATIONS
from receiver.models import Job, JobStatus
from receiver.storage import events, subscriptions
from receiver.storage.base import Transaction
from receiver.support import jsontext
from receiver.web.http import JSONResponse
from receiver.web.openapi import build_document
from receiver.web.schemas import Answer, JobDetail
from tests.helpers.database import add_delivery
from tests.helpers.stack import StackFactory

CREATED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
COMPLETED = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)  # no microseconds: isoformat leaves the fraction out


def stored_job(**stored: Any) -> Job:
    """A failed fal job as a row holds it; `stored` replaces its JSON columns."""
    values: dict[str, Any] = {
        "id": "job_01",
        "provider": "fal",
        "model": "fal-ai/stepx-edit2",
        "status": JobStatus.FAILED,
        "input": {"prompt": "red", "image_url": "https://example.com/a.png", "seed": 7},
        "metadata": {"user": "u_1", "n": 1, "ratio": 1.5},
        "callback_url": None,
        "provider_request_id": "req_1",
        "provider_urls": None,
        "result": None,
        "error": None,
        "created_at": CREATED,
        "submitted_at": CREATED,
        "completed_at": COMPLETED,
        "updated_at": COMPLETED,
        "poll_count": 0,
        "next_poll_at": None,
    }
    return Job(**{**values, **stored})


def detail(job: Job) -> dict[str, Any]:
    return {**job.to_api(), "images": [], "input_image": None}


STORED = {
    # Fields of the provider's own, numbers as written (1.0 stays 1.0, 2 stays 2), keys in the stored order.
    "error with extras": {"error": {"message": "no", "code": "provider_error", "detail": [{"loc": ["x"]}]}},
    "result as stored": {
        "status": JobStatus.SUCCEEDED,
        "result": {
            "timings": {"inference": 2},
            "images": [{"url": "https://v3.fal.media/a.png", "inline": None, "width": 1.0, "extra": "kept"}],
            "seed": 1.0,
            "provider_field": {"anything": [1, 2.5]},
        },
        "provider_result": {"images": [{"url": "https://v3.fal.media/a.png"}], "seed": 1.0},
    },
    "not submitted": {"status": JobStatus.PENDING, "submitted_at": None, "completed_at": None},
}


@pytest.mark.parametrize("stored", STORED.values(), ids=list(STORED))
def test_a_job_body_is_the_job_as_stored(stored: dict[str, Any]) -> None:
    """A job's answer is `Job.to_api()` byte for byte: stored JSON is passed on, never re-typed or trimmed."""
    view = detail(stored_job(**stored))
    assert JSONResponse(JobDetail.model_validate(view)).body == jsontext.dumps(view)


def test_an_answer_with_an_undeclared_field_is_refused() -> None:
    """A route that added a field without adding it to the model would fail, not send an undocumented field."""
    with pytest.raises(ValidationError, match="surprise"):
        JobDetail.model_validate({**detail(stored_job()), "surprise": 1})


def test_the_document_declares_every_answer_closed() -> None:
    """Each answer model is documented with `additionalProperties: false`, as the models enforce."""
    schemas = build_document(OPERATIONS, public_url="http://127.0.0.1", max_body_bytes=1024)["components"]["schemas"]
    answers = {name for name in schemas if name in {model.__name__ for model in all_subclasses(Answer)}}
    assert answers >= {"JobDetail", "JobPage", "Subscription", "Delivery", "Error", "WebhookAnswer"}
    assert {name: schemas[name].get("additionalProperties") for name in answers} == dict.fromkeys(answers, False)


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


# The tables whose rows the API shows, and a read of each row's answer.
SHOWN_TABLES = ("jobs", "inbox", "events", "subscriptions", "deliveries", "delivery_attempts")


async def test_a_column_added_to_a_table_reaches_no_answer(make_stack: StackFactory) -> None:
    """After a later version adds a column to every table the API shows, the job, job list, job events,
    subscription and delivery answers are the same bytes: the stores select what an answer holds (a row
    passed whole into a closed model would be a 500)."""
    stack = await make_stack(workers=False)
    job_id = (await stack.create_job())["id"]
    now = stack.services.clock()

    def seed(tx: Transaction) -> None:
        subscriptions.insert_subscription(
            tx, "sub_1", kind="webhook", url="https://hooks.example/h", config="{}", events='["job.succeeded"]',
            filter="{}", secret="sealed", now=now,
        )  # fmt: skip
        events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=job_id, payload={"a": 1}, now=now)
        add_delivery(tx, "dlv_1", event_id="evt_1", target="callback", url="https://hooks.example/cb",
                     status="dead", attempts=1, now=now)  # fmt: skip
        events.insert_attempt(tx, delivery_id="dlv_1", now=now, status_code=500, latency_ms=3.5, error="boom")

    await stack.services.db.write(seed)
    paths = ["/v1/jobs", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", "/v1/subscriptions", "/v1/deliveries"]

    async def answers() -> dict[str, tuple[int, bytes]]:
        return {path: ((response := await stack.client.get(path)).status_code, response.content) for path in paths}

    before = await answers()
    assert {path: status for path, (status, _) in before.items()} == dict.fromkeys(paths, 200)
    assert b"dlv_1" in before["/v1/deliveries"][1] and b"sub_1" in before["/v1/subscriptions"][1]
    with contextlib.closing(sqlite3.connect(stack.services.settings.database_path, timeout=30)) as conn:
        for table in SHOWN_TABLES:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN added_later TEXT DEFAULT 'x'")
        conn.commit()
    assert await answers() == before
