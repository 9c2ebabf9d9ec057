"""A local emulator of WaveSpeed's v3 (and v2) prediction API and its HMAC-signed webhooks
(docs/providers.md#wavespeed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from starlette.applications import Starlette

from receiver.emulators.base import DownloadFailed, JobEmulator
from receiver.emulators.imaging import EncodedImage, ImageError, edit_image
from receiver.emulators.wavespeed.config import TaskError, WaveSpeedEmulatorConfig, new_webhook_secret
from receiver.emulators.wavespeed.delivery import WaveSpeedWebhookSender
from receiver.emulators.wavespeed.inputs import EditInput
from receiver.emulators.wavespeed.predictions import Prediction, PredictionStatus
from receiver.emulators.wavespeed.routes import build_app
from receiver.emulators.wavespeed.uploads import Uploads

logger = logging.getLogger(__name__)

DOWNLOAD_FAILED = TaskError.of(1402)
INTERNAL = TaskError.of(5000)


class WaveSpeedEmulator(JobEmulator[WaveSpeedEmulatorConfig, Prediction]):
    """WaveSpeed's predictions, model runs, CDN and webhook deliveries, in memory; `.app` serves them."""

    task_prefix = "wavespeed-emulator"

    def __init__(
        self, config: WaveSpeedEmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config if config is not None else WaveSpeedEmulatorConfig()
        sender = WaveSpeedWebhookSender(
            client=self.client,
            secret=lambda: self.config.webhook_secret,
            rogue_secret=new_webhook_secret(),
            clock=clock,
        )
        super().__init__(clock=clock, sender=sender)
        self.predictions: dict[str, Prediction] = {}
        self.max_seen_concurrency = 0
        self._processing = 0
        self._waiting: list[Prediction] = []  # created predictions past queue_s, waiting for a slot, in order
        self._slot_freed = asyncio.Event()
        self.uploads = Uploads(self.keep_file)
        self.app: Starlette = build_app(self)

    @property
    def config(self) -> WaveSpeedEmulatorConfig:
        return self._config

    @config.setter
    def config(self, config: WaveSpeedEmulatorConfig) -> None:
        self._config = config
        self._wake_waiters()  # a raised concurrency_limit lets waiting predictions start

    # predictions

    def submit(
        self, *, model: str, version: str, edit: EditInput, webhook_url: str | None, base_url: str
    ) -> Prediction:
        """Create a prediction and start its background task."""
        task_error = self.config.take_task_error()
        prediction = Prediction(
            id=uuid.uuid4().hex,
            model=model,
            version=version,
            input=edit,
            config=self.config.model_copy(deep=True),
            webhook_url=webhook_url,
            base_url=base_url,
            created_at=self.clock(),
            task_error=task_error,
        )
        self.predictions[prediction.id] = prediction
        self.start(prediction.id, prediction)
        return prediction

    def find(self, prediction_id: str) -> Prediction | None:
        """A prediction the API still serves (None when unknown or past result_ttl_s)."""
        found = self.predictions.get(prediction_id)
        if found is None or found.expired(self.clock()):
            return None
        return found

    async def wait_finished(self, prediction: Prediction, *, timeout_s: float) -> bool:
        """Wait until the prediction completes or fails; False when `timeout_s` ran out first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(prediction.finished.wait(), timeout_s)
        return prediction.finished.is_set()

    def keep_file(self, name: str, data: bytes, content_type: str, ttl_s: float) -> None:
        """Serve `data` at `/cdn/{name}` for `ttl_s` seconds."""
        self.files.drop_expired()
        self.files.keep(name, data, content_type, expires_at=self.clock() + ttl_s)

    # concurrency slots

    def _may_start(self, prediction: Prediction) -> bool:
        limit = self.config.concurrency_limit
        return limit == 0 or self._processing + self._waiting.index(prediction) < limit

    def _wake_waiters(self) -> None:
        event, self._slot_freed = self._slot_freed, asyncio.Event()
        event.set()

    async def _take_slot(self, prediction: Prediction) -> None:
        """Wait, still `created`, until a slot is free and every earlier waiter has started."""
        self._waiting.append(prediction)
        try:
            while not self._may_start(prediction):
                await self._slot_freed.wait()
        finally:
            self._waiting.remove(prediction)
        self._processing += 1
        self.max_seen_concurrency = max(self.max_seen_concurrency, self._processing)

    def _release_slot(self) -> None:
        self._processing -= 1
        self._wake_waiters()

    # a prediction's life

    async def _wait_turn(self, prediction: Prediction) -> bool:
        await asyncio.sleep(prediction.config.queue_s)
        await self._take_slot(prediction)
        return True

    async def _process(self, prediction: Prediction) -> None:
        try:
            await self._run_model(prediction)
        finally:
            self._release_slot()

    async def _run_model(self, prediction: Prediction) -> None:
        prediction.status = PredictionStatus.PROCESSING
        prediction.started_at = self.clock()
        started = time.perf_counter()
        image: EncodedImage | None = None
        error = prediction.task_error
        if error is None:
            try:
                image = await self._edit(prediction)
            except _TaskFailed as exc:
                error = exc.error
            except Exception:  # a bug in the emulator still fails the task, as WaveSpeed's 5000 would
                logger.exception("wavespeed emulator: processing %s failed", prediction.id)
                error = INTERNAL
        prediction.inference_ms = max(1, round(await self.hold(prediction, started) * 1000))
        if image is not None:
            prediction.complete(at=self.clock(), outputs=[self._store(prediction, image)])
        else:
            prediction.fail(at=self.clock(), error=error or INTERNAL)

    async def _edit(self, prediction: Prediction) -> EncodedImage:
        edit = prediction.input
        try:
            data = await self.load_input(edit.image)
            return await asyncio.to_thread(edit_image, data, edit.prompt, output_format="jpeg")
        except ImageError as exc:
            raise _TaskFailed(TaskError.of(1401, f"Invalid parameter image: {exc}")) from None
        except DownloadFailed:
            raise _TaskFailed(DOWNLOAD_FAILED) from None

    def _store(self, prediction: Prediction, image: EncodedImage) -> str:
        name = f"{prediction.id}-1.{image.extension}"  # one output per prediction, as WaveSpeed's `/{id}/1.jpeg`
        config = prediction.config
        # Outputs go with their prediction: never served longer than result_ttl_s after its creation.
        expires_at = min(self.clock() + config.cdn_ttl_s, prediction.created_at + config.result_ttl_s)
        self.files.keep(name, image.data, image.content_type, expires_at=expires_at)
        return f"{prediction.base_url}/cdn/{name}"


class _TaskFailed(Exception):
    def __init__(self, error: TaskError) -> None:
        super().__init__(error.message)
        self.error = error
