"""Modelverse (UCloud): the synchronous OpenAI-style `/v1/images/generations` call for step1x-edit
(docs/providers.md#modelverse)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from receiver.errors import ReceiverError
from receiver.providers.sync_api import (
    ErrorEnvelope,
    ImageRefOrBase64,
    SyncApiProvider,
    answer_error,
    check_data_uri_image,
)


class ModelverseInput(BaseModel):
    """Modelverse's documented fields; `image` (a URL, a data URI or bare base64) is passed through as given."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    image: ImageRefOrBase64
    n: int | None = Field(None, ge=1, le=4)
    strength: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-1)
    steps: int | None = Field(None, ge=1, le=50)
    guidance_scale: float | None = Field(None, ge=1, le=10)
    negative_prompt: str | None = None
    response_format: Literal["url", "b64_json"] | None = None

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body. b64_json unless `url` was asked for: the images arrive with the answer."""
        body: dict[str, Any] = {"model": model, **self.model_dump(exclude_none=True)}
        body["response_format"] = self.response_format or "b64_json"
        return body


class ModelverseProvider(SyncApiProvider[ModelverseInput]):
    """`fetch_policy` is taken for a constructor like StepFun's; Modelverse downloads URL inputs itself."""

    name: ClassVar[str] = "modelverse"
    models: ClassVar[tuple[str, ...]] = ("stepfun-ai/step1x-edit",)
    # Likely (docs/providers.md#modelverse-hosts-and-latency); b64_json is the default.
    result_hosts: ClassVar[tuple[str, ...]] = ("*.ufileos.com",)
    label: ClassVar[str] = "Modelverse"
    key_variable: ClassVar[str] = "MODELVERSE_API_KEY"
    edit_path: ClassVar[str] = "/v1/images/generations"
    input_model = ModelverseInput

    def check_input(self, params: ModelverseInput) -> None:
        """A data-URI (or bare base64) image must decode to a readable image."""
        check_data_uri_image(params.image, field="input.image")

    async def request_parts(self, model: str, params: ModelverseInput) -> dict[str, Any]:
        return {"json_body": params.body(model)}

    def error(self, response: httpx.Response) -> ReceiverError:
        """429 comes back later, 4xx are final (keeping the request id Modelverse sends as `param`), a 408 or
        5xx (503 included: its table has none) is unknown. Its table
        (docs/providers.md#modelverse-answers-and-errors) lists 500 `internal_error`/`model_server_error` and 504
        `gateway_timeout_error` with no promise the edit did not run."""
        envelope = ErrorEnvelope.read(response)
        label = envelope.code or envelope.type
        return answer_error(
            response,
            envelope,
            provider=self.label,
            label=label,
            detail=f"{response.status_code} {label}" if label else str(response.status_code),
            request_id=envelope.param or response.headers.get("x-request-id"),
        )

    def result_seed(self, params: ModelverseInput, items: list[dict[str, Any]]) -> Any:
        return params.seed if params.seed is not None and params.seed >= 0 else None  # -1: random, not reported
