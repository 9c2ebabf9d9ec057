"""A local emulator of fal's queue API, its synchronous fal.run and signed completion webhooks
(docs/providers.md#fal-queue-api, docs/providers.md#fal-webhooks)."""

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
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette

from receiver.emulators.base import DownloadFailed, JobEmulator
from receiver.emulators.fal.config import FalEmulatorConfig
from receiver.emulators.fal.delivery import FalWebhookSender
from receiver.emulators.fal.models import EditPlan, build_output
from receiver.emulators.fal.requests import CANCELLED, INTERNAL, MODEL_ERROR, Failure, FalRequest, RequestStatus
from receiver.emulators.fal.routes import build_app
from receiver.emulators.fal.run import build_run_app
from receiver.emulators.imaging import EncodedImage, ImageError, edit_image, pick_edit
from receiver.ingest.signatures import public_jwk

logger = logging.getLogger(__name__)


class FalEmulator(JobEmulator[FalEmulatorConfig, FalRequest]):
    """fal's queue, model runs, CDN, JWKS and webhook deliveries, in memory; `.app` serves them."""

    task_prefix = "fal-emulator"

    def __init__(
        self,
        config: FalEmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self._signing_key = signing_key if signing_key is not None else Ed25519PrivateKey.generate()
        sender = FalWebhookSender(
            client=self.client,
            signing_key=lambda: self._signing_key,
            rogue_key=Ed25519PrivateKey.generate(),
            clock=clock,
        )
        super().__init__(clock=clock, sender=sender)
        self.config = config if config is not None else FalEmulatorConfig()
        self.requests: dict[str, FalRequest] = {}
        self._seq = itertools.count()
        self.app: Starlette = build_app(self)  # queue.fal.run, plus the JWKS, the CDN and control routes
        self.run_app: Starlette = build_run_app(self)  # fal.run, the synchronous endpoint

    # keys

    def jwks(self) -> dict[str, Any]:
        raw = self._signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"keys": [public_jwk(self._signing_key, kid=hashlib.sha256(raw).hexdigest()[:16])]}

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the JWKS lists only the new one."""
        self._signing_key = Ed25519PrivateKey.generate()

    # queue

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
        self.start(request.request_id, request)
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

    # a request's life

    async def _wait_turn(self, request: FalRequest) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request.cancelled.wait(), request.config.queue_s)
        return request.status is not RequestStatus.COMPLETED

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
        request.inference_time_s = round(await self.hold(request, started), 4)
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
        if not plan.image_url.startswith(("data:", "http://", "https://")):
            msg = "image_url must be an http(s) URL or a data URI"
            raise _JobFailed(Failure.validation("image_url", msg, "file_download_error"))
        try:
            data = await self.load_input(plan.image_url)
            return await asyncio.to_thread(
                edit_image, data, plan.prompt, output_format=plan.output_format, size=plan.size
            )
        except ImageError as exc:
            raise _JobFailed(Failure.validation("image_url", str(exc), "image_load_error")) from None
        except DownloadFailed as exc:
            raise _JobFailed(Failure.validation("image_url", str(exc), "file_download_error")) from None

    def _store(self, request: FalRequest, image: EncodedImage) -> str:
        name = f"{secrets.token_urlsafe(16)}.{image.extension}"
        self.files.keep(name, image.data, image.content_type, expires_at=self.clock() + request.config.cdn_ttl_s)
        return f"{request.base_url}/cdn/files/{name}"


class _JobFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error)
        self.failure = failure
