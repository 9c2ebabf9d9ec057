"""The API's bodies, described once: the request models the server validates with, and the answers the routes
build from these models (so `/openapi.json`, made from them, says what is sent)."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, RootModel, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Request bodies validated where they are handled, named here with the rest: CreateJob, CreateSubscription,
# and the providers' input models (through the `POST /v1/jobs` variants below).
from receiver.jobs.service import CreateJob as CreateJob
from receiver.jobs.transitions import Ingest
from receiver.models import JobStatus
from receiver.notify.subscriptions import CreateSubscription as CreateSubscription
from receiver.providers.fal_inputs import FAL_MODELS
from receiver.providers.modelverse import ModelverseInput, ModelverseProvider
from receiver.providers.stepfun import StepFunInput, StepFunProvider
from receiver.providers.wavespeed import Step1xEditInput, WaveSpeedProvider

DeliveryStatus = Literal["pending", "delivered", "failed", "dead"]
DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)


@dataclass(frozen=True)
class DocumentedAs:
    """A field whose value is passed on as it is (stored JSON, a formatted time) and is documented as `shape`:
    re-validating stored JSON on the way out would drop or retype what providers put in it."""

    shape: Any

    def __get_pydantic_json_schema__(self, _schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(TypeAdapter(self.shape).core_schema)


IsoTime = Annotated[str, DocumentedAs(datetime)]  # `datetime.isoformat()` of an aware UTC time
MaybeIsoTime = Annotated[str | None, DocumentedAs(datetime | None)]


class Answer(BaseModel):
    """A body the server sends: it carries exactly these fields (a route answering with any other fails)."""

    model_config = ConfigDict(extra="forbid")


# Errors ----------------------------------------------------------------------------------------------------


class ErrorDetail(Answer):
    code: str
    message: str


class Error(Answer):
    """The one error shape of the whole API."""

    error: ErrorDetail


# Jobs ------------------------------------------------------------------------------------------------------


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


class Timings(Answer):
    total_s: float


class Job(Answer):
    id: str
    provider: str
    model: str
    status: JobStatus
    provider_request_id: str | None
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    callback_url: str | None
    result: Annotated[dict[str, Any] | None, DocumentedAs(Result | None)]
    provider_result: Any
    error: Annotated[dict[str, Any] | None, DocumentedAs(JobError | None)]
    images_status: str | None
    images_error: str | None
    timings: Timings | None
    created_at: IsoTime
    submitted_at: MaybeIsoTime
    completed_at: MaybeIsoTime
    updated_at: IsoTime


class StoredImage(Answer):
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


class JobPage(Answer):
    jobs: list[Job]
    next_cursor: str | None


class InboxEvent(Answer):
    id: int
    provider: str
    kind: str
    dedup_key: str
    headers: str
    body: str
    outcome: str
    received_at: float


class InboxEvents(Answer):
    events: list[InboxEvent]


# Subscriptions and deliveries ------------------------------------------------------------------------------


class Circuit(Answer):
    """The target's circuit breaker: `open` = deliveries wait until `until`; `half_open` = one probe is out."""

    state: Literal["closed", "open", "half_open"]
    until: float | None
    consecutive_failures: int
    last_error: str | None


class Subscription(Answer):
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


class Subscriptions(Answer):
    subscriptions: list[Subscription]


class SentTest(Answer):
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryAttempt(Answer):
    attempted_at: float
    status_code: int | None
    latency_ms: float | None
    error: str | None


class Delivery(Answer):
    id: str
    event_id: str
    subscription_id: str | None
    target: str
    url: str | None
    webhook_id: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    delivered_at: float | None
    created_at: float
    updated_at: float
    attempt_log: list[DeliveryAttempt]


class DeliveryPage(Answer):
    deliveries: list[Delivery]
    next_cursor: str | None


class ReplayFilter(BaseModel):
    """The body of `POST /v1/deliveries/replay` (give at least one field)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, max_length=200)
    subscription_id: str | None = Field(None, max_length=200)
    status: DeliveryStatus | None = None
    since: float | None = Field(None, allow_inf_nan=False, description="Created at or after (Unix seconds).")
    until: float | None = Field(None, allow_inf_nan=False, description="Created before (Unix seconds).")


class Requeued(Answer):
    requeued: int


class CallbackSecret(Answer):
    secret: str


# Meta and webhooks -----------------------------------------------------------------------------------------


class Health(Answer):
    status: Literal["ok"]


class WebhookAnswer(Answer):
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


# `POST /v1/jobs`: one variant per model whose input the server checks field by field -----------------------

INPUT_MODELS: list[tuple[str, str, type[BaseModel]]] = [
    *(("fal", model, schema) for model, schema in FAL_MODELS.items()),
    *(("wavespeed", model, Step1xEditInput) for model in WaveSpeedProvider.models),
    *(("stepfun", model, StepFunInput) for model in StepFunProvider.models),
    *(("modelverse", model, ModelverseInput) for model in ModelverseProvider.models),
]


def job_variant(name: str, title: str, provider: str, model: Any, input_type: Any) -> type[CreateJob]:
    """`CreateJob` with `provider`, `model` and `input` narrowed to one provider's model."""
    fields: dict[str, Any] = {
        "provider": (Literal[provider], ...),
        "model": (model, ...),
        "input": (input_type, ...),
    }
    doc = f"`POST /v1/jobs` for {title}."
    return create_model(name, __base__=CreateJob, __doc__=doc, __cls_kwargs__={"title": title}, **fields)


def job_variants() -> list[type[CreateJob]]:
    variants = [
        job_variant(
            f"CreateJob_{provider}_" + model.replace("/", "_").replace("-", "_").replace(".", "_"),
            f"{provider} {model}",
            provider,
            Literal[model],
            input_model,
        )
        for provider, model, input_model in INPUT_MODELS
    ]
    # WaveSpeed passes any other model id through with its input unchecked.
    checked = {"not": {"enum": list(WaveSpeedProvider.models)}}
    other = Annotated[str, Field(min_length=1, max_length=200, json_schema_extra=checked)]
    variants.append(
        job_variant("CreateJob_wavespeed_other", "other WaveSpeed models", "wavespeed", other, dict[str, Any])
    )
    return variants


CreateJobRequest: type[RootModel[Any]] = create_model(
    "CreateJobRequest",
    __base__=RootModel[Any],
    __doc__="A job for one provider's model.",
    root=(functools.reduce(operator.or_, job_variants()), ...),
)
