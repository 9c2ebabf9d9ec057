"""The frame the synchronous image-API emulators (StepFun, Modelverse) share: config, auth, files, faults."""

from __future__ import annotations

import abc
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY_MASK = "**********"


class SyncEmulatorConfig(BaseModel):
    """Settings and fault switches every synchronous emulator has; subclasses add their own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    api_key: str | None = Field(
        None,
        repr=False,
        description="When set, `Authorization: Bearer <api_key>` must match; when None any non-empty bearer passes.",
    )
    latency_s: float = Field(0.02, ge=0, description="Seconds an accepted edit takes before it is answered.")
    url_ttl_s: float = Field(7200.0, ge=0, description="How long result files are served.")
    fail_statuses: list[Annotated[int, Field(ge=400, le=599)]] = Field(
        default_factory=list,
        description="HTTP statuses the next calls answer (in the provider's error envelope), each consumed once.",
    )
    retry_after_s: int | None = Field(
        1, ge=0, description="Retry-After sent with injected 429/503 answers; None sends no header."
    )

    def public_dump(self) -> dict[str, Any]:
        """The config as JSON for the control routes, with the API key masked."""
        data = self.model_dump(mode="json")
        if data["api_key"] is not None:
            data["api_key"] = API_KEY_MASK
        return data

    def merged(self, patch: dict[str, Any]) -> Self:
        """A new, validated config: this one with `patch` applied (a masked key keeps the old value)."""
        data = self.model_dump()
        data.update(patch)
        if data.get("api_key") == API_KEY_MASK:
            data["api_key"] = self.api_key
        return type(self).model_validate(data)


ConfigT = TypeVar("ConfigT", bound=SyncEmulatorConfig)


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str
    expires_at: float


def base_url(request: Request) -> str:
    """scheme://host:port plus the mount prefix, as the caller addressed us."""
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


def new_request_id() -> str:
    return secrets.token_hex(16)


class SyncEmulator(abc.ABC, Generic[ConfigT]):
    """One synchronous edit route (`edit_path`), the result files it serves at `/files/{name}`, and the
    control routes `GET/POST /_emulator/config`. `calls` counts calls to the edit route; `received`
    keeps what each one asked (text fields only)."""

    edit_path: ClassVar[str]

    def __init__(self, config: ConfigT, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.calls = 0
        self.received: list[dict[str, Any]] = []
        self._files: dict[str, StoredFile] = {}
        self.app = Starlette(
            routes=[
                Route(self.edit_path, self._edit_route, methods=["POST"]),
                Route("/files/{name}", self._file_route, methods=["GET"]),
                Route("/_emulator/config", self._get_config, methods=["GET"]),
                Route("/_emulator/config", self._set_config, methods=["POST"]),
            ],
            lifespan=lambda app: self.running(),
        )

    @abc.abstractmethod
    async def edit(self, request: Request) -> Response:
        """Answer one call of the edit route."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Lifespan: releases what the emulator holds on exit."""
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release clients and the like (nothing by default)."""

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if self.config.api_key is None:
            scheme, _, key = header.partition(" ")
            return scheme == "Bearer" and bool(key.strip())
        return hmac.compare_digest(header.encode(), f"Bearer {self.config.api_key}".encode())

    def take_failure(self) -> int | None:
        """The next injected failure status, consumed; None when the call goes through."""
        failures = self.config.fail_statuses
        return failures.pop(0) if failures else None

    def retry_headers(self, status: int) -> dict[str, str]:
        if status in (429, 503) and self.config.retry_after_s is not None:
            return {"Retry-After": str(self.config.retry_after_s)}
        return {}

    def store(self, request: Request, data: bytes, *, content_type: str, extension: str) -> str:
        """Serve `data` for `url_ttl_s` at an unguessable URL under this emulator's mount."""
        now = self.clock()
        for name in [name for name, stored in self._files.items() if now >= stored.expires_at]:
            del self._files[name]
        name = f"{secrets.token_urlsafe(16)}.{extension}"
        self._files[name] = StoredFile(data, content_type, now + self.config.url_ttl_s)
        return f"{base_url(request)}/files/{name}"

    async def _edit_route(self, request: Request) -> Response:
        self.calls += 1
        return await self.edit(request)

    async def _file_route(self, request: Request) -> Response:
        stored = self._files.get(request.path_params["name"])
        if stored is None or self.clock() >= stored.expires_at:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(stored.data, media_type=stored.content_type)

    async def _get_config(self, request: Request) -> Response:
        return JSONResponse(self.config.public_dump())

    async def _set_config(self, request: Request) -> Response:
        try:
            patch = json.loads(await request.body())
            if not isinstance(patch, dict):
                raise ValueError("the body must be a JSON object")
            self.config = self.config.merged(patch)
        except ValidationError as exc:
            return JSONResponse({"detail": json.loads(exc.json(include_url=False))}, status_code=422)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(self.config.public_dump())
