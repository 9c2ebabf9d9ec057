"""Wiring: builds the database, job store, HTTP client, providers, job service and workers from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from receiver.images.blobs import BlobStore, blob_store_for
from receiver.images.download import FetchPolicy
from receiver.images.fetch_images import FETCH_ATTEMPTS, ImageFetcher
from receiver.ingest.jwks import JwksCache
from receiver.ingest.verifier import ThreadedVerifier
from receiver.jobs.reconciler import Reconciler
from receiver.jobs.retention import Retention
from receiver.jobs.service import JobService
from receiver.jobs.store import JobStore
from receiver.notify.alerts import Alerter, AlertPolicy
from receiver.notify.announcer import Announcer
from receiver.notify.delivery import Deliverer
from receiver.notify.secrets import seal_stored_credentials
from receiver.notify.stream import EventHub, EventTail
from receiver.notify.subscriptions import Subscriptions
from receiver.providers.base import Provider
from receiver.providers.fal import FalProvider
from receiver.providers.modelverse import ModelverseProvider
from receiver.providers.stepfun import StepFunProvider
from receiver.providers.wavespeed import WaveSpeedProvider
from receiver.settings import Settings
from receiver.storage.backends import database_for
from receiver.storage.base import Database
from receiver.support.sealing import Sealer
from receiver.tasks.lanes import DELIVERY_KINDS, IMAGE_KINDS, PROVIDER_KINDS, Pool
from receiver.tasks.queue import Outbox
from receiver.tasks.retry import RetryPolicy
from receiver.tasks.runner import TaskKind, TaskRunner


@dataclass
class Services:
    settings: Settings
    db: Database
    store: JobStore
    outbox: Outbox
    http: httpx.AsyncClient
    providers: dict[str, Provider]
    jobs: JobService
    runner: TaskRunner
    reconciler: Reconciler
    secret: bytes = field(repr=False)  # the server secret key: never in a repr
    clock: Callable[[], float]
    blobs: BlobStore
    image_fetcher: ImageFetcher
    announcer: Announcer
    deliverer: Deliverer
    subscriptions: Subscriptions
    hub: EventHub
    retention: Retention
    alerter: Alerter | None = None  # RECEIVER_ALERT_SUBSCRIPTION set: the worker role runs it

    @contextlib.asynccontextmanager
    async def woken_by_others(self, *, runner: bool) -> AsyncIterator[None]:
        """For the block's length, wake this process when another one commits to the database: its live
        streams (`/v1/stream`) always, its task runner too with `runner` (a worker). The wake-ups inside
        this process stay as they are."""
        tail, wake_runner = EventTail(self.db, self.hub), self.runner.wake

        def changed() -> None:
            tail.changed()
            if runner:
                wake_runner()

        try:
            async with self.db.watching(changed):
                yield
        finally:
            await tail.aclose()

    @contextlib.asynccontextmanager
    async def workers(self) -> AsyncIterator[None]:
        """Run the task runner, the reconciler and retention in this event loop for the duration of the
        block: what `receiver serve --role worker` runs (the web roles run none of them)."""
        running = [
            asyncio.create_task(self.runner.run(), name="task-runner"),
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self.retention.run(), name="retention"),
        ]
        if self.alerter is not None:
            running.append(asyncio.create_task(self.alerter.run(), name="alerter"))
        try:
            yield
        finally:
            self.reconciler.stop()
            self.retention.stop()
            if self.alerter is not None:
                self.alerter.stop()
            await self.runner.stop()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


def build_providers(
    settings: Settings, http: httpx.AsyncClient, clock: Callable[[], float], *, verifier: ThreadedVerifier | None = None
) -> dict[str, Provider]:
    jwks = JwksCache(
        http,
        settings.fal_jwks_url,
        clock=clock,
        max_age_s=settings.jwks_max_age_s,
        refetch_interval_s=settings.jwks_refetch_interval_s,
    )
    fetch_policy = FetchPolicy(
        max_bytes=settings.fetch_max_bytes,
        allow_private=settings.fetch_allow_private,
        timeout_s=settings.provider_timeout_s,
    )
    providers: list[Provider] = [
        FalProvider(
            http,
            queue_url=settings.fal_queue_url,
            key=settings.fal_key,
            jwks=jwks,
            user_id=settings.fal_user_id,
            tolerance_s=settings.webhook_tolerance_s,
            timeout_s=settings.provider_timeout_s,
            clock=clock,
            first_poll_after_s=settings.reconcile_after_s,
            poll_interval_s=settings.poll_interval_s,
            concurrency=settings.fal_concurrency,
            rate_per_min=settings.fal_rate_per_min,
            verifier=verifier,
        ),
        WaveSpeedProvider(
            http,
            base_url=settings.wavespeed_url,
            key=settings.wavespeed_api_key,
            webhook_secret=settings.wavespeed_webhook_secret,
            webhooks=settings.wavespeed_webhooks,
            timeout_s=settings.provider_timeout_s,
            tolerance_s=settings.webhook_tolerance_s,
            clock=clock,
            first_poll_after_s=settings.wavespeed_poll_after_s,
            poll_interval_s=settings.wavespeed_poll_interval_s,
            concurrency=settings.wavespeed_concurrency,
            rate_per_min=settings.wavespeed_rate_per_min,
            max_attempts=settings.wavespeed_max_attempts,
        ),
        StepFunProvider(
            http,
            base_url=settings.stepfun_url,
            key=settings.step_api_key,
            timeout_s=settings.sync_timeout_s,
            fetch_policy=fetch_policy,
            concurrency=settings.stepfun_concurrency,
            rate_per_min=settings.stepfun_rate_per_min,
        ),
        ModelverseProvider(
            http,
            base_url=settings.modelverse_url,
            key=settings.modelverse_api_key,
            timeout_s=settings.sync_timeout_s,
            fetch_policy=fetch_policy,
            concurrency=settings.modelverse_concurrency,
            rate_per_min=settings.modelverse_rate_per_min,
        ),
    ]
    return {provider.name: provider for provider in providers}


def task_pools(settings: Settings, *, providers: int) -> list[Pool]:
    """Provider calls, image copies and deliveries get slots of their own, capped per provider and per
    target; everything else (event fan-out) shares RECEIVER_TASK_CONCURRENCY slots.

    Slots follow what the work waits on: provider calls, image downloads and deliveries wait on the network,
    so their pools are wide; the CPU part of an image copy (decoding) runs on the thread pool. A claim takes
    work that finishes a job before work that starts one (`receiver.storage.tasks.claim_round`), so under load the
    submits wait, not the jobs already at the provider.
    """
    per_provider = settings.task_provider_concurrency
    images = settings.image_concurrency
    return [
        # Every provider may fill its lane at once: the pool is never the bottleneck, the lane is.
        Pool("provider", PROVIDER_KINDS, concurrency=per_provider * providers, per_lane=per_provider),
        # Image copies: a provider whose file host hangs holds at most half of the slots.
        Pool("images", IMAGE_KINDS, concurrency=images, per_lane=max(1, images // 2)),
        Pool(
            "deliver",
            DELIVERY_KINDS,
            concurrency=settings.notify_concurrency,
            # Sending is capped per target by the deliverer; the lane holds four times that, so that reading
            # the delivery and storing the outcome overlap the sends (under CPU load they take longer than
            # the send itself). A target that hangs still holds only its own lane.
            per_lane=4 * settings.notify_concurrency_per_target,
        ),
    ]


@contextlib.asynccontextmanager
async def open_services(settings: Settings, *, clock: Callable[[], float] = time.time) -> AsyncIterator[Services]:
    """Open the database and HTTP client, build everything, and close it all on exit."""
    secret = settings.resolve_secret_key()
    sealer = Sealer(secret, old_secret_keys=settings.old_secret_key_list)
    db = database_for(settings.database_url, pool_size=settings.database_pool_size)
    await db.open()
    try:
        await seal_stored_credentials(db, sealer)  # before anything else writes
    except BaseException:
        await db.close()
        raise
    opened_verifier: ThreadedVerifier | None = None
    http = httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(settings.provider_timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": "receiver/0.1"},
    )
    # Deliveries get a connection pool of their own, as large as their slots: targets that hang hold
    # only these connections, never the ones provider calls and image copies need.
    notify_http = httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(settings.notify_timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=settings.notify_concurrency, max_keepalive_connections=20),
        headers={"User-Agent": "receiver/0.1"},
    )
    try:
        store = JobStore(db)
        outbox = Outbox(db)
        verifier = ThreadedVerifier()
        if settings.verify_threads:
            verifier.start()
            opened_verifier = verifier
        providers = build_providers(settings, http, clock, verifier=verifier)
        jobs = JobService(settings, store, providers, secret=secret, clock=clock)
        hub = EventHub()
        blobs = blob_store_for(settings)
        announcer = Announcer(settings, db, clock=clock, on_event=hub.notify)
        image_fetcher = ImageFetcher(
            settings, db, providers, blobs, http, clock=clock, announce=announcer.announce, on_event=hub.notify
        )
        deliverer = Deliverer(settings, db, blobs, notify_http, secret_key=secret, clock=clock, sealer=sealer)
        kinds = {
            **jobs.task_kinds(),
            "fetch_images": TaskKind(
                image_fetcher.handle_fetch_images, RetryPolicy(max_attempts=FETCH_ATTEMPTS, base_s=2, max_s=60)
            ),
            "notify": TaskKind(announcer.handle_notify, RetryPolicy(max_attempts=10, base_s=1, max_s=300)),
            # The handler keeps the day-long schedule itself (Retry-After floors the runner's tiny backoff).
            "deliver": TaskKind(deliverer.handle_deliver, RetryPolicy(max_attempts=50, base_s=0.001, max_s=48 * 3600)),
        }
        runner = TaskRunner(
            outbox,
            kinds,
            clock=clock,
            concurrency=settings.task_concurrency,
            pools=task_pools(settings, providers=len(providers)),
            lease_s=settings.task_lease_s,
            poll_interval_s=settings.task_poll_interval_s,
        )
        store.set_task_listener(runner.wake)
        subscriptions = Subscriptions(
            db,
            clock=clock,
            allow_private=settings.notify_allow_private,
            grace_s=settings.secret_grace_s,
            on_task=runner.wake,
            sealer=sealer,
        )
        reconciler = Reconciler(
            db,
            clock=clock,
            interval_s=settings.reconcile_interval_s,
            poll_max_interval_s=settings.poll_max_interval_s,
            job_timeout_s=settings.job_timeout_s,
            on_tasks=runner.wake,
        )
        retention = Retention.from_settings(settings, db, blobs, clock=clock)
        policy = AlertPolicy.from_settings(settings, tuple(name for name, p in providers.items() if p.webhooks))
        alerter = Alerter(db, policy, clock=clock, on_task=runner.wake) if policy is not None else None
        yield Services(
            settings, db, store, outbox, http, providers, jobs, runner, reconciler, secret, clock,
            blobs, image_fetcher, announcer, deliverer, subscriptions, hub, retention, alerter,
        )  # fmt: skip
    finally:
        if opened_verifier is not None:
            opened_verifier.stop()
        await http.aclose()
        await notify_http.aclose()
        await db.close()
