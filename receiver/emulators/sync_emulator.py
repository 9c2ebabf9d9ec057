"""The frame the synchronous image-API emulators (StepFun, Modelverse) share: config, auth, files, faults."""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.emulators.base import Emulator, EmulatorConfig, Files, base_url, config_routes, key_matches


class SyncEmulatorConfig(EmulatorConfig):
    """Settings and fault switches every synchronous emulator has; subclasses add their own."""

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


ConfigT = TypeVar("ConfigT", bound=SyncEmulatorConfig)


def new_request_id() -> str:
    return secrets.token_hex(16)


class SyncEmulator(Emulator, abc.ABC, Generic[ConfigT]):
    """One synchronous edit route (`edit_path`), the result files it serves at `/files/{name}`, and the
    control routes `GET/POST /_emulator/config`. `calls` counts calls to the edit route; `received`
    keeps what each one asked (text fields only)."""

    edit_path: ClassVar[str]

    def __init__(self, config: ConfigT, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.calls = 0
        self.received: list[dict[str, Any]] = []
        self._files = Files(clock)
        self.app = Starlette(
            routes=[
                Route(self.edit_path, self._edit_route, methods=["POST"]),
                Route("/files/{name}", self._file_route, methods=["GET"]),
                *config_routes(self),
            ],
            lifespan=lambda app: self.running(),
        )

    @abc.abstractmethod
    async def edit(self, request: Request) -> Response:
        """Answer one call of the edit route."""

    def authorized(self, request: Request) -> bool:
        return key_matches(request.headers.get("authorization", ""), scheme="Bearer", expected=self.config.api_key)

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
        self._files.drop_expired()
        name = f"{secrets.token_urlsafe(16)}.{extension}"
        self._files.keep(name, data, content_type, expires_at=self.clock() + self.config.url_ttl_s)
        return f"{base_url(request)}/files/{name}"

    async def _edit_route(self, request: Request) -> Response:
        self.calls += 1
        return await self.edit(request)

    async def _file_route(self, request: Request) -> Response:
        stored = self._files.get(request.path_params["name"])
        if stored is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(stored.data, media_type=stored.content_type)
