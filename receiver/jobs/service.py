"""Jobs: creating them from API requests, and the task handlers that submit, poll and cancel them."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from receiver.errors import AmbiguousError, DeferredError, GiveUpError, InputError, RetryLaterError
from receiver.ingest.signatures import job_token
from receiver.jobs.idempotency import IdempotencyClaim
from receiver.jobs.store import JobStore
from receiver.jobs.transitions import Ingest, Resubmit
from receiver.models import TERMINAL_STATUSES, IdFactory, Job, JobStatus, Outcome, ProviderEvent, Task
from receiver.notify.target_rules import TargetProblem, check_target_url
from receiver.observability import logs
from receiver.providers.base import Provider
from receiver.results import decode_data_uri, image_facts
from receiver.settings import Settings
from receiver.support.jsontext import holds_big_string
from receiver.tasks.retry import RetryPolicy
from receiver.tasks.runner import TaskContext, TaskKind
from receiver.validation import describe_validation_error

log = logging.getLogger(__name__)
MetadataValue = str | int | float | bool | None
DEFER_S = 1.0  # how soon a submit waiting for a provider slot looks again
RESUBMIT_DELAY_S = 5.0  # first wait before submitting afresh after a transient provider failure


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
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The rules every send applies (`allow_private` comes in the validation context)."""
        if value is not None:
            try:
                check_target_url("callback", value, allow_private=bool((info.context or {}).get("allow_private")))
            except TargetProblem as exc:
                raise ValueError(exc.message) from None
        return value


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
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

    async def create(self, body: Any, *, idempotency: IdempotencyClaim | None = None) -> tuple[Job, bool]:
        """Validate a `POST /v1/jobs` body and store the job with its submit task (no provider call).

        Returns (job, replayed): `replayed` when `idempotency`'s key already named a job, which is
        returned instead of a new one (see `receiver.jobs.idempotency`).
        """
        if holds_big_string(body):
            # A data-URI image is megabytes to check and decode: on a worker thread, a slice at a time.
            request, provider, data, inputs = await asyncio.to_thread(self._checked, body)
        else:
            request, provider, data, inputs = self._checked(body)
        now = self.clock()
        job_id = self.ids.new("job", now)
        job = await self.store.create_job(
            job_id=job_id,
            provider=provider.name,
            model=request.model,
            input=data,
            metadata=request.metadata,
            callback_url=request.callback_url,
            inputs=inputs,
            now=now,
            idempotency=idempotency,
        )
        return job, job.id != job_id

    def _checked(self, body: Any) -> tuple[CreateJob, Provider, dict[str, Any], list[tuple[str, str, bytes]]]:
        """The request, its provider, the input to store and the input images to serve; raises InputError."""
        try:
            request = CreateJob.model_validate(body, context={"allow_private": self.settings.notify_allow_private})
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="")) from None
        provider = self.provider(request.provider)
        data = provider.validate_input(request.model, request.input)
        if not provider.is_configured():
            raise RetryLaterError(
                f"provider {provider.name} has no credentials configured on this server",
                code="provider_not_configured",
            )
        data, inputs = self._serve_inline_inputs(provider, data)
        return request, provider, data, inputs

    def _serve_inline_inputs(
        self, provider: Provider, data: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
        """Replace data URIs in fields the provider must fetch by URLs we serve (unguessable keys)."""
        inputs = []
        for name in provider.url_input_fields:
            value = data.get(name)
            if not isinstance(value, str) or not value.startswith("data:"):
                continue
            try:
                _, raw = decode_data_uri(value)
            except ValueError as exc:
                raise InputError(f"input.{name}: {exc}") from None
            content_type, _, _ = image_facts(raw)
            if content_type is None:
                raise InputError(f"input.{name}: is not a readable PNG, JPEG, WebP or GIF image")
            key = secrets.token_urlsafe(32)
            inputs.append((key, content_type, raw))
            data = {**data, name: f"{self.settings.public_url}/inputs/{key}"}
        return data, inputs

    def webhook_url(self, job: Job) -> str:
        token = job_token(self.secret, job.provider, job.id)
        return f"{self.settings.public_url}/webhooks/{job.provider}/{job.id}?{urlencode({'token': token})}"

    def resubmit_policy(self, provider: Provider) -> Resubmit:
        return Resubmit(max_attempts=provider.max_provider_attempts, delay_s=RESUBMIT_DELAY_S)

    async def ingest(self, event: ProviderEvent) -> Ingest:
        """Record a verified provider event under its provider's resubmit policy."""
        provider = self.providers[event.provider]
        return await self.store.ingest(event, now=self.clock(), resubmit=self.resubmit_policy(provider))

    async def handle_submit(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        logs.bind(provider=job.provider)
        if job.status in TERMINAL_STATUSES or job.provider_request_id:
            return  # cancelled, or already done by a faster event
        provider = self.providers[job.provider]
        if job.dispatched_at:
            # An earlier attempt took the slot and began the call, then stopped without recording an
            # answer (a crash mid-call; every answer is recorded with the task's completion): it may have
            # reached the provider, and a second submit could start a second paid job. An attempt that
            # stopped before taking its slot (`dispatched_at` unset) never called out: it is sent below.
            message = f"the server stopped during the {provider.name} call; {AmbiguousError.NOT_RESENT}"
            await self._record_unknown(job, provider, {"code": AmbiguousError.code, "message": message}, task, ctx)
            return
        claimed = await self.store.claim_dispatch(
            job.id,
            provider=provider.name,
            concurrency=provider.concurrency,
            rate_per_min=provider.rate_per_min,
            synchronous=provider.synchronous,
            now=self.clock(),
        )
        if not claimed:
            raise DeferredError(f"{provider.name} is at its concurrency or rate limit", retry_after_s=DEFER_S)
        webhook_url = self.webhook_url(job) if provider.webhooks else None
        try:
            submission = await provider.submit(job, webhook_url=webhook_url)
        except RetryLaterError:
            await self.store.release_dispatch(job.id, now=self.clock())
            raise
        except AmbiguousError as exc:
            log.warning("job %s: %s; not resending", job.id, exc.message)
            error = {"code": exc.code, "message": exc.message}
            await self._record_unknown(job, provider, error, task, ctx)
            return
        except GiveUpError as exc:
            await self.fail(job.id, exc.code, exc.message, request_id=exc.request_id)
            return
        now = self.clock()
        event = None
        if submission.outcome is not None:
            event = ProviderEvent(
                provider=job.provider,
                kind="response",
                dedup_key=f"{job.id}:{job.provider_attempts + 1}",
                job_id=job.id,
                request_id=submission.request_id,
                outcome=submission.outcome,
                body=submission.body,
            )
        polled = submission.request_id is not None and submission.outcome is None
        await self.store.record_submission(
            job.id,
            request_id=submission.request_id,
            urls=submission.urls,
            error=None,
            next_poll_at=now + provider.first_poll_after_s if polled else None,
            poll_base_s=provider.poll_interval_s,
            task=task,
            owner=ctx.owner,
            now=now,
            event=event,
            queue_position=submission.queue_position,
        )
        ctx.finished = True  # the same write finished the task

    async def _record_unknown(
        self, job: Job, provider: Provider, error: dict[str, Any], task: Task, ctx: TaskContext
    ) -> None:
        """A submit whose outcome is unknown: an asynchronous provider's webhook may still bind the job
        (else the job timeout fails it); a synchronous provider's answer is lost, and a provider that cannot
        find a request without its id (`lost_submit_recoverable`) cannot settle it: the job fails now."""
        if provider.synchronous:
            await self.fail(job.id, error["code"], error["message"])
            return
        recorded = await self.store.record_submission(
            job.id, request_id=None, urls=None, error=error, next_poll_at=None, task=task, owner=ctx.owner,
            now=self.clock(),
        )  # fmt: skip
        ctx.finished = True
        if not provider.lost_submit_recoverable and recorded.provider_request_id is None:
            # (A webhook that beat the lost answer has bound the request: the job follows it instead.)
            await self.fail(job.id, error["code"], error["message"])

    async def handle_poll(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        logs.bind(provider=job.provider)
        if job.status in TERMINAL_STATUSES or not job.provider_request_id:
            return
        provider = self.providers[job.provider]
        try:
            polled = await provider.poll(job)
        except GiveUpError as exc:
            await self.fail(job.id, exc.code, exc.message)
            return
        if polled.outcome.status not in TERMINAL_STATUSES:
            await self.store.apply_outcome(
                job.id, polled.outcome, now=self.clock(), queue_position=polled.queue_position
            )
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
        await self.ingest(event)

    async def handle_cancel(self, task: Task, ctx: TaskContext) -> None:
        job = await self.store.select_job(str(task.job_id))
        logs.bind(provider=job.provider)
        await self.providers[job.provider].cancel(job)

    async def fail(self, job_id: str, code: str, message: str, *, request_id: str | None = None) -> None:
        """Fail a job; a provider request id that came with the refusal is kept in the error."""
        error = {"code": code, "message": message}
        if request_id:
            error["provider_request_id"] = request_id
        outcome = Outcome(JobStatus.FAILED, error=error)
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
