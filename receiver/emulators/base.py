"""The shared base of the emulators: lifespan and HTTP client, configs with masked secrets, expiring files, key
checks; and `JobEmulator`, the life of a job that runs in the background and ends in a webhook (fal, WaveSpeed)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.emulators.imaging import decode_data_uri
from receiver.emulators.webhooks import JobConfig, JobT, WebhookSender

MASK = "**********"
FETCH_TIMEOUT_S = 15.0
MAX_FETCH_BYTES = 20 * 1024 * 1024


class EmulatorConfig(BaseModel):
    """Settings and fault switches, validated on every change; the control routes show `masked` fields masked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    masked: ClassVar[tuple[str, ...]] = ("api_key",)

    def public_dump(self) -> dict[str, Any]:
        """The config as JSON for the control routes, with the secrets masked."""
        data = self.model_dump(mode="json")
        for name in self.masked:
            if data[name] is not None:
                data[name] = MASK
        return data

    def merged(self, patch: dict[str, Any]) -> Self:
        """A new, validated config: this one with `patch` applied (a masked value keeps the old one)."""
        data = self.model_dump()
        data.update(patch)
        for name in self.masked:
            if data.get(name) == MASK:
                data[name] = getattr(self, name)
        return type(self).model_validate(data)


ConfigModelT = TypeVar("ConfigModelT", bound=EmulatorConfig)


class ConfigRejected(Exception):
    """A config patch the control route refuses; `detail` is pydantic's error list or the reason."""

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors = errors
        self.detail: Any = message if errors is None else errors


class Configurable(Protocol[ConfigModelT]):
    config: ConfigModelT


def detail_rejected(exc: ConfigRejected) -> Response:
    """A refused config patch as fal (and the synchronous emulators) shape errors: 422 `{"detail": ...}`."""
    return JSONResponse({"detail": exc.detail}, status_code=422)


def config_routes(
    emulator: Configurable[ConfigModelT], *, rejected: Callable[[ConfigRejected], Response] = detail_rejected
) -> list[Route]:
    """`GET /_emulator/config` (secrets masked) and `POST /_emulator/config` (a JSON object patching it)."""

    async def get_config(request: Request) -> Response:
        return JSONResponse(emulator.config.public_dump())

    async def set_config(request: Request) -> Response:
        try:
            emulator.config = await patched_config(request, emulator.config)
        except ConfigRejected as exc:
            return rejected(exc)
        return JSONResponse(emulator.config.public_dump())

    return [
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", set_config, methods=["POST"]),
    ]


async def patched_config(request: Request, config: ConfigModelT) -> ConfigModelT:
    """`config` with the request's JSON object applied; raises `ConfigRejected`."""
    try:
        patch = json.loads(await request.body())
        if not isinstance(patch, dict):
            raise ValueError("the body must be a JSON object")
        return config.merged(patch)
    except ValidationError as exc:
        raise ConfigRejected("invalid config", json.loads(exc.json(include_url=False))) from None
    except ValueError as exc:
        raise ConfigRejected(str(exc)) from None


def cut_short(text: str, limit: int = 120) -> str:
    """Long inputs (data URIs) as the control routes show them."""
    return text if len(text) <= limit else text[:limit] + "..."


def key_matches(header: str, *, scheme: str, expected: str | None) -> bool:
    """Whether an `Authorization` header carries `scheme expected`; any non-empty key passes when none is set."""
    if expected is None:
        given, _, key = header.partition(" ")
        return given == scheme and bool(key.strip())
    return hmac.compare_digest(header.encode(), f"{scheme} {expected}".encode())


def base_url(request: Request) -> str:
    """scheme://host:port plus the mount prefix, as the caller addressed us."""
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str
    expires_at: float


class Files:
    """The files an emulator serves (its CDN), each until it expires."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._files: dict[str, StoredFile] = {}

    def get(self, name: str) -> StoredFile | None:
        stored = self._files.get(name)
        if stored is None or self._clock() >= stored.expires_at:
            return None
        return stored

    def keep(self, name: str, data: bytes, content_type: str, *, expires_at: float) -> None:
        self._files[name] = StoredFile(data, content_type, expires_at)

    def drop_expired(self) -> None:
        now = self._clock()
        for name in [name for name, stored in self._files.items() if now >= stored.expires_at]:
            del self._files[name]


class Emulator:
    """What every emulator has: an HTTP client made on first use, and a lifespan that releases it."""

    def __init__(self) -> None:
        self._http: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        """The emulator's own client for input downloads and webhook deliveries (made on first use)."""
        if self._http is None:
            # Webhooks never follow a redirect; input downloads ask to per call.
            self._http = httpx.AsyncClient(follow_redirects=False, timeout=FETCH_TIMEOUT_S, trust_env=False)
        return self._http

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Lifespan: on exit, release what the emulator holds."""
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def download(self, url: str, max_bytes: int) -> bytes:
        """An input link's body (redirects followed), of at most `max_bytes`. Raises DownloadRefused for an
        answer other than 200 or a longer body; httpx's errors pass through."""
        async with self.client().stream("GET", url, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadRefused(response.status_code)
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadRefused(None)
                chunks.append(chunk)
        return b"".join(chunks)


class DownloadRefused(Exception):
    """`Emulator.download` got an answer other than 200 (its `status`), or a body past the cap (`status` None)."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status)
        self.status = status


class DownloadFailed(Exception):
    """An input URL could not be downloaded; the message says why, in fal's words."""


class SubmitConfig(JobConfig, Protocol):
    """An emulator's live config: a job's settings, plus the submit failures still to inject."""

    @property
    def submit_failures(self) -> list[int]: ...


SubmitConfigT = TypeVar("SubmitConfigT", bound=SubmitConfig)


class JobEmulator(Emulator, abc.ABC, Generic[SubmitConfigT, JobT]):
    """Jobs that wait their turn, run in the background, then deliver their webhook with the provider's sender.

    A job's life: `_wait_turn` (queued), `_process` (running, then an outcome), `finished` set, the webhook
    delivered; on any exit `finished` and `first_attempt_done` are set so no waiting submit hangs.
    """

    task_prefix: ClassVar[str]  # names the jobs' asyncio tasks, `{task_prefix}-{job id}`
    config: SubmitConfigT  # the live config; each job keeps a copy of the one it was submitted under

    def __init__(self, *, clock: Callable[[], float], sender: WebhookSender[JobT]) -> None:
        super().__init__()
        self.clock = clock
        self.files = Files(clock)
        self._sender = sender
        self._tasks: set[asyncio.Task[None]] = set()

    @abc.abstractmethod
    async def _wait_turn(self, job: JobT) -> bool:
        """Wait while the job is queued; False when it ended there (a cancel) and is not to be processed."""

    @abc.abstractmethod
    async def _process(self, job: JobT) -> None:
        """Run the job and record its outcome."""

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().aclose()

    def take_submit_failure(self) -> int | None:
        """The next injected submit failure status, consumed; None when submits are accepted."""
        failures = self.config.submit_failures
        return failures.pop(0) if failures else None

    def file(self, name: str) -> StoredFile | None:
        return self.files.get(name)

    def start(self, job_id: str, job: JobT) -> None:
        """Run the job's life in a background task (cancelled by `aclose`)."""
        self.files.drop_expired()
        task = asyncio.create_task(self._run(job), name=f"{self.task_prefix}-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step never runs `_run`'s `finally`: a fal.run caller would wait forever.
        task.add_done_callback(lambda _: job.finished.set())
        task.add_done_callback(lambda _: job.first_attempt_done.set())

    async def _run(self, job: JobT) -> None:
        try:
            if await self._wait_turn(job):
                await self._process(job)
            job.finished.set()
            await self._sender.deliver(job)
        finally:
            job.finished.set()  # never leave a sync-mode or fal.run submit hanging
            job.first_attempt_done.set()  # nor a webhook_before_response one

    async def hold(self, job: JobT, started: float) -> float:
        """Wait until the job has run at least `inference_s` since `started` (perf_counter); the seconds it ran."""
        await asyncio.sleep(max(0.0, job.config.inference_s - (time.perf_counter() - started)))
        return time.perf_counter() - started

    async def load_input(self, url: str) -> bytes:
        """An input image: a data URI's bytes (raises `ImageError`), else downloaded (raises `DownloadFailed`)."""
        if url.startswith("data:"):
            return decode_data_uri(url)
        try:
            return await self.download(url, MAX_FETCH_BYTES)
        except DownloadRefused as exc:
            why = f"HTTP {exc.status} from {url}" if exc.status is not None else f"larger than {MAX_FETCH_BYTES} bytes"
            raise DownloadFailed(f"Failed to download the file: {why}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise DownloadFailed(f"Failed to download the file: {type(exc).__name__}: {exc}".rstrip(": ")) from None
