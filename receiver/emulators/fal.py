"""A local emulator of fal's queue API, its synchronous fal.run and signed completion webhooks (providers.md §1-2)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette

from receiver.emulators.fal_config import FalEmulatorConfig
from receiver.emulators.fal_delivery import WebhookSender
from receiver.emulators.fal_models import EditPlan, build_output
from receiver.emulators.fal_requests import (
    CANCELLED,
    INTERNAL,
    MODEL_ERROR,
    Failure,
    FalRequest,
    RequestStatus,
)
from receiver.emulators.fal_routes import build_app
from receiver.emulators.fal_run import build_run_app
from receiver.emulators.imaging import EncodedImage, ImageError, decode_data_uri, edit_image, pick_edit
from receiver.ingest.signatures import public_jwk

__all__ = ["FalEmulator", "FalEmulatorConfig", "FalRequest", "RequestStatus"]

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 15.0
MAX_FETCH_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str
    expires_at: float


class FalEmulator:
    """fal's queue, model runs, CDN, JWKS and webhook deliveries, in memory; `.app` serves them."""

    def __init__(
        self,
        config: FalEmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.config = config if config is not None else FalEmulatorConfig()
        self.clock = clock
        self.requests: dict[str, FalRequest] = {}
        self._signing_key = signing_key if signing_key is not None else Ed25519PrivateKey.generate()
        self._files: dict[str, StoredFile] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._seq = itertools.count()
        self._sender = WebhookSender(
            client=self.client,
            signing_key=lambda: self._signing_key,
            rogue_key=Ed25519PrivateKey.generate(),
            clock=clock,
        )
        self.app: Starlette = build_app(self)  # queue.fal.run, plus the JWKS, the CDN and control routes
        self.run_app: Starlette = build_run_app(self)  # fal.run, the synchronous endpoint

    # keys

    def jwks(self) -> dict[str, Any]:
        raw = self._signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"keys": [public_jwk(self._signing_key, kid=hashlib.sha256(raw).hexdigest()[:16])]}

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the JWKS lists only the new one."""
        self._signing_key = Ed25519PrivateKey.generate()

    # lifecycle

    def client(self) -> httpx.AsyncClient:
        """The emulator's own client for input downloads and webhook deliveries (made on first use)."""
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False, timeout=FETCH_TIMEOUT_S, trust_env=False)
        return self._http

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Lifespan: on exit, cancel every job and delivery and close the client."""
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    # queue

    def take_submit_failure(self) -> int | None:
        """The next injected submit failure status, consumed; None when submits are accepted."""
        failures = self.config.submit_failures
        return failures.pop(0) if failures else None

    def submit(
        self, *, model_id: str, app_id: str, plan: EditPlan, webhook_url: str | None, base_url: str
    ) -> FalRequest:
        """Queue a request and start its background task."""
        request = FalRequest(
            request_id=str(uuid.uuid4()),
            seq=next(self._seq),
            model_id=model_id,
            app_id=app_id,
            plan=plan,
            config=self.config.model_copy(deep=True),
            webhook_url=webhook_url,
            base_url=base_url,
            submitted_at=self.clock(),
        )
        self.requests[request.request_id] = request
        self._drop_expired_files()
        task = asyncio.create_task(self._run(request), name=f"fal-emulator-{request.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step never runs `_run`'s `finally`: a fal.run caller would wait forever.
        task.add_done_callback(lambda _: request.first_attempt_done.set())
        return request

    def queue_position(self, request: FalRequest) -> int:
        return sum(
            1 for other in self.requests.values() if other.status is RequestStatus.IN_QUEUE and other.seq < request.seq
        )

    def cancel(self, request: FalRequest) -> bool:
        """Ask to cancel: a queued request completes as cancelled now; False when already completed."""
        if request.status is RequestStatus.COMPLETED:
            return False
        request.cancel_requested = True
        if request.status is RequestStatus.IN_QUEUE:
            request.log("Request cancelled while in queue", at=self.clock(), level="WARN")
            request.complete(at=self.clock(), failure=CANCELLED)
            request.cancelled.set()
        return True

    def file(self, name: str) -> StoredFile | None:
        stored = self._files.get(name)
        if stored is None or self.clock() >= stored.expires_at:
            return None
        return stored

    def _drop_expired_files(self) -> None:
        now = self.clock()
        for name in [name for name, stored in self._files.items() if now >= stored.expires_at]:
            del self._files[name]

    # a request's life

    async def _run(self, request: FalRequest) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.cancelled.wait(), request.config.queue_s)
            if request.status is not RequestStatus.COMPLETED:
                await self._process(request)
            await self._sender.deliver(request)
        finally:
            request.first_attempt_done.set()  # never leave a webhook_before_response submit hanging

    async def _process(self, request: FalRequest) -> None:
        config, plan = request.config, request.plan
        request.status = RequestStatus.IN_PROGRESS
        request.started_at = self.clock()
        request.log(f"Running {request.model_id}", at=self.clock())
        started = time.perf_counter()
        image: EncodedImage | None = None
        failure: Failure | None = None
        try:
            if config.model_error:
                raise _JobFailed(MODEL_ERROR)
            image = await self._edit(request)
            request.log(f"Applied edit '{pick_edit(plan.prompt)}'", at=self.clock())
        except _JobFailed as exc:
            failure = exc.failure
        except Exception:  # a bug in the emulator still completes the request, as fal's 500 would
            logger.exception("fal emulator: processing %s failed", request.request_id)
            failure = INTERNAL
        await asyncio.sleep(max(0.0, config.inference_s - (time.perf_counter() - started)))
        request.inference_time_s = round(time.perf_counter() - started, 4)
        output: dict[str, Any] | None = None
        if image is not None:
            seed = plan.seed if plan.seed is not None else random.randint(0, 2**31 - 1)
            urls = [self._store(request, image) for _ in range(plan.num_images)]
            output = build_output(plan, [(url, image) for url in urls], seed=seed, inference_s=request.inference_time_s)
            request.log(f"Generated {plan.num_images} image(s)", at=self.clock())
        elif failure is not None:
            request.log(failure.error, at=self.clock(), level="ERROR")
        request.complete(at=self.clock(), output=output, failure=failure)

    async def _edit(self, request: FalRequest) -> EncodedImage:
        plan = request.plan
        data = await self._load_input(plan.image_url)
        try:
            return await asyncio.to_thread(
                edit_image, data, plan.prompt, output_format=plan.output_format, size=plan.size
            )
        except ImageError as exc:
            raise _JobFailed(Failure.validation("image_url", str(exc), "image_load_error")) from None

    async def _load_input(self, url: str) -> bytes:
        if url.startswith("data:"):
            try:
                return decode_data_uri(url)
            except ImageError as exc:
                raise _JobFailed(Failure.validation("image_url", str(exc), "image_load_error")) from None
        if not url.startswith(("http://", "https://")):
            msg = "image_url must be an http(s) URL or a data URI"
            raise _JobFailed(Failure.validation("image_url", msg, "file_download_error"))
        try:
            async with self.client().stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    msg = f"Failed to download the file: HTTP {response.status_code} from {url}"
                    raise _JobFailed(Failure.validation("image_url", msg, "file_download_error"))
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_FETCH_BYTES:
                        msg = f"Failed to download the file: larger than {MAX_FETCH_BYTES} bytes"
                        raise _JobFailed(Failure.validation("image_url", msg, "file_download_error"))
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            msg = f"Failed to download the file: {type(exc).__name__}: {exc}".rstrip(": ")
            raise _JobFailed(Failure.validation("image_url", msg, "file_download_error")) from None
        return b"".join(chunks)

    def _store(self, request: FalRequest, image: EncodedImage) -> str:
        name = f"{secrets.token_urlsafe(16)}.{image.extension}"
        expires_at = self.clock() + request.config.cdn_ttl_s
        self._files[name] = StoredFile(image.data, image.content_type, expires_at)
        return f"{request.base_url}/cdn/files/{name}"


class _JobFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error)
        self.failure = failure
