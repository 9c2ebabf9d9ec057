"""The receiver's SQLite file read directly, read-only, with the stdlib (or its PostgreSQL database, by URL,
with psycopg): what the bench drivers check and count."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

# What the readers read: the SQLite file's path, or a PostgreSQL URL.
Where = Path | str


def connect_ro(path: Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)


@dataclass
class Snapshot:
    jobs: dict[str, dict[str, Any]]
    inbox: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    events: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    images: list[dict[str, Any]]
    job_images: list[dict[str, Any]]


def read_db(path: Where) -> Snapshot:
    if isinstance(path, str):
        with psycopg.connect(path, autocommit=True, row_factory=dict_row) as pg:
            return _snapshot(lambda sql: pg.execute(sql.encode()).fetchall())
    conn = connect_ro(path, timeout_s=30)
    conn.row_factory = sqlite3.Row
    try:
        return _snapshot(lambda sql: [dict(row) for row in conn.execute(sql)])
    finally:
        conn.close()


def _snapshot(rows: Callable[[str], list[dict[str, Any]]]) -> Snapshot:
    jobs = rows(
        "SELECT id, status, provider_request_id, error, images_status, images_error, metadata, created_at,"
        " completed_at FROM jobs"
    )
    return Snapshot(
        jobs={job["id"]: job for job in jobs},
        inbox=rows("SELECT provider, kind, dedup_key, job_id, body, outcome FROM inbox"),
        tasks=rows("SELECT id, kind, job_id, status, attempts, last_error, interrupted FROM tasks"),
        events=rows("SELECT id, type, job_id FROM events"),
        deliveries=rows("SELECT id, event_id, subscription_id, webhook_id, status, attempts FROM deliveries"),
        images=rows("SELECT sha256, thumbnail_sha256 FROM images"),
        job_images=rows("SELECT job_id, role, position, sha256, error FROM job_images"),
    )


def leased_kinds(db_path: Where) -> list[str]:
    """The kinds of the tasks leased right now (a handler is running them)."""
    if isinstance(db_path, str):
        with psycopg.connect(db_path, autocommit=True) as pg:
            return [row[0] for row in pg.execute(b"SELECT kind FROM tasks WHERE status = 'leased'")]
    conn = connect_ro(db_path)
    try:
        return [row[0] for row in conn.execute("SELECT kind FROM tasks WHERE status = 'leased'")]
    finally:
        conn.close()


def error_code(job: dict[str, Any]) -> str | None:
    """The `code` of a job row's JSON `error`, if any."""
    if not job["error"]:
        return None
    with contextlib.suppress(ValueError, AttributeError):
        code = json.loads(job["error"]).get("code")
        return str(code) if code is not None else None
    return None
