"""Jobs: creating them from API requests, and the task handlers that submit, poll and cancel them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from receiver.errors import AmbiguousError, GiveUpError, InputError, RetryLaterError
from receiver.models import TERMINAL_STATUSES, IdFactory, Job, JobStatus, Task
from receiver.providers.base import Outcome, Provider, ProviderEvent
from receiver.providers.fal_inputs import describe_validation_error
from receiver.retry import RetryPolicy
from receiver.settings import Settings
from receiver.signatures import job_token
from receiver.store import Store
from receiver.tasks import TaskContext, TaskKind

log = logging.getLogger(__name__)
MetadataValue = str | int | float | bool | None


class CreateJob(BaseModel):
    """The body of `POST /v1/jobs`; `input` is the provider's own input schema."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
    callback_url: str | None = Field(None, max_length=2048)
    metadata: dict[str, MetadataValue] | None = Field(None, max_length=50)

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: dict[str, Provider],
        *,
        secret: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.secret = secret
        self.clock = clock
        self.ids = IdFactory()

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise InputError(f"provider: unknown provider {name!r}; use one of {sorted(self.providers)}") from None

    async def create(self, body: Any) -> Job:
        """Validate a `POST /v1/jobs` body and store the job with its submit task (no provider call)."""
        try:
            request = CreateJob.model_validate(body)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="")) from None
        provider = self.provider(request.provider)
        data = provider.validate_input(request.model, request.input)
        if not provider.is_configured():
            raise RetryLaterError(
                f"provider {provider.name} has no credentials configured on this server",
                code="provider_not_configured",
            )
        now = self.clock()
        return await self.store.create_job(
            job_id=self.ids.new("job", now),
            provider=provider.name,
            model=request.model,
            input=data,
            metadata=request.metadata,
            callback_url=request.callback_url,
            now=now,
        )

    def webhook_url(self, job: Job) -> str:
        token = job_token(self.secret, job.provider, job.id)
        return f"{self.settings.public_url}/webhooks/{job.provider}/{job.id}?{urlencode({'token': token})}"

    async def handle_submit(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        if job.status is not JobStatus.PENDING:
            return  # cancelled before submission, or already done by a faster event
        provider = self.providers[job.provider]
        now = self.clock()
        error = None
        if task.interrupted:
            # An earlier attempt stopped mid-call: it may have reached the provider, and a second
            # submit could start a second paid job. The webhook or the job timeout settles it.
            request_id, urls = None, None
            error = {"code": "submit_outcome_unknown", "message": "a submit attempt was interrupted; not resent"}
        else:
            webhook_url = self.webhook_url(job) if provider.webhooks else None
            try:
                submission = await provider.submit(job, webhook_url=webhook_url)
            except AmbiguousError as exc:
                log.warning("job %s: %s; not resending", job.id, exc.message)
                request_id, urls = None, None
                error = {"code": exc.code, "message": f"{exc.message}; not resent to avoid a duplicate job"}
            except GiveUpError as exc:
                await self.fail(job.id, exc.code, exc.message)
                return
            else:
                request_id, urls = submission.request_id, submission.urls
            now = self.clock()
        next_poll_at = now + self.settings.reconcile_after_s if request_id else None
        await self.store.record_submission(
            job.id,
            request_id=request_id,
            urls=urls,
            error=error,
            next_poll_at=next_poll_at,
            task=task,
            owner=ctx.owner,
            now=now,
        )

    async def handle_poll(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        if job.status in TERMINAL_STATUSES:
            return
        provider = self.providers[job.provider]
        try:
            polled = await provider.poll(job)
        except GiveUpError as exc:
            await self.fail(job.id, exc.code, exc.message)
            return
        if polled.outcome.status not in TERMINAL_STATUSES:
            await self.store.apply_outcome(job.id, polled.outcome, now=self.clock())
            return
        event = ProviderEvent(
            provider=job.provider,
            kind="poll",
            dedup_key=str(job.provider_request_id),
            job_id=job.id,
            request_id=job.provider_request_id,
            outcome=polled.outcome,
            body=polled.body,
        )
        await self.store.ingest(event, now=self.clock())

    async def handle_cancel(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        await self.providers[job.provider].cancel(job)

    async def fail(self, job_id: str, code: str, message: str) -> None:
        outcome = Outcome(JobStatus.FAILED, error={"code": code, "message": message})
        await self.store.apply_outcome(job_id, outcome, now=self.clock())

    async def _submit_dead(self, task: Task, error: str) -> None:
        await self.fail(str(task.job_id), "submit_failed", error)

    def task_kinds(self) -> dict[str, TaskKind]:
        return {
            "submit": TaskKind(
                self.handle_submit, RetryPolicy(max_attempts=8, base_s=1, max_s=60), on_dead=self._submit_dead
            ),
            "poll": TaskKind(self.handle_poll, RetryPolicy(max_attempts=6, base_s=2, max_s=120)),
            "cancel": TaskKind(self.handle_cancel, RetryPolicy(max_attempts=6, base_s=2, max_s=120)),
        }
