"""The body models routes answer with: they pass on what they are given byte for byte, stored JSON as stored,
and refuse a field the document does not declare."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from receiver.app import OPERATIONS
from receiver.models import Job, JobStatus
from receiver.support import jsontext
from receiver.web.http import JSONResponse
from receiver.web.openapi import build_document
from receiver.web.schemas import Answer, JobDetail

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
