"""The OpenAPI document's components: request schemas from the models the server validates with, and the
shapes of its answers (declared here for the document only; the routes build plain dicts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from receiver.jobs.service import CreateJob
from receiver.jobs.transitions import Ingest
from receiver.models import JobStatus
from receiver.notify.subscriptions import CreateSubscription
from receiver.providers.fal_inputs import FAL_MODELS
from receiver.providers.modelverse import ModelverseInput, ModelverseProvider
from receiver.providers.stepfun import StepFunInput, StepFunProvider
from receiver.providers.wavespeed import Step1xEditInput, WaveSpeedProvider
from receiver.web.routes.pipeline import ReplayFilter

REF = "#/components/schemas/{model}"
# (provider, model, input model) for every model whose input the server checks field by field.
INPUT_MODELS: list[tuple[str, str, type[BaseModel]]] = [
    *(("fal", model, schema) for model, schema in FAL_MODELS.items()),
    *(("wavespeed", model, Step1xEditInput) for model in WaveSpeedProvider.models),
    *(("stepfun", model, StepFunInput) for model in StepFunProvider.models),
    *(("modelverse", model, ModelverseInput) for model in ModelverseProvider.models),
]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class Error(BaseModel):
    """The one error shape of the whole API."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class JobError(BaseModel):
    code: str
    message: str


class ResultImage(BaseModel):
    url: str | None
    inline: dict[str, Any] | None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None


class Result(BaseModel):
    """A succeeded job's result, the same whatever the provider."""

    images: list[ResultImage]
    seed: int | None = None
    nsfw: list[bool] | None = None
    timings: dict[str, float] | None = None


class Timings(BaseModel):
    total_s: float


class Job(BaseModel):
    id: str
    provider: str
    model: str
    status: JobStatus
    provider_request_id: str | None
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    callback_url: str | None
    result: Result | None
    provider_result: Any
    error: JobError | None
    images_status: str | None
    images_error: str | None
    timings: Timings | None
    created_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class StoredImage(BaseModel):
    sha256: str | None
    url: str | None
    thumbnail_url: str | None
    content_type: str | None
    width: int | None
    height: int | None
    bytes: int | None
    source_url: str | None
    error: str | None


class JobDetail(Job):
    """A job as one job's routes show it: with the copies of its images we stored."""

    images: list[StoredImage]
    input_image: StoredImage | None


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None


class InboxEvent(BaseModel):
    id: int
    provider: str
    kind: str
    dedup_key: str
    headers: str
    body: str
    outcome: str
    received_at: float


class InboxEvents(BaseModel):
    events: list[InboxEvent]


class Circuit(BaseModel):
    """The target's circuit breaker: `open` = deliveries wait until `until`; `half_open` = one probe is out."""

    state: Literal["closed", "open", "half_open"]
    until: float | None
    consecutive_failures: int
    last_error: str | None


class Subscription(BaseModel):
    id: str
    kind: Literal["webhook", "slack", "discord", "telegram"]
    url: str | None
    chat_id: str | None
    events: list[str]
    filter: dict[str, Any]
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    failing_since: float | None
    circuit: Circuit
    created_at: float


class CreatedSubscription(Subscription):
    secret: str | None = None


class RotatedSubscription(Subscription):
    secret: str
    previous_valid_until: float


class Subscriptions(BaseModel):
    subscriptions: list[Subscription]


class SentTest(BaseModel):
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryAttempt(BaseModel):
    attempted_at: float
    status_code: int | None
    latency_ms: float | None
    error: str | None


class Delivery(BaseModel):
    id: str
    event_id: str
    subscription_id: str | None
    target: str
    url: str | None
    webhook_id: str
    status: Literal["pending", "delivered", "failed", "dead"]
    attempts: int
    attempt_log: list[DeliveryAttempt]


class DeliveryPage(BaseModel):
    deliveries: list[Delivery]
    next_cursor: str | None


class Requeued(BaseModel):
    requeued: int


class CallbackSecret(BaseModel):
    secret: str


class Health(BaseModel):
    status: Literal["ok"]


class WebhookAnswer(BaseModel):
    status: Literal[Ingest.APPLIED, Ingest.RECORDED, Ingest.DUPLICATE, "ignored"]


class FalWebhook(BaseModel):
    """fal's completion body (the raw bytes are what the signature covers)."""

    request_id: str
    gateway_request_id: str | None = None
    status: Literal["OK", "ERROR"]
    payload: dict[str, Any] | None = None
    error: str | None = None


class WaveSpeedWebhook(BaseModel):
    """A WaveSpeed prediction, as its webhook sends it."""

    id: str
    model: str | None = None
    status: str
    outputs: list[str] | None = None


RESPONSE_MODELS: list[type[BaseModel]] = [
    Error, JobDetail, JobPage, InboxEvents, CreatedSubscription, RotatedSubscription, Subscriptions, SentTest,
    DeliveryPage, Requeued, CallbackSecret, Health, WebhookAnswer, FalWebhook, WaveSpeedWebhook,
]  # fmt: skip


def component_schemas() -> dict[str, Any]:
    """Every model above and every request model, plus one `POST /v1/jobs` variant per checked model."""
    inputs = dict.fromkeys(model for _, _, model in INPUT_MODELS)
    models: list[type[BaseModel]] = [CreateJob, CreateSubscription, ReplayFilter, *inputs, *RESPONSE_MODELS]
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    variants = []
    for provider, model, input_model in INPUT_MODELS:
        name = f"CreateJob_{provider}_" + model.replace("/", "_").replace("-", "_").replace(".", "_")
        schemas[name] = job_variant(provider, {"const": model}, ref(input_model.__name__), f"{provider} {model}")
        variants.append(ref(name))
    # WaveSpeed passes any other model id through with its input unchecked.
    other = {"type": "string", "minLength": 1, "maxLength": 200, "not": {"enum": list(WaveSpeedProvider.models)}}
    schemas["CreateJob_wavespeed_other"] = job_variant("wavespeed", other, {"type": "object"}, "other WaveSpeed models")
    variants.append(ref("CreateJob_wavespeed_other"))
    schemas["CreateJobRequest"] = {"anyOf": variants, "description": "A job for one provider's model."}
    return schemas


def job_variant(provider: str, model: dict[str, Any], input_schema: dict[str, Any], title: str) -> dict[str, Any]:
    """`CreateJob` with `provider`, `model` and `input` narrowed to one provider's model."""
    base = CreateJob.model_json_schema(ref_template=REF)
    properties = {**base["properties"], "provider": {"const": provider}, "model": model, "input": input_schema}
    return {**base, "title": title, "description": f"`POST /v1/jobs` for {title}.", "properties": properties}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}
