"""Every Prometheus metric of a receiver process, on a registry of its own (`REGISTRY`, not the client's
global one, so tests and processes never collide), and the text a scrape answers (`render`).

The counters and histograms are module-level objects the stages increment where things happen (one call on
a hot path, nothing more). The task-queue gauges are the database's: `render` reads them at scrape time
through `receiver.storage.metrics`, so every process reports the same values (take `max by (kind)` across
processes). Label values come from short closed sets (providers, models, outcomes, error codes, task
kinds): never an id, a URL or anything secret.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from receiver.errors import AmbiguousError, GiveUpError, RetryLaterError
from receiver.storage import metrics as store
from receiver.storage.base import Database

CONTENT_TYPE = CONTENT_TYPE_LATEST
REGISTRY = CollectorRegistry(auto_describe=True)
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

# Seconds: a verified webhook is stored in about a millisecond; a provider call or a job takes seconds.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
_JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

WEBHOOKS = Counter(
    "receiver_webhooks",
    "Provider webhooks answered, by outcome (accepted, duplicate, refused) and reason (an error code when "
    "refused, else the outcome).",
    ["provider", "outcome", "reason"],
    registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "receiver_ingest_seconds",
    "Time to verify and store one accepted provider webhook (read body to answer).",
    ["provider"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "receiver_jobs_finished",
    "Jobs that reached a final state, by provider, model and outcome (succeeded, failed, cancelled).",
    ["provider", "model", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION_SECONDS = Histogram(
    "receiver_job_duration_seconds",
    "Time from a job's creation to its final state.",
    ["provider", "model", "outcome"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_REQUESTS = Counter(
    "receiver_provider_requests",
    "Calls to provider APIs, by operation (submit, poll, cancel, ...) and outcome (ok or an error code).",
    ["provider", "operation", "outcome"],
    registry=REGISTRY,
)
PROVIDER_REQUEST_SECONDS = Histogram(
    "receiver_provider_request_seconds",
    "Duration of one provider API call.",
    ["provider", "operation"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
TASKS_QUEUED = Gauge(
    "receiver_tasks_queued",
    "Pending tasks in the database's queue, by kind (read at scrape time).",
    ["kind"],
    registry=REGISTRY,
)
TASKS_OLDEST_AGE_SECONDS = Gauge(
    "receiver_tasks_oldest_age_seconds",
    "How long the longest-due pending task of each kind has been due (0 when none is due).",
    ["kind"],
    registry=REGISTRY,
)
TASKS_DEAD = Gauge(
    "receiver_tasks_dead",
    "Tasks that gave up (status dead) still in the database, by kind.",
    ["kind"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "receiver_deliveries",
    "Delivery attempts to subscribers and callback URLs, by outcome and target kind.",
    ["outcome", "target_kind"],
    registry=REGISTRY,
)
IMAGE_BYTES = Counter(
    "receiver_image_bytes",
    "Image bytes fetched from providers and stored in the blob store.",
    ["direction"],
    registry=REGISTRY,
)
JWKS_REFRESHES = Counter(
    "receiver_jwks_refreshes",
    "Fetches of a provider's JSON Web Key Set, by outcome (ok or error).",
    ["outcome"],
    registry=REGISTRY,
)


def webhook_answered(provider: str, status: str, started: float) -> None:
    """A verified webhook answered `status` (`applied`, `recorded`, `ignored` or `duplicate`), `started` being
    its `time.perf_counter()` when its body was read: one counter and, unless a duplicate, one observation."""
    if status == "duplicate":
        WEBHOOKS.labels(provider, "duplicate", "duplicate").inc()
        return
    WEBHOOKS.labels(provider, "accepted", status).inc()
    INGEST_SECONDS.labels(provider).observe(time.perf_counter() - started)


def webhook_refused(providers: Collection[str], provider: str, code: str) -> None:
    """A webhook refused with the error `code`; a provider name not in `providers` (the URL's, anyone's to
    choose) is counted as `other`, so the label set stays closed."""
    WEBHOOKS.labels(provider if provider in providers else "other", "refused", code).inc()


def job_finished(provider: str, model: str, outcome: str, created_at: datetime, completed_at: datetime | None) -> None:
    """A job's final state announced (once per job): counted, and its time from creation to that state."""
    JOBS_FINISHED.labels(provider, model, outcome).inc()
    duration_s = (completed_at - created_at).total_seconds() if completed_at else 0.0
    JOB_DURATION_SECONDS.labels(provider, model, outcome).observe(max(0.0, duration_s))


def call_outcome(exc: BaseException | None) -> str:
    """A provider call's outcome label: what the caller does next, a closed set (the exception's code may carry
    a provider's own words)."""
    if exc is None:
        return "ok"
    if isinstance(exc, RetryLaterError):
        return "retry_later"
    if isinstance(exc, GiveUpError):
        return "rejected"
    if isinstance(exc, AmbiguousError):
        return "ambiguous"
    return "error"


P = ParamSpec("P")
R = TypeVar("R")


def timed_provider_call(operation: str, call: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`call` (a provider's bound-to-be method, its first argument the provider) counted and timed under
    `operation` (see `receiver.providers.base.Provider.__init_subclass__`)."""

    @functools.wraps(call)
    async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        provider = str(getattr(args[0], "name", "unknown"))
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await call(*args, **kwargs)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if not isinstance(failure, asyncio.CancelledError):
                PROVIDER_REQUEST_SECONDS.labels(provider, operation).observe(time.perf_counter() - started)
                PROVIDER_REQUESTS.labels(provider, operation, call_outcome(failure)).inc()

    return timed


# The task kinds reported even when none is queued (a gauge that vanishes reads as "no data", not 0).
TASK_KINDS = ("deliver", "notify", "fetch_images", "poll", "cancel", "submit")


async def read_task_gauges(db: Database, *, now: float | None = None) -> None:
    """Set the three task gauges from the database: a few indexed reads."""
    now = time.time() if now is None else now
    queues = await store.task_queues(db, now=now)
    dead = await store.dead_tasks(db)
    for kind in {*TASK_KINDS, *queues, *dead}:
        queued, oldest_due_s = queues.get(kind, (0, 0.0))
        TASKS_QUEUED.labels(kind).set(queued)
        TASKS_OLDEST_AGE_SECONDS.labels(kind).set(oldest_due_s)
        TASKS_DEAD.labels(kind).set(dead.get(kind, 0))


async def render(db: Database | None) -> bytes:
    """The Prometheus text of this process, the task gauges read fresh from `db` first."""
    if db is not None:
        await read_task_gauges(db)
    return generate_latest(REGISTRY)
