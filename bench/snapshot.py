"""The receiver's SQLite file read directly, read-only, with the stdlib: what the bench drivers check and count."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def read_db(path: Path) -> Snapshot:
    conn = connect_ro(path, timeout_s=30)
    conn.row_factory = sqlite3.Row
    try:

        def rows(sql: str) -> list[dict[str, Any]]:
            return [dict(row) for row in conn.execute(sql)]

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
    finally:
        conn.close()


def leased_kinds(db_path: Path) -> list[str]:
    """The kinds of the tasks leased right now (a handler is running them)."""
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
