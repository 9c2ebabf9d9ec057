"""The dashboard's reads: what its pages show that the API's stores (`jobs`, `events`, `images`) do not ask.

Every function reads through the `Database` (see `receiver.storage.base`); rows are plain mappings.
"""

from __future__ import annotations

from receiver.storage.base import Database, Row

PROMPT_CHARS = 500  # the head of a prompt that the jobs list shows (a prompt may be long)

# --- jobs pages ---------------------------------------------------------------------------------------


def like_pattern(text: str) -> str:
    """`%text%` for LIKE, with `\\`, `%` and `_` in `text` matched literally (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_jobs(
    db: Database,
    *,
    status: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    since: float | None = None,
    until: float | None = None,
    search: str | None = None,
    cursor: str | None = None,
    limit: int,
) -> list[Row]:
    """Up to `limit` jobs matching every filter given, newest first, ids below `cursor`. `search` is a job id
    or provider request id (exact) or any part of the metadata JSON (case-insensitive). Each row: the job's
    columns but its input and results, `prompt` (its first PROMPT_CHARS characters), `input_sha256` and
    `output_sha256` (the first stored image of each role, or None)."""
    return await db.all(
        "list_dashboard_jobs",
        status=status,
        provider=provider,
        model=model,
        since=since,
        until=until,
        search=search,
        pattern=like_pattern(search) if search is not None else None,
        cursor=cursor,
        limit=limit,
        prompt_chars=PROMPT_CHARS,
    )


async def list_job_changes(db: Database, *, since: float, after_id: str = "", recent: float, limit: int) -> list[Row]:
    """Up to `limit` jobs (as `list_jobs` rows) whose (updated_at, id) comes after (`since`, `after_id`), in
    that order: open ones, and finished ones that finished at or after `recent`."""
    return await db.all(
        "list_dashboard_job_changes",
        since=since,
        after_id=after_id,
        recent=recent,
        limit=limit,
        prompt_chars=PROMPT_CHARS,
    )


async def list_job_images(db: Database, job_id: str) -> list[Row]:
    """A job's images, outputs by position then its input (role, position, sha256, source_url, error,
    created_at: when stored, content_type, width, height, bytes)."""
    return await db.all("list_dashboard_job_images", job_id=job_id)


async def list_job_events(db: Database, job_id: str) -> list[Row]:
    """A job's events, in order (seq, id, type, created_at)."""
    return await db.all("list_dashboard_job_events", job_id=job_id)
