"""The `fetch_images` task: copy a succeeded job's result images (and its input) into the blob store, checked
(thumbnails are made when first asked for: `receiver.images.thumbnails`), then announce `job.succeeded`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from receiver.errors import GiveUpError, RetryLaterError
from receiver.images.blobs import BlobStore
from receiver.images.checks import check_image
from receiver.images.download import FetchPolicy, fetch_url
from receiver.models import Job, JobStatus, Task
from receiver.observability import logs, metrics
from receiver.results import decode_data_uri, inline_bytes
from receiver.settings import Settings
from receiver.storage import images, jobs
from receiver.storage.base import Database, Transaction
from receiver.tasks.runner import TaskContext

log = logging.getLogger(__name__)
FETCH_ATTEMPTS = 6  # with the policy below, all tries fit in fal's shortest result lifetime (6 min)


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A checked image in the blob store (its thumbnail is made when first asked for)."""

    sha256: str
    content_type: str
    width: int
    height: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ImageRow:
    role: str
    position: int
    source_url: str | None
    stored: StoredImage | None = None
    error: str | None = None


class ImageSource(Protocol):
    """What the copy needs to know of a provider (`receiver.providers.base.Provider` has both)."""

    @property
    def result_hosts(self) -> tuple[str, ...]: ...

    @property
    def image_field(self) -> str: ...


Announce = Callable[[Transaction, str, str, Task, TaskContext], None]
"""Finish the task and emit the job's event in the caller's transaction (`receiver.notify.announcer`)."""


class ImageFetcher:
    """The `fetch_images` task handler."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        providers: Mapping[str, ImageSource],
        blobs: BlobStore,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float],
        announce: Announce,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.providers = providers
        self.blobs = blobs
        self.http = http
        self.clock = clock
        self.announce = announce
        self.on_event = on_event
        self.policy = FetchPolicy(
            max_bytes=settings.fetch_max_bytes, allow_private=settings.fetch_allow_private, timeout_s=30.0
        )

    async def handle_fetch_images(self, task: Task, ctx: TaskContext) -> None:
        """Store every output image (and the input, for before/after); a permanent failure is recorded
        on the job without failing the edit. Then `job.succeeded` goes out, carrying our image URLs."""
        job = await jobs.read(self.db, str(task.job_id))
        logs.bind(provider=job.provider)
        if job.status is not JobStatus.SUCCEEDED:
            return
        provider = self.providers[job.provider]
        allowed = (*provider.result_hosts, *self.settings.extra_fetch_hosts)
        last_try = task.attempts >= FETCH_ATTEMPTS
        rows: list[ImageRow] = []
        transient: RetryLaterError | None = None
        outputs = (job.result or {}).get("images") or []
        for position, image in enumerate(outputs):
            source = image.get("url") or f"(inline: {(image.get('inline') or {}).get('source')})"
            try:
                data = await self._output_bytes(job, image, allowed)
                rows.append(ImageRow("output", position, source, stored=await self._store(data)))
            except GiveUpError as exc:
                rows.append(ImageRow("output", position, source, error=f"{exc.code}: {exc.message}"))
            except RetryLaterError as exc:
                transient = exc
                rows.append(ImageRow("output", position, source, error=f"{exc.code}: {exc.message}"))
        rows.append(await self._input_row(job, provider))
        if transient is not None and not last_try:
            await self._write_rows(job.id, [row for row in rows if row.stored is not None])
            raise transient
        failed = [row for row in rows if row.role == "output" and row.stored is None]
        status = "failed" if failed or not outputs else "stored"
        error = "; ".join(f"image {row.position}: {row.error}" for row in failed) or (
            None if outputs else "the provider returned no images"
        )

        def write(tx: Transaction) -> None:
            self._write(tx, job.id, rows)
            images.set_images_done(tx, job.id, status=status, error=error, now=self.clock())
            self.announce(tx, job.id, "job.succeeded", task, ctx)

        await self.db.write(write)
        ctx.finished = True
        self.on_event()

    async def _output_bytes(self, job: Job, image: dict[str, Any], allowed: tuple[str, ...]) -> bytes:
        url = image.get("url")
        if isinstance(url, str):
            return (await fetch_url(self.http, url, self.policy, allowed_hosts=allowed)).data
        source = (image.get("inline") or {}).get("source", "")
        try:
            return inline_bytes(job.provider_result, source)
        except ValueError as exc:
            raise GiveUpError(str(exc), code="inline_image_missing") from exc

    async def _input_row(self, job: Job, provider: ImageSource) -> ImageRow:
        value = job.input.get(provider.image_field)
        if not isinstance(value, str):
            return ImageRow("input", 0, None, error="no input image in the job")
        shown = "(inline)" if value.startswith("data:") else value
        try:
            if value.startswith("data:"):
                data = decode_data_uri(value)[1]
            elif value.startswith(f"{self.settings.public_url}/inputs/"):
                data = await self._served_input(value.rsplit("/", 1)[1])
            else:
                data = (await fetch_url(self.http, value, self.policy)).data
            return ImageRow("input", 0, shown, stored=await self._store(data))
        except (GiveUpError, RetryLaterError, ValueError) as exc:
            return ImageRow("input", 0, shown, error=str(exc))
        except Exception as exc:  # the input copy is a nicety: never let it block the notification
            log.warning("job %s: storing the input image failed: %r", job.id, exc)
            return ImageRow("input", 0, shown, error=repr(exc))

    async def _served_input(self, key: str) -> bytes:
        """An input we serve to the provider ourselves (`/inputs/{key}`)."""
        _, data = await jobs.read_input(self.db, key)
        return data

    async def _store(self, data: bytes) -> StoredImage:
        """Check `data` (PNG, JPEG or WebP, within the pixel cap; every pixel decoded, on a worker thread; a
        GiveUpError otherwise), then store it. Its thumbnail waits until someone asks for it."""
        content_type, width, height = await asyncio.to_thread(
            check_image, data, max_pixels=self.settings.fetch_max_pixels
        )
        sha256 = await self.blobs.put(data, content_type=content_type)
        metrics.IMAGE_BYTES.labels("stored").inc(len(data))
        return StoredImage(sha256, content_type, width, height, len(data))

    async def _write_rows(self, job_id: str, rows: list[ImageRow]) -> None:
        await self.db.write(lambda tx: self._write(tx, job_id, rows))

    def _write(self, tx: Transaction, job_id: str, rows: list[ImageRow]) -> None:
        now = self.clock()
        for row in rows:
            image = row.stored
            if image is not None:
                images.upsert_image(
                    tx,
                    image.sha256,
                    content_type=image.content_type,
                    width=image.width,
                    height=image.height,
                    bytes=image.bytes,
                    thumbnail_sha256=None,
                    now=now,
                )
            images.upsert_job_image(
                tx,
                job_id,
                role=row.role,
                position=row.position,
                sha256=image.sha256 if image else None,
                source_url=row.source_url,
                error=row.error,
                now=now,
            )
