"""Retention: old finished work purged in bounded batches, live work kept, jobs and blobs only when asked, the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.images.blobs import LocalBlobStore, StoredImage, store_image
from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import events, inbox, jobs, tasks
from receiver.storage import images as stored_images
from receiver.storage.base import Transaction, WriteFn
from receiver.storage.sqlite import Database
from receiver.web.asgi_server import running_server
from receiver.wiring import Services, open_services
from tests.helpers.clock import Clock
from tests.helpers.database import add_delivery, count_rows, forget_newest_migration, read_rows
from tests.helpers.files import mode_of
from tests.helpers.images import png_bytes
from tests.helpers.stack import StackFactory, make_settings

DAY_S = 86400.0
TABLES = ("jobs", "inbox", "tasks", "events", "deliveries", "delivery_attempts", "inputs", "job_images", "images")
ServicesFactory = Callable[..., Awaitable[Services]]


@pytest.fixture
async def open_stack(tmp_path: Path) -> AsyncIterator[ServicesFactory]:
    """Opens the real services (database file under tmp_path, blob store, retention worker) on a hand-moved clock."""
    opened: list[Any] = []

    async def build(clock: Clock, **overrides: Any) -> Services:
        manager = open_services(make_settings(tmp_path, **overrides), clock=clock)
        opened.append(manager)
        return await manager.__aenter__()

    yield build
    for manager in reversed(opened):
        await manager.__aexit__(None, None, None)


async def seed(
    db: Database,
    job_id: str,
    *,
    at: float,
    status: str = "succeeded",
    task_status: str = "done",
    delivery: str | None = "delivered",
    attempts: int = 1,
    images: tuple[StoredImage, ...] = (),
) -> None:
    """A job and what its life leaves behind, all stamped `at`: an inbox row, a task, an event with one
    delivery (`delivery` status, `attempts` attempt-log rows), a served input, and links to `images`."""

    def write(tx: Transaction) -> None:
        final = status in ("succeeded", "failed", "cancelled")
        jobs.insert(
            tx, job_id, provider="fal", model="fal-ai/stepx-edit2", input={}, metadata=None, callback_url=None, now=at
        )
        jobs.update_status(
            tx, job_id, status=JobStatus(status), result=None, provider_result=None, error=None,
            completed_at=at if final else None, now=at,
        )  # fmt: skip
        event = ProviderEvent(
            provider="fal", kind="webhook", dedup_key=f"req-{job_id}", job_id=job_id, request_id=None,
            outcome=Outcome(JobStatus(status)), body=b"{}",
        )  # fmt: skip
        inbox.insert(tx, event, now=at)
        kind = f"work_{job_id}"  # a kind of its own, so that the claim below takes this task and no other
        tasks.insert(tx, kind, job_id, at)
        if task_status != "pending":
            [task] = tasks.claim(tx, owner="seed", kinds=(kind,), limit=1, lease_expires_at=at + 60, now=at)
            if task_status == "done":
                tasks.complete(tx, task.id, owner="seed", attempts=task.attempts, now=at)
            elif task_status == "dead":
                tasks.kill(tx, task.id, owner="seed", attempts=task.attempts, error="seeded dead", now=at)
        jobs.insert_input(tx, f"in-{job_id}", job_id=job_id, content_type="image/png", data=b"\x00", now=at)
        for position, image in enumerate(images):
            stored_images.upsert_image(
                tx, image.sha256, content_type=image.content_type, width=image.width, height=image.height,
                bytes=image.bytes, thumbnail_sha256=image.thumbnail_sha256, now=at,
            )  # fmt: skip
            stored_images.upsert_job_image(
                tx, job_id, role="output", position=position, sha256=image.sha256, source_url=None, error=None, now=at
            )
        if final:
            events.insert_event(tx, f"evt-{job_id}", event_type="job.succeeded", job_id=job_id, payload={}, now=at)
        if final and delivery is not None:
            delivery_id = f"dlv-{job_id}"
            add_delivery(
                tx, delivery_id, event_id=f"evt-{job_id}", target="callback", url="http://127.0.0.1:9/",
                status=delivery, attempts=attempts, now=at,
            )  # fmt: skip
            for _ in range(attempts):
                events.insert_attempt(tx, delivery_id=delivery_id, now=at, status_code=500, latency_ms=None, error=None)

    await db.write(write)


async def rows_of(db: Database, job_id: str) -> dict[str, int]:
    """How many rows of each table belong to `job_id`."""
    counts = {}
    for table, where in (
        ("jobs", "id = ?"),
        ("inbox", "job_id = ?"),
        ("tasks", "job_id = ?"),
        ("events", "job_id = ?"),
        ("deliveries", "event_id IN (SELECT id FROM events WHERE job_id = ?)"),
        ("delivery_attempts", "delivery_id IN (SELECT id FROM deliveries WHERE id = 'dlv-' || ?)"),
        ("inputs", "job_id = ?"),
        ("job_images", "job_id = ?"),
    ):
        counts[table] = await count_rows(db.path, table, where, job_id)
    return counts


async def table_counts(db: Database) -> dict[str, int]:
    return {table: await count_rows(db.path, table) for table in TABLES}


def age_blobs(root: Path, days: float) -> None:
    """Date every blob file under `root` back `days` (as if stored then)."""
    then = time.time() - days * DAY_S
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


FULL = {"jobs": 1, "inbox": 1, "tasks": 1, "events": 1, "deliveries": 1, "delivery_attempts": 2, "inputs": 1}
FULL["job_images"] = 0
JOB_ONLY = {**dict.fromkeys(FULL, 0), "jobs": 1, "inputs": 1}


def nonzero(rows: Any) -> dict[str, int]:
    return {table: count for table, count in rows.items() if count}


async def test_old_finished_rows_are_purged_and_recent_ones_kept(open_stack: ServicesFactory) -> None:
    """Past RECEIVER_RETENTION_DAYS, finished tasks, inbox rows, events, deliveries and attempts go; jobs stay."""
    clock = Clock()
    services = await open_stack(clock)
    db = services.db
    await seed(db, "job_old", at=clock() - 40 * DAY_S, attempts=2)
    await seed(db, "job_old_dead", at=clock() - 31 * DAY_S, status="failed", task_status="dead", delivery="dead")
    await seed(db, "job_recent", at=clock() - 29 * DAY_S, attempts=2)
    await seed(db, "job_new", at=clock())  # owns the newest event

    report = await services.retention.run_once()

    assert await rows_of(db, "job_old") == JOB_ONLY
    assert await rows_of(db, "job_old_dead") == JOB_ONLY
    assert await rows_of(db, "job_recent") == FULL
    assert nonzero(report.rows) == {"inbox": 2, "tasks": 2, "events": 2, "deliveries": 2, "delivery_attempts": 3}
    assert nonzero((await services.retention.run_once()).rows) == {}  # nothing left to do


async def test_zero_retention_days_keeps_everything(open_stack: ServicesFactory) -> None:
    """RECEIVER_RETENTION_DAYS=0 turns the row purge off: nothing is deleted however old."""
    clock = Clock()
    services = await open_stack(clock, retention_days=0)
    await seed(services.db, "job_ancient", at=clock() - 4000 * DAY_S)
    await seed(services.db, "job_new", at=clock())

    report = await services.retention.run_once()

    assert nonzero(report.rows) == {} and report.cutoff is None
    assert await rows_of(services.db, "job_ancient") == FULL | {"delivery_attempts": 1}


async def test_what_a_live_job_needs_is_kept(open_stack: ServicesFactory) -> None:
    """Old rows stay while work is live: an open job's inbox, unfinished tasks, events with retrying deliveries."""
    clock = Clock()
    services = await open_stack(clock)
    db = services.db
    old = clock() - 60 * DAY_S
    await seed(db, "job_running", at=old, status="running", task_status="pending")
    await seed(db, "job_leased", at=old, task_status="leased")
    await seed(db, "job_retrying", at=old, delivery="failed", attempts=3)
    await seed(db, "job_pending_delivery", at=old, delivery="pending", attempts=0)
    await seed(db, "job_new", at=clock())

    report = await services.retention.run_once()

    assert await rows_of(db, "job_running") == {**FULL, "events": 0, "deliveries": 0, "delivery_attempts": 0}
    assert (await rows_of(db, "job_leased"))["tasks"] == 1
    assert await rows_of(db, "job_retrying") == {**FULL, "inbox": 0, "tasks": 0, "delivery_attempts": 3}
    assert await rows_of(db, "job_pending_delivery") == {
        **FULL, "inbox": 0, "tasks": 0, "delivery_attempts": 0,
    }  # fmt: skip
    assert nonzero(report.rows) == {"inbox": 3, "tasks": 2, "events": 1, "deliveries": 1, "delivery_attempts": 1}


async def test_the_newest_event_is_never_purged(open_stack: ServicesFactory) -> None:
    """Even when every event is old, the newest stays: its seq is the live feed's resume point (no seq reuse)."""
    clock = Clock()
    services = await open_stack(clock, job_retention_days=7)
    await seed(services.db, "job_a", at=clock() - 50 * DAY_S, delivery=None)
    await seed(services.db, "job_b", at=clock() - 40 * DAY_S, delivery=None)

    await services.retention.run_once()

    assert (await rows_of(services.db, "job_a"))["jobs"] == 0
    assert await rows_of(services.db, "job_b") == {**JOB_ONLY, "events": 1}
    await seed(services.db, "job_c", at=clock(), delivery=None)
    rows = await read_rows(services.db.path, "SELECT seq, job_id FROM events ORDER BY seq")
    assert [row["job_id"] for row in rows] == ["job_b", "job_c"] and rows[0]["seq"] < rows[1]["seq"]


async def test_every_write_deletes_at_most_one_batch(open_stack: ServicesFactory) -> None:
    """A purge of many rows is many short writes, each changing at most `retention_batch` rows."""
    clock = Clock()
    services = await open_stack(clock, retention_batch=10, job_retention_days=20)
    db = services.db
    for i in range(12):
        await seed(db, f"job_old{i:02d}", at=clock() - 40 * DAY_S, attempts=4)
    for i in range(6):
        await seed(db, f"job_kept{i:02d}", at=clock() - 10 * DAY_S, status="failed", attempts=23)
    await seed(db, "job_new", at=clock())
    changes: list[int] = []  # rows each write deleted (nothing else writes meanwhile)
    write = db.write

    async def counted(fn: WriteFn[Any]) -> Any:
        before = sum((await table_counts(db)).values())
        try:
            return await write(fn)
        finally:
            changes.append(before - sum((await table_counts(db)).values()))

    db.write = counted  # type: ignore[method-assign]
    services.retention.retention_days = 5  # the row phase takes job_kept*'s rows (23 attempts each)

    report = await services.retention.run_once()

    deleted = sum(report.rows.values())
    assert deleted == 12 * (6 + 4) + 6 * (4 + 23)  # job_old*: everything; job_kept*: all but the job and input
    assert max(changes) <= 10
    assert len(changes) >= math.ceil(deleted / 10)
    assert sum(changes) == deleted


async def test_jobs_and_blobs_are_purged_only_with_job_retention(open_stack: ServicesFactory) -> None:
    """Jobs and stored images stay by default; with RECEIVER_JOB_RETENTION_DAYS old final jobs go with all their
    rows and the blob files (image and thumbnail) no other job uses; shared blobs and live jobs stay."""
    clock = Clock()
    services = await open_stack(clock)
    db, blobs = services.db, services.blobs
    own = await store_image(blobs, png_bytes(16, 16, (200, 10, 10)), max_pixels=10_000)
    shared = await store_image(blobs, png_bytes(16, 16, (10, 200, 10)), max_pixels=10_000)
    await seed(db, "job_old", at=clock() - 40 * DAY_S, images=(own, shared))
    await seed(db, "job_old_live", at=clock() - 40 * DAY_S, delivery="failed", images=(shared,))
    await seed(db, "job_young", at=clock() - 2 * DAY_S, images=(shared,))
    await seed(db, "job_new", at=clock())
    age_blobs(blobs.root, 40)

    await services.retention.run_once()
    assert (await rows_of(db, "job_old"))["jobs"] == 1
    assert all([await blobs.exists(sha) for sha in (own.sha256, own.thumbnail_sha256, shared.sha256)])

    services.retention.job_retention_days = 30
    report = await services.retention.run_once()

    assert set((await rows_of(db, "job_old")).values()) == {0}
    assert (await rows_of(db, "job_old_live"))["jobs"] == 1
    assert (await rows_of(db, "job_young"))["jobs"] == 1
    assert report.rows["jobs"] == 1 and report.rows["images"] == 1 and report.blobs == 2
    assert not await blobs.exists(own.sha256) and not await blobs.exists(own.thumbnail_sha256)
    assert await blobs.exists(shared.sha256) and await blobs.exists(shared.thumbnail_sha256)
    assert await count_rows(db.path, "images", "sha256 = ?", own.sha256) == 0
    assert await count_rows(db.path, "images", "sha256 = ?", shared.sha256) == 1


async def test_a_blob_stored_again_meanwhile_is_kept(open_stack: ServicesFactory) -> None:
    """A purged job's image whose bytes a new job stores again (its rows not committed yet) keeps its file."""
    clock = Clock()
    services = await open_stack(clock, job_retention_days=7)
    data = png_bytes(16, 16, (90, 90, 9))
    image = await store_image(services.blobs, data, max_pixels=10_000)
    await seed(services.db, "job_old", at=clock() - 40 * DAY_S, images=(image,))
    await seed(services.db, "job_new", at=clock())
    age_blobs(services.blobs.root, 40)
    assert await services.blobs.put(data) == image.sha256  # a fetch_images task storing the same bytes now

    report = await services.retention.run_once()

    assert report.rows["images"] == 1 and report.blobs == 1  # the row and the untouched thumbnail go
    assert await services.blobs.exists(image.sha256)
    assert not await services.blobs.exists(image.thumbnail_sha256)


async def test_worker_purges_when_started_with_the_other_workers(open_stack: ServicesFactory) -> None:
    """`Services.workers()` runs the retention worker: old rows go without anyone calling it."""
    clock = Clock()
    services = await open_stack(clock)
    await seed(services.db, "job_old", at=clock() - 40 * DAY_S)
    await seed(services.db, "job_new", at=clock())
    async with services.workers():
        for _ in range(500):  # a bounded poll: at most 10 s
            if services.retention.passes:
                break
            await asyncio.sleep(0.02)
    assert services.retention.passes >= 1
    assert await rows_of(services.db, "job_old") == JOB_ONLY


async def test_a_real_job_is_purged_down_to_the_job_then_entirely(make_stack: StackFactory) -> None:
    """Two real jobs (fal emulator, webhook, stored images, delivered callback): 31 days on, their inbox rows,
    tasks, deliveries and attempt logs are gone while the jobs and images stay served; with job retention the
    older job goes, its own blobs with it, and the newer one is still served whole."""
    received: list[bytes] = []

    async def hook(request: Request) -> Response:
        received.append(await request.body())
        return Response(status_code=200)

    async with running_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hook_url:
        stack = await make_stack()
        ids = []
        for prompt, color in (("make it red", (200, 30, 30)), ("make it blue", (30, 30, 200))):
            image = "data:image/png;base64," + base64.b64encode(png_bytes(16, 16, color)).decode()
            body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": f"{hook_url}/hook"}
            body["input"] = {"prompt": prompt, "image_url": image}
            response = await stack.client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            await stack.wait_for(ids[-1], lambda job: job["images_status"] == "stored")
        db = stack.services.db
        for _ in range(1000):  # a bounded poll: both callbacks delivered and every task finished
            [row] = await read_rows(
                db.path,
                "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'),"
                " (SELECT COUNT(*) FROM tasks WHERE status NOT IN ('done', 'dead'))",
            )
            if tuple(row) == (2, 0):
                break
            await asyncio.sleep(0.01)
        assert tuple(row) == (2, 0)
        first, second = ids
        before = await rows_of(db, first)
        assert before["inbox"] >= 1 and before["tasks"] >= 2 and before["deliveries"] == 1
        retention = stack.services.retention
        retention.clock = lambda: time.time() + 31 * DAY_S
        age_blobs(stack.services.blobs.root, 31)

        await retention.run_once()

        for job_id in ids:
            rows = await rows_of(db, job_id)
            assert (rows["inbox"], rows["tasks"], rows["deliveries"], rows["jobs"]) == (0, 0, 0, 1)
            job = await stack.job(job_id)
            for image in (*job["images"], job["input_image"]):
                assert (await stack.client.get(f"/v1/images/{image['sha256']}")).status_code == 200
        assert (await rows_of(db, first))["events"] == 0
        assert (await rows_of(db, second))["events"] == 1  # the newest event stays
        assert await count_rows(db.path, "delivery_attempts") == 0
        first_shas = {image["sha256"] for image in (await stack.job(first))["images"]}
        second_job = await stack.job(second)
        second_shas = {image["sha256"] for image in (*second_job["images"], second_job["input_image"])}

        retention.job_retention_days = 7
        report = await retention.run_once()

        assert report.rows["jobs"] == 1 and report.blobs >= 2
        assert (await stack.client.get(f"/v1/jobs/{first}")).status_code == 404
        for sha in first_shas - second_shas:
            assert (await stack.client.get(f"/v1/images/{sha}")).status_code == 404
        assert await stack.job(second) == second_job
        for sha in second_shas:
            assert (await stack.client.get(f"/v1/images/{sha}")).status_code == 200
        assert len(received) == 2


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    environ.update(
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path / 'receiver.db'}",
        RECEIVER_DATA_DIR=str(tmp_path),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "receiver", "purge", *args],
        env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_purge_command_dry_run_counts_then_purge_deletes(tmp_path: Path) -> None:
    """`receiver purge --dry-run` reports per table and deletes nothing; `receiver purge` then deletes exactly that."""
    now = time.time()
    db = Database(tmp_path / "receiver.db")
    await db.open()
    own = await store_image(LocalBlobStore(tmp_path / "blobs"), png_bytes(16, 16, (1, 2, 3)), max_pixels=10_000)
    await seed(db, "job_gone", at=now - 100 * DAY_S, attempts=3, images=(own,))
    await seed(db, "job_old", at=now - 40 * DAY_S, attempts=2)
    await seed(db, "job_live", at=now - 40 * DAY_S, delivery="failed")
    await seed(db, "job_new", at=now)
    age_blobs(tmp_path / "blobs", 100)
    before = await table_counts(db)
    await db.close()
    env = {"RECEIVER_JOB_RETENTION_DAYS": "90"}

    dry = await asyncio.to_thread(cli, tmp_path, "--dry-run", "--json", **env)

    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] is True
    assert counted["rows"] == {
        "jobs": 1, "inbox": 3, "tasks": 3, "events": 2, "deliveries": 2, "delivery_attempts": 5,
        "inputs": 1, "job_images": 1, "images": 1,
    }  # fmt: skip
    assert counted["blobs"] == 2
    db = Database(tmp_path / "receiver.db")
    await db.open()
    assert await table_counts(db) == before
    await db.close()

    done = await asyncio.to_thread(cli, tmp_path, "--json", **env)

    assert done.returncode == 0, done.stderr
    deleted = json.loads(done.stdout)
    assert deleted["dry_run"] is False
    assert deleted["rows"] == counted["rows"] and deleted["blobs"] == 2
    db = Database(tmp_path / "receiver.db")
    await db.open()
    after = await table_counts(db)
    await db.close()
    assert after == {table: before[table] - counted["rows"][table] for table in TABLES}
    table = await asyncio.to_thread(cli, tmp_path, **env)
    assert table.returncode == 0 and "delivery_attempts" in table.stdout and "blob files" in table.stdout


def test_purge_command_without_a_database_exits_1(tmp_path: Path) -> None:
    """`receiver purge` on a database that does not exist says so and exits 1 (creating nothing)."""
    result = cli(tmp_path, "--dry-run")
    assert result.returncode == 1
    assert "no database" in result.stderr
    assert not (tmp_path / "receiver.db").exists()


async def test_purge_command_empty_job_retention_keeps_jobs(tmp_path: Path) -> None:
    """`RECEIVER_JOB_RETENTION_DAYS=` (empty, as in a .env) means unset: jobs are kept, rows still purged."""
    db = Database(tmp_path / "receiver.db")
    await db.open()
    await seed(db, "job_old", at=time.time() - 400 * DAY_S)
    await seed(db, "job_new", at=time.time())
    await db.close()

    result = await asyncio.to_thread(cli, tmp_path, "--json", RECEIVER_JOB_RETENTION_DAYS="")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["job_cutoff"] is None
    assert report["rows"]["jobs"] == 0 and report["rows"]["inbox"] == 1


def test_purge_command_bad_setting_exits_2(tmp_path: Path) -> None:
    """A bad retention setting is named and exits 2."""
    result = cli(tmp_path, "--dry-run", RECEIVER_RETENTION_DAYS="-1")
    assert result.returncode == 2
    assert "RECEIVER_RETENTION_DAYS" in result.stderr


async def test_idempotency_keys_are_purged_after_the_retention_period(open_stack: ServicesFactory) -> None:
    """Idempotency-Key records older than the row cutoff go with the other rows; younger ones stay."""
    clock = Clock()
    services = await open_stack(clock)
    db = services.db
    await seed(db, "job_old", at=clock() - 40 * DAY_S)
    await seed(db, "job_recent", at=clock() - 2 * DAY_S)

    def keys(tx: Transaction) -> None:
        for key, job_id, days in (("old-key", "job_old", 40), ("recent-key", "job_recent", 2)):
            jobs.claim_idempotency_key(
                tx, scope="POST /v1/jobs", key=key, fingerprint="f", job_id=job_id, now=clock() - days * DAY_S
            )

    await db.write(keys)
    report = await services.retention.run_once()
    assert report.rows["idempotency_keys"] == 1
    remaining = await read_rows(db.path, "SELECT key FROM idempotency_keys")
    assert [row[0] for row in remaining] == ["recent-key"]


def test_retention_days_below_one_are_refused(tmp_path: Path) -> None:
    """A retention period under a day would break the 24 h Idempotency-Key promise: refused at start."""
    with pytest.raises(ValueError, match="at least 1 day"):
        make_settings(tmp_path, retention_days=0.5)


def test_job_retention_below_one_day_is_refused(tmp_path: Path) -> None:
    """RECEIVER_JOB_RETENTION_DAYS under a day would purge a job, and its Idempotency-Key, before 24 h: refused
    at start (settings) and by the CLI (exit 2 naming it)."""
    for days in (0.0001, 0.5, 0):
        with pytest.raises(ValueError, match="at least 1 day"):
            make_settings(tmp_path, job_retention_days=days)
    assert make_settings(tmp_path, job_retention_days=1).job_retention_days == 1
    result = cli(tmp_path, "--dry-run", RECEIVER_JOB_RETENTION_DAYS="0.0001")
    assert result.returncode == 2
    assert "RECEIVER_JOB_RETENTION_DAYS" in result.stderr and "at least 1 day" in result.stderr


async def settle(db: Database) -> None:
    """Poll (bounded) until every task is finished: the jobs have no live work left."""
    for _ in range(1000):
        if await count_rows(db.path, "tasks", "status NOT IN ('done', 'dead')") == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("tasks never finished")


async def test_a_job_whose_idempotency_key_is_younger_than_a_day_is_kept(make_stack: StackFactory) -> None:
    """Even with a job retention under a day (forced past the settings check), a finished job whose
    Idempotency-Key is younger than 24 h is not purged: a retry under the key gets that job back (200), never
    a second paid job; a day later the job and its key go."""
    stack = await make_stack()
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2"}
    body["input"] = {
        "prompt": "make it red",
        "image_url": "data:image/png;base64," + base64.b64encode(png_bytes(16, 16, (9, 9, 9))).decode(),
    }
    headers = {"Idempotency-Key": "retry-me"}
    created = await stack.client.post("/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    await stack.wait_for(job_id, lambda job: job["images_status"] == "stored")
    later = await stack.create_job()  # owns the newest event, which is never purged
    await stack.wait_for(later["id"], lambda job: job["images_status"] == "stored")
    await settle(stack.services.db)
    retention = stack.services.retention
    retention.job_retention_days = 0.0001  # 8.6 s
    retention.clock = lambda: time.time() + 3600

    report = await retention.run_once()

    assert report.rows["jobs"] == 0
    retried = await stack.client.post("/v1/jobs", json=body, headers=headers)
    assert retried.status_code == 200 and retried.json()["id"] == job_id, retried.text
    assert retried.headers["idempotent-replayed"] == "true"

    retention.clock = lambda: time.time() + 25 * 3600
    report = await retention.run_once()

    assert report.rows["jobs"] == 1
    assert await count_rows(stack.services.db.path, "idempotency_keys") == 0
    assert (await stack.client.get(f"/v1/jobs/{job_id}")).status_code == 404


# Root ignores file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): run as root, the command runs with both
# dropped from its bounding set (PR_CAPBSET_DROP), so it is held to the modes as any other user would be.
DROP_DAC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):
    if libc.prctl(24, capability, 0, 0, 0) != 0:
        sys.exit(f"cannot drop capability {capability}: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


@contextlib.contextmanager
def read_only_database(tmp_path: Path) -> Iterator[Path]:
    """A copy of the database under `tmp_path`, mode 0400 in a directory (mode 0555) no one may write."""
    root = tmp_path / "ro"
    root.mkdir()
    shutil.copy(tmp_path / "receiver.db", root / "receiver.db")
    (root / "receiver.db").chmod(0o400)
    root.chmod(0o555)
    try:
        yield root
    finally:
        root.chmod(0o700)


def cli_bound_by_modes(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`receiver purge` on `data_dir`'s database, held to file modes even when the tests run as root."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    environ.update(RECEIVER_DATABASE_URL=f"sqlite:///{data_dir / 'receiver.db'}", RECEIVER_DATA_DIR=str(data_dir))
    environ.update(RECEIVER_JOB_RETENTION_DAYS="90", PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "receiver", "purge", *args]
    if os.geteuid() == 0:
        command = [sys.executable, "-c", DROP_DAC, *command]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, check=False)


async def seed_file(tmp_path: Path) -> None:
    """A migrated database file under tmp_path with one job past job retention, one past row retention."""
    now = time.time()
    db = Database(tmp_path / "receiver.db")
    await db.open()
    await seed(db, "job_gone", at=now - 100 * DAY_S)
    await seed(db, "job_old", at=now - 40 * DAY_S)
    await seed(db, "job_new", at=now)
    await db.close()


async def test_purge_dry_run_reads_a_database_it_may_not_write(tmp_path: Path) -> None:
    """`receiver purge --dry-run` as a user who may only read the database (0400, directory not writable)
    counts and exits 0, leaving the file's mode alone and creating no -wal/-shm; a real purge there exits 1
    with one clear line, no traceback."""
    await seed_file(tmp_path)
    with read_only_database(tmp_path) as root:
        dry = await asyncio.to_thread(cli_bound_by_modes, root, "--dry-run", "--json")

        assert dry.returncode == 0, dry.stderr
        counted = json.loads(dry.stdout)["rows"]
        assert (counted["jobs"], counted["inbox"], counted["deliveries"]) == (1, 2, 2)
        assert mode_of(root / "receiver.db") == 0o400
        assert sorted(path.name for path in root.iterdir()) == ["receiver.db"]

        real = await asyncio.to_thread(cli_bound_by_modes, root, "--json")

        assert real.returncode == 1
        assert "purge failed" in real.stderr and "Traceback" not in real.stderr, real.stderr
        assert mode_of(root / "receiver.db") == 0o400


async def test_purge_dry_run_never_migrates(tmp_path: Path) -> None:
    """A dry run on a database whose schema is behind this version says so and exits 1, applying nothing."""
    await seed_file(tmp_path)
    forget_newest_migration(tmp_path / "receiver.db")
    before = await count_rows(tmp_path / "receiver.db", "schema_migrations")
    mode = mode_of(tmp_path / "receiver.db")

    result = await asyncio.to_thread(cli_bound_by_modes, tmp_path, "--dry-run")

    assert result.returncode == 1
    assert "schema is behind" in result.stderr and "receiver migrate" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert await count_rows(tmp_path / "receiver.db", "schema_migrations") == before
    assert mode_of(tmp_path / "receiver.db") == mode


def test_purge_command_on_an_unreadable_database_exits_1(tmp_path: Path) -> None:
    """A database path that is a directory (or any file the user cannot open) is one clear line and exit 1."""
    (tmp_path / "receiver.db").mkdir()
    for args in (["--dry-run"], []):
        result = cli(tmp_path, *args)
        assert result.returncode == 1, result.stderr
        assert "purge failed" in result.stderr and "Traceback" not in result.stderr, result.stderr
