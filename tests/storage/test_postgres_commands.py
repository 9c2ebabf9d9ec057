"""The commands that take a database URL, on PostgreSQL: `receiver migrate` and `receiver purge` (with its
read-only dry run), in subprocesses as an operator runs them; messages never show the URL's password."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import events, inbox, jobs, tasks
from receiver.storage.base import Transaction
from receiver.storage.postgres import Database, migrations
from tests.helpers.postgres import pg_rows
from tests.helpers.processes import cli_env

DAY_S = 86400.0


def receiver(tmp_path: Path, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=cli_env(tmp_path, RECEIVER_DATABASE_URL=url, **env), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_migrate_applies_the_schema_once(tmp_path: Path, empty_postgres_url: str) -> None:
    """`receiver migrate` on an empty PostgreSQL database applies every migration; run again, it has nothing
    to do."""
    first = receiver(tmp_path, empty_postgres_url, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"applied {[number for number, _, _ in migrations()]}" in first.stdout
    again = receiver(tmp_path, empty_postgres_url, "migrate")
    assert again.returncode == 0 and "schema is up to date" in again.stdout
    assert [row["number"] for row in pg_rows(empty_postgres_url, "SELECT number FROM schema_migrations")] == [
        number for number, _, _ in migrations()
    ]


def test_migrate_with_a_wrong_password_fails_without_showing_it(tmp_path: Path, empty_postgres_url: str) -> None:
    """A wrong password in the URL: exit 1 with the server's reason, and the password nowhere in the output."""
    parts = urlsplit(empty_postgres_url)
    url = parts._replace(netloc=f"{parts.username}:Wr0ngPassw0rd-3z@{parts.hostname}:{parts.port}").geturl()
    result = receiver(tmp_path, url, "migrate")
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "Wr0ngPassw0rd-3z" not in result.stdout + result.stderr


def seed(tx: Transaction, job_id: str, *, at: float) -> None:
    """A succeeded job finished at `at`, with an inbox row, a done task and an event."""
    jobs.insert(tx, job_id, provider="fal", model="m", input={}, metadata=None, callback_url=None, now=at)
    jobs.update_status(
        tx, job_id, status=JobStatus.SUCCEEDED, result=None, provider_result=None, error=None, completed_at=at, now=at
    )
    event = ProviderEvent(
        provider="fal", kind="webhook", dedup_key=f"req-{job_id}", job_id=job_id, request_id=None,
        outcome=Outcome(JobStatus.SUCCEEDED), body=b"{}",
    )  # fmt: skip
    inbox.insert(tx, event, now=at)
    kind = f"work_{job_id}"
    tasks.insert(tx, kind, job_id, at)
    [task] = tasks.claim(tx, owner="seed", kinds=(kind,), limit=1, lease_expires_at=at + 60, now=at)
    tasks.complete(tx, task.id, owner="seed", attempts=task.attempts, now=at)
    events.insert_event(tx, f"evt-{job_id}", event_type="job.succeeded", job_id=job_id, payload={}, now=at)


async def test_purge_dry_run_counts_then_purge_deletes(tmp_path: Path, postgres_url: str) -> None:
    """`receiver purge --dry-run` on PostgreSQL counts what is past retention and deletes nothing; `receiver
    purge` then deletes exactly that."""
    now = time.time()
    db = Database(postgres_url)
    await db.open()
    await db.write(lambda tx: (seed(tx, "job_old", at=now - 100 * DAY_S), seed(tx, "job_new", at=now)))
    await db.close()
    settings = {"RECEIVER_JOB_RETENTION_DAYS": "90"}
    expected = {"jobs": 1, "inbox": 1, "tasks": 1, "events": 1}

    dry = await asyncio.to_thread(receiver, tmp_path, postgres_url, "purge", "--dry-run", "--json", **settings)
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] and {table: counted["rows"][table] for table in expected} == expected
    assert len(pg_rows(postgres_url, "SELECT id FROM jobs")) == 2

    done = await asyncio.to_thread(receiver, tmp_path, postgres_url, "purge", "--json", **settings)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == counted["rows"]
    assert [row["id"] for row in pg_rows(postgres_url, "SELECT id FROM jobs")] == ["job_new"]


def test_purge_dry_run_of_a_database_never_migrated_exits_1(tmp_path: Path, empty_postgres_url: str) -> None:
    """A dry run never migrates: on an empty database it says the schema is behind and exits 1, creating
    nothing."""
    result = receiver(tmp_path, empty_postgres_url, "purge", "--dry-run")
    assert result.returncode == 1
    assert "schema is behind" in result.stderr.replace("\n", " ")
    assert pg_rows(empty_postgres_url, "SELECT to_regclass('schema_migrations') AS t") == [{"t": None}]


def test_purge_names_the_database_without_its_url(tmp_path: Path, postgres_url: str) -> None:
    """A purge that cannot reach the database says which (PostgreSQL), never the URL or its password."""
    parts = urlsplit(postgres_url)
    url = parts._replace(netloc=f"{parts.username}:Wr0ngPassw0rd-3z@{parts.hostname}:{parts.port}").geturl()
    result = receiver(tmp_path, url, "purge", "--dry-run")
    assert result.returncode == 1
    assert "the PostgreSQL database" in result.stderr
    assert "Wr0ngPassw0rd-3z" not in result.stdout + result.stderr
