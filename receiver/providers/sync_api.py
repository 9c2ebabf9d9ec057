"""What the synchronous image APIs (StepFun, Modelverse) share: one POST, their error envelope, image inputs."""

from __future__ import annotations

import abc
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, SecretStr, ValidationError

from receiver.errors import AmbiguousError, GiveUpError, InputError, ReceiverError, RetryLaterError
from receiver.images.download import FetchPolicy
from receiver.models import Job, JobStatus, Outcome
from receiver.providers.base import Provider, Submission, authorization, post_once
from receiver.results import (
    decode_b64,
    decode_data_uri,
    image_dimensions,
    inline_image,
    normalized,
    url_image,
)
from receiver.tasks.retry import parse_retry_after
from receiver.validation import describe_validation_error

MAX_URL_CHARS = 8192
# The answer both document as "nothing was done" (rate limited): the same call may be made again. Any
# other 5xx, or a 408 timeout, may come after the edit ran and was paid for: its outcome is unknown.
# Modelverse's error table (docs/providers.md#modelverse-answers-and-errors) has no 503 at all; StepFun adds
# its 503 "overloaded".
NOT_PROCESSED = frozenset({429})
UNKNOWN_OUTCOME_4XX = frozenset({408})


def check_image_ref(value: str) -> str:
    """An http(s) URL or a base64 data URI: the two ways our API takes an input image."""
    if value.startswith(("https://", "http://")):
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"URL is longer than {MAX_URL_CHARS} characters")
        return value
    if value.startswith("data:"):
        try:
            decode_data_uri(value)
        except ValueError as exc:
            raise ValueError(f"must be a base64 data URI ({exc})") from None
        return value
    raise ValueError("must be an http(s) URL or a data:image/...;base64 URI")


def check_image_ref_or_base64(value: str) -> str:
    """An http(s) URL, a base64 data URI, or bare base64 image data (Modelverse's "Base64 data or image link")."""
    if value.startswith(("https://", "http://", "data:")):
        return check_image_ref(value)
    try:
        bare_base64(value)
    except ValueError:
        raise ValueError("must be an http(s) URL, a data:image/...;base64 URI or base64 image data") from None
    return value


def bare_base64(value: str) -> bytes:
    """The bytes of strict base64 (no prefix, no whitespace); ValueError when it is not that."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64 ({exc})") from None


ImageRef = Annotated[str, AfterValidator(check_image_ref)]
ImageRefOrBase64 = Annotated[str, AfterValidator(check_image_ref_or_base64)]


def check_data_uri_image(value: str, *, field: str, max_side: int | None = None) -> None:
    """For an inline input (a data URI, or bare base64 where allowed): its bytes must be a readable image
    (of at most `max_side` px a side)."""
    if value.startswith(("https://", "http://")):
        return  # a URL: checked when it is fetched
    try:
        data = decode_data_uri(value)[1] if value.startswith("data:") else bare_base64(value)
    except ValueError as exc:
        raise InputError(f"{field}: {exc}") from None
    image_dimensions(data, field=field, max_side=max_side)


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """`{"error": {"message", "type", "param"?, "code"?}}`, read leniently; `documented` is False when
    the body had no such envelope (a proxy's page, say)."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    documented: bool = False

    @classmethod
    def read(cls, response: httpx.Response) -> ErrorEnvelope:
        fallback = response.text[:500].strip() or f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            return cls(fallback)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(json.dumps(body)[:500] if body else fallback)
        message = error.get("message")
        return cls(
            message=message if isinstance(message, str) and message else fallback,
            type=_text(error.get("type")),
            code=_text(error.get("code")),
            param=_text(error.get("param")),
            documented=True,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def read_answer(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A 200 answer `{"created", "data": [...], ...}` and its `data` items; ValueError when unusable."""
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    items = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        raise ValueError("`data` is not a list of objects")
    return answer, items


def item_images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The normalized images of `data` items: inline for `b64_json` (a data-URI prefix is optional), else
    `url`. ValueError naming the item when one has neither, or inline bytes that are not an image."""
    images = []
    for index, item in enumerate(items):
        if isinstance(item.get("b64_json"), str) and item["b64_json"]:
            try:
                data = decode_b64(item["b64_json"])
            except ValueError as exc:
                raise ValueError(f"data[{index}].b64_json is not base64 ({exc})") from None
            image = inline_image(data, source=f"data[{index}].b64_json")
            if image["content_type"] is None:
                raise ValueError(f"data[{index}].b64_json is not a PNG, JPEG, WebP or GIF image")
            images.append(image)
        elif isinstance(item.get("url"), str) and item["url"]:
            images.append(url_image(item["url"]))
        else:
            raise ValueError(f"data[{index}] has neither b64_json nor url")
    return images


def bad_answer(message: str, *, answer: Any) -> Outcome:
    """A 200 we cannot use. The edit ran (and was paid for), so the job fails instead of being resent."""
    return Outcome(
        JobStatus.FAILED, error={"code": "provider_bad_response", "message": message}, provider_result=answer
    )


def answer_error(
    response: httpx.Response,
    envelope: ErrorEnvelope,
    *,
    provider: str,
    label: str | None,
    detail: str,
    request_id: str | None,
    not_processed: frozenset[int] = NOT_PROCESSED,
) -> ReceiverError:
    """The exception for a non-2xx answer: a `not_processed` status comes back later, another 4xx is final (coded
    `label`, else `<provider>_<status>`), a 408 or other 5xx has an unknown outcome. `detail` stands for the
    status in the messages."""
    status = response.status_code
    if status in not_processed:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        message = f"{provider} answered {detail}: {envelope.message}"
        return RetryLaterError(message, retry_after_s=retry_after, code=label or "provider_unavailable")
    if 400 <= status < 500 and status not in UNKNOWN_OUTCOME_4XX:
        message = f"{provider} refused the edit ({detail}): {envelope.message}"
        return GiveUpError(message, code=label or f"{provider.lower()}_{status}", request_id=request_id)
    # The edit may have run and been paid for: never resent.
    return AmbiguousError(f"{provider} answered {detail} ({envelope.message}); the edit may have run: not resent")


InputT = TypeVar("InputT", bound=BaseModel)


class SyncApiProvider(Provider, Generic[InputT]):
    """A synchronous image API: one POST (`edit_path`, with a Bearer key) runs the edit to the end, and its
    answer (`data` items) is the job's final outcome. No webhooks, nothing to poll.

    A subclass names itself (`label` in messages, `key_variable` for a missing key) and gives its input model
    and the checks beyond it, the request (`request_parts`), its error mapping (`error`) and where the result's
    seed comes from."""

    synchronous: ClassVar[bool] = True
    label: ClassVar[str]
    key_variable: ClassVar[str]
    edit_path: ClassVar[str]
    input_model: type[InputT]

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        key: SecretStr | None,
        timeout_s: float,
        fetch_policy: FetchPolicy | None = None,
        concurrency: int = 0,
        rate_per_min: int = 0,
    ) -> None:
        self.webhooks = False
        self.concurrency = concurrency
        self.rate_per_min = rate_per_min
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout_s = timeout_s
        self.fetch_policy = fetch_policy if fetch_policy is not None else FetchPolicy()

    def is_configured(self) -> bool:
        return self._key is not None and bool(self._key.get_secret_value())

    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        """The provider's fields, checked (`input_model`, then `check_input`)."""
        if model not in self.models:
            raise InputError(f"model: {self.label} model {model!r} is not supported; use one of {list(self.models)}")
        try:
            parsed = self.input_model.model_validate(data)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="input")) from None
        self.check_input(parsed)
        return dict(data)

    @abc.abstractmethod
    def check_input(self, params: InputT) -> None:
        """What the model cannot check (an inline image's bytes); raises InputError."""

    def _authorization(self) -> dict[str, str]:
        return authorization(self._key, scheme="Bearer", variable=self.key_variable)

    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        """Run the edit to the end; the answer is the job's final outcome."""
        self._authorization()  # no key: the job fails before anything is fetched or sent
        try:
            params = self.input_model.model_validate(job.input)
        except ValidationError as exc:
            raise GiveUpError(describe_validation_error(exc, prefix="input"), code="invalid_input") from None
        parts = await self.request_parts(job.model, params)
        response = await post_once(
            self.client,
            f"{self.base_url}{self.edit_path}",
            provider=self.label,
            timeout_s=self.timeout_s,
            headers=self._authorization(),
            **parts,
        )
        if not response.is_success:
            raise self.error(response)
        outcome = self.outcome(response.content, params)
        return Submission(request_id=response.headers.get("x-request-id"), outcome=outcome, body=response.content)

    @abc.abstractmethod
    async def request_parts(self, model: str, params: InputT) -> dict[str, Any]:
        """`post_once`'s body arguments (`json_body`, or `data` and `files`) for the edit call."""

    @abc.abstractmethod
    def error(self, response: httpx.Response) -> ReceiverError:
        """The exception for a non-2xx answer (`answer_error`)."""

    @abc.abstractmethod
    def result_seed(self, params: InputT, items: list[dict[str, Any]]) -> Any:
        """The seed the result reports."""

    def refusal(self, answer: Any, items: list[dict[str, Any]]) -> Outcome | None:
        """A failed outcome for a 200 that refuses the edit (a content filter, say); None to read its images."""
        return None

    def outcome(self, body: bytes, params: InputT) -> Outcome:
        """What a 200 means: every image in `data` (inline for b64_json, with or without a data-URI prefix), or
        a failed job when it is a refusal or unusable."""
        try:
            answer, items = read_answer(body)
        except ValueError as exc:
            return bad_answer(f"{self.label}'s answer is unreadable: {exc}", answer=None)
        refused = self.refusal(answer, items)
        if refused is not None:
            return refused
        try:
            images = item_images(items)
        except ValueError as exc:
            return bad_answer(f"{self.label}'s answer is unusable: {exc}", answer=answer)
        result = normalized(images, seed=self.result_seed(params, items))
        return Outcome(JobStatus.SUCCEEDED, result=result, provider_result=answer)
