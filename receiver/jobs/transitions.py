"""Transaction bodies that move jobs (see `receiver.storage.base`): the one place a job becomes final.

`move_job` is the only way a job reaches a final state (a provider event, a refused submit, a cancel, a
timeout), so what follows one (`completed_at`, the image copy or the notification, the cancel at the
provider) is queued in the same transaction, in one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from receiver.errors import ConflictError, NotFoundError
from receiver.models import TERMINAL_STATUSES, Job, JobState, JobStatus, Outcome, ProviderEvent, can_move
from receiver.storage import inbox, jobs, tasks
from receiver.storage.base import Transaction


class Ingest(enum.StrEnum):
    """What recording a provider event did."""

    APPLIED = "applied"  # recorded, and the job moved (or a follow-up was queued)
    RECORDED = "recorded"  # recorded, the job did not move (already further along or final)
    DUPLICATE = "duplicate"  # seen before; nothing changed


@dataclass(frozen=True, slots=True)
class Resubmit:
    """How often a job may be submitted afresh after `resubmit` outcomes, and the wait before each."""

    max_attempts: int = 1
    delay_s: float = 5.0


def move_job(tx: Transaction, job: Job | JobState, outcome: Outcome, now: float) -> bool:
    """Apply `outcome` if it is a step forward for `job`; returns whether the job moved."""
    if not can_move(job.status, outcome.status):
        return False
    final = outcome.status in TERMINAL_STATUSES
    jobs.update_status(
        tx,
        job.id,
        status=outcome.status,
        result=outcome.result,
        provider_result=outcome.provider_result,
        error=outcome.error,
        completed_at=now if final else None,
        now=now,
    )
    # What follows a final state, queued in this same transaction so it cannot be lost: a success
    # first copies its images into our store (then notifies; `update_status` marks its images
    # pending), any other end notifies at once.
    # The lane is the job's provider, which `job` has: passing it saves `insert_task` looking it up.
    if outcome.status is JobStatus.SUCCEEDED:
        tasks.insert(tx, "fetch_images", job.id, now, lane=job.provider)
    elif final:
        tasks.insert(tx, "notify", job.id, now, payload={"event": f"job.{outcome.status.value}"}, lane=job.provider)
    if final and outcome.stop_provider and job.provider_request_id:
        tasks.insert(tx, "cancel", job.id, now, lane=job.provider)
    return True


def cancel_job(tx: Transaction, job_id: str, now: float) -> Job:
    """Cancel a job at the API caller's request (final; the provider is asked to stop); `already_final`
    when it is final already. The job is read locked: a webhook that makes it final meanwhile either
    commits first (then this sees it final) or waits for this cancel (then finds it final itself), so no
    `job.cancelled` notification is queued for a job that ended otherwise."""
    job = jobs.get_for_update(tx, job_id)
    if job.status in TERMINAL_STATUSES:
        raise ConflictError(f"job {job_id} is already {job.status.value}", code="already_final")
    error = {"code": "cancelled", "message": "cancelled by the API caller"}
    move_job(tx, job, Outcome(JobStatus.CANCELLED, error=error, stop_provider=True), now)
    return jobs.get(tx, job_id)


def expire_jobs(tx: Transaction, *, deadline: float, now: float, timeout_s: float) -> list[str]:
    """Fail every unfinished job created at or before `deadline` (the provider is asked to stop the ones
    it has); returns their ids."""
    error = {"code": "timeout", "message": f"no final result from the provider within {timeout_s:g} s"}
    outcome = Outcome(JobStatus.FAILED, error=error, stop_provider=True)
    return [job.id for job in jobs.open_created_before(tx, deadline) if move_job(tx, job, outcome, now)]


def apply_event(tx: Transaction, event: ProviderEvent, now: float, resubmit: Resubmit) -> Ingest:
    """Record a verified provider event in the inbox and apply it to its job.

    Raises NotFoundError when the job does not exist (or is another provider's) and ConflictError when
    the event's request id is not the job's; nothing is recorded then.
    """
    # `superseded`: a request the job gave up on for a fresh submit. Its late answer is kept, but the job
    # follows the fresh request (paid for too), so this one may neither bind nor move it.
    job, superseded = jobs.get_state_for_event(tx, event.job_id, request_id=event.request_id)
    if job.provider != event.provider:
        raise NotFoundError(f"job {event.job_id} not found")
    if event.request_id and job.provider_request_id and event.request_id != job.provider_request_id and not superseded:
        raise ConflictError(
            f"event is for request {event.request_id}, job {job.id} is request {job.provider_request_id}",
            code="request_id_mismatch",
        )
    if not inbox.insert(tx, event, now=now):
        return Ingest.DUPLICATE
    outcome = event.outcome
    if job.status in TERMINAL_STATUSES or superseded:
        return Ingest.RECORDED
    if outcome.resubmit:
        if job.provider_attempts < resubmit.max_attempts:
            for request_id in {event.request_id, job.provider_request_id} - {None}:
                jobs.supersede_request(tx, job.id, provider=job.provider, request_id=str(request_id), now=now)
            jobs.reset_for_resubmit(tx, job.id, error=outcome.error, now=now)
            tasks.insert(tx, "submit", job.id, now, delay_s=resubmit.delay_s * 2 ** max(job.provider_attempts - 1, 0))
            return Ingest.APPLIED
        error = dict(outcome.error or {})
        error["message"] = f"{error.get('message', 'provider error')} (after {job.provider_attempts} attempts)"
        outcome = Outcome(JobStatus.FAILED, error=error, provider_result=outcome.provider_result)
    if event.request_id and job.provider_request_id is None:
        # The webhook beat the submit response: the signed request id binds the job now.
        jobs.bind_request_id(tx, job.id, event.request_id, now=now)
    if outcome.fetch_result:
        tasks.insert(tx, "poll", job.id, now)
        move_job(tx, job, Outcome(JobStatus.RUNNING), now)
        return Ingest.APPLIED
    return Ingest.APPLIED if move_job(tx, job, outcome, now) else Ingest.RECORDED
