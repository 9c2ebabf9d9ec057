"""Jobs as the store hands them to a provider, for provider tests that call `submit` directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from receiver.models import Job, JobStatus


def make_job(provider: str, model: str, input: dict[str, Any]) -> Job:
    """A pending job as the store would hand it to `submit`."""
    now = datetime.now(UTC)
    return Job(
        id="job_01TEST",
        provider=provider,
        model=model,
        status=JobStatus.PENDING,
        input=input,
        metadata=None,
        callback_url=None,
        provider_request_id=None,
        provider_urls=None,
        result=None,
        error=None,
        created_at=now,
        submitted_at=None,
        completed_at=None,
        updated_at=now,
        poll_count=0,
        next_poll_at=None,
    )
