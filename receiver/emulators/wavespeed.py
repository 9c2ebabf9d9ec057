"""A local emulator of WaveSpeed's v3 (and v2) prediction API and its HMAC-signed webhooks (docs/providers.md §3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette

from receiver.emulators.imaging import EncodedImage, ImageError, decode_data_uri, edit_image
from receiver.emulators.wavespeed_config import TaskError, WaveSpeedEmulatorConfig, new_webhook_secret
from receiver.emulators.wavespeed_delivery import WebhookSender
from receiver.emulators.wavespeed_inputs import EditInput
from receiver.emulators.wavespeed_predictions import Prediction, PredictionStatus
from receiver.emulators.wavespeed_routes import build_app
from receiver.emulators.wavespeed_uploads import Uploads

__all__ = ["Prediction", "PredictionStatus", "WaveSpeedEmulator", "WaveSpeedEmulatorConfig"]

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 15.0
MAX_FETCH_BYTES = 20 * 1024 * 1024
DOWNLOAD_FAILED = TaskError.of(1402)
INTERNAL = TaskError.of(5000)


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str
    expires_at: float


class WaveSpeedEmulator:
    """WaveSpeed's predictions, model runs, CDN and webhook deliveries, in memory; `.app` serves them."""

    def __init__(
        self, config: WaveSpeedEmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config if config is not None else WaveSpeedEmulatorConfig()
        self.clock = clock
        self.predictions: dict[str, Prediction] = {}
        self.max_seen_concurrency = 0
        self._processing = 0
        self._waiting: list[Prediction] = []  # created predictions past queue_s, waiting for a slot, in order
        self._slot_freed = asyncio.Event()
        self._files: dict[str, StoredFile] = {}
        self.uploads = Uploads(self.keep_file)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._sender = WebhookSender(
            client=self.client,
            secret=lambda: self.config.webhook_secret,
            rogue_secret=new_webhook_secret(),
            clock=clock,
        )
        self.app: Starlette = build_app(self)

    @property
    def config(self) -> WaveSpeedEmulatorConfig:
        return self._config

    @config.setter
    def config(self, config: WaveSpeedEmulatorConfig) -> None:
        self._config = config
        self._wake_waiters()  # a raised concurrency_limit lets waiting predictions start

    # lifecycle

    def client(self) -> httpx.AsyncClient:
        """The emulator's own client for input downloads and webhook deliveries (made on first use)."""
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False, timeout=FETCH_TIMEOUT_S, trust_env=False)
        return self._http

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Lifespan: on exit, cancel every prediction and delivery and close the client."""
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

    # predictions

    def take_submit_failure(self) -> int | None:
        """The next injected submit failure status, consumed; None when submits are accepted."""
        failures = self.config.submit_failures
        return failures.pop(0) if failures else None

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
        self._drop_expired_files()
        task = asyncio.create_task(self._run(prediction), name=f"wavespeed-emulator-{prediction.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
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

    def file(self, name: str) -> StoredFile | None:
        stored = self._files.get(name)
        if stored is None or self.clock() >= stored.expires_at:
            return None
        return stored

    def keep_file(self, name: str, data: bytes, content_type: str, ttl_s: float) -> None:
        """Serve `data` at `/cdn/{name}` for `ttl_s` seconds."""
        self._drop_expired_files()
        self._files[name] = StoredFile(data, content_type, self.clock() + ttl_s)

    def _drop_expired_files(self) -> None:
        now = self.clock()
        for name in [name for name, stored in self._files.items() if now >= stored.expires_at]:
            del self._files[name]

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

    async def _run(self, prediction: Prediction) -> None:
        try:
            await asyncio.sleep(prediction.config.queue_s)
            await self._take_slot(prediction)
            try:
                await self._process(prediction)
            finally:
                self._release_slot()
            prediction.finished.set()
            await self._sender.deliver(prediction)
        finally:
            prediction.finished.set()  # never leave a sync-mode submit hanging

    async def _process(self, prediction: Prediction) -> None:
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
        await asyncio.sleep(max(0.0, prediction.config.inference_s - (time.perf_counter() - started)))
        prediction.inference_ms = max(1, round((time.perf_counter() - started) * 1000))
        if image is not None:
            prediction.complete(at=self.clock(), outputs=[self._store(prediction, image)])
        else:
            prediction.fail(at=self.clock(), error=error or INTERNAL)

    async def _edit(self, prediction: Prediction) -> EncodedImage:
        edit = prediction.input
        data = await self._load_input(edit.image)
        try:
            return await asyncio.to_thread(edit_image, data, edit.prompt, output_format="jpeg")
        except ImageError as exc:
            raise _TaskFailed(TaskError.of(1401, f"Invalid parameter image: {exc}")) from None

    async def _load_input(self, url: str) -> bytes:
        if url.startswith("data:"):
            try:
                return decode_data_uri(url)
            except ImageError as exc:
                raise _TaskFailed(TaskError.of(1401, f"Invalid parameter image: {exc}")) from None
        try:
            async with self.client().stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise _TaskFailed(DOWNLOAD_FAILED)
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_FETCH_BYTES:
                        raise _TaskFailed(DOWNLOAD_FAILED)
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL):
            raise _TaskFailed(DOWNLOAD_FAILED) from None
        return b"".join(chunks)

    def _store(self, prediction: Prediction, image: EncodedImage) -> str:
        name = f"{prediction.id}-1.{image.extension}"  # one output per prediction, as WaveSpeed's `/{id}/1.jpeg`
        config = prediction.config
        # Outputs go with their prediction: never served longer than result_ttl_s after its creation.
        expires_at = min(self.clock() + config.cdn_ttl_s, prediction.created_at + config.result_ttl_s)
        self._files[name] = StoredFile(image.data, image.content_type, expires_at)
        return f"{prediction.base_url}/cdn/{name}"


class _TaskFailed(Exception):
    def __init__(self, error: TaskError) -> None:
        super().__init__(error.message)
        self.error = error
