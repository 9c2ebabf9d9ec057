"""What the dashboard's pages and health strip read, and what the alerts watch: every query on them.

Reads across tables (jobs, tasks, deliveries, subscriptions, inbox, events) that the API's stores (`jobs`,
`events`, `images`, ...) do not ask, in their own SQL file (`sql/<dialect>/dashboard.sql`). Functions taking a
`Transaction` run inside a caller's transaction body; the `async` ones read through the `Database`; rows are
plain mappings. Nothing here returns a secret column.
"""

from __future__ import annotations

from dataclasses import dataclass

from receiver.storage.base import Database, Row, Transaction

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


# --- the health strip -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskKindHealth:
    """One task kind's queue: `queued` (pending), `running` (leased), `dead`, and `oldest_at`, the creation
    time of its oldest open task (None when none is open)."""

    kind: str
    queued: int
    running: int
    dead: int
    oldest_at: float | None


async def task_kinds(db: Database) -> list[TaskKindHealth]:
    """Every task kind with an open or dead task, by name."""
    rows = await db.all("dashboard_task_kinds")
    return [
        TaskKindHealth(row["kind"], int(row["queued"]), int(row["running"]), int(row["dead"]), row["oldest_at"])
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class ProviderOutcomes:
    """A provider's jobs finished in a window: how many, how many failed, and the submit calls they took."""

    provider: str
    finished: int
    failed: int
    submits: int

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


async def provider_outcomes(db: Database, *, since: float) -> list[ProviderOutcomes]:
    """Per provider (by name), the jobs that finished at or after `since`."""
    rows = await db.all("dashboard_provider_outcomes", since=since)
    return [
        ProviderOutcomes(row["provider"], int(row["finished"]), int(row["failed"]), int(row["submits"] or 0))
        for row in rows
    ]


async def queue_positions(db: Database, provider: str, *, limit: int) -> list[Row]:
    """Up to `limit` jobs still queued at `provider` with the position it last told (id, model, queue_position,
    queue_position_at, submitted_at), the longest waiting first."""
    return await db.all("dashboard_queue_positions", provider=provider, limit=limit)


async def job_queue_position(db: Database, job_id: str) -> tuple[int, float] | None:
    """The queue position `job_id`'s provider last told and when (seconds since the epoch), or None."""
    row = await db.one("dashboard_job_queue_position", id=job_id)
    if row is None or row["queue_position"] is None:
        return None
    return int(row["queue_position"]), float(row["queue_position_at"])


def record_queue_position(tx: Transaction, job_id: str, *, position: int, now: float) -> None:
    """A job's place in its provider's queue, as the provider told it at `now` (fal's `queue_position`)."""
    tx.execute("record_queue_position", id=job_id, position=position, now=now)


# --- deliveries and subscriptions -----------------------------------------------------------------------


async def problem_deliveries(
    db: Database,
    *,
    status: str | None = None,
    subscription_id: str | None = None,
    cursor: str | None = None,
    limit: int,
) -> list[Row]:
    """Failing (`failed`: retried later) and dead deliveries across every target, newest id first, ids below
    `cursor`; each row also holds its event's `event_type` and `job_id` and its subscription's kind."""
    return await db.all(
        "dashboard_problem_deliveries", status=status, subscription_id=subscription_id, cursor=cursor, limit=limit
    )


async def problem_delivery_counts(db: Database) -> dict[str, int]:
    """How many deliveries are `failed` and `dead` now (both keys always present)."""
    counts = {"failed": 0, "dead": 0}
    for row in await db.all("dashboard_problem_delivery_counts"):
        counts[row["status"]] = int(row["n"])
    return counts


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """A subscription as the operator pages show it (no secret), with its delivery health: attempts and
    successes in the window, the newest failed attempt's error and time, and its failing and dead deliveries."""

    row: Row
    attempts: int
    successes: int
    last_error: str | None
    last_error_at: float | None
    failing: int
    dead: int

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None


async def subscription_health(db: Database, *, since: float) -> list[SubscriptionHealth]:
    """Every subscription, oldest first, with its health over the attempts made at or after `since` (the last
    error falls back to the one its circuit breaker keeps when no attempt in the window failed)."""
    subscriptions = await db.all("dashboard_subscriptions")
    attempts = {row["subscription_id"]: row for row in await db.all("dashboard_subscription_attempts", since=since)}
    deliveries: dict[str, dict[str, int]] = {}
    for row in await db.all("dashboard_subscription_deliveries"):
        deliveries.setdefault(row["subscription_id"], {})[row["status"]] = int(row["n"])
    result = []
    for sub in subscriptions:
        counted = attempts.get(sub["id"])
        problems = {"failed": 0, "dead": 0, **deliveries.get(sub["id"], {})}
        last_error, last_error_at = sub["circuit_error"], None
        if counted is not None and counted["last_failed_attempt"] is not None:
            attempt = await db.one("dashboard_attempt", id=counted["last_failed_attempt"])
            if attempt is not None:
                last_error, last_error_at = attempt["error"], attempt["attempted_at"]
        result.append(
            SubscriptionHealth(
                row=sub,
                attempts=int(counted["attempts"]) if counted else 0,
                successes=int(counted["successes"]) if counted else 0,
                last_error=last_error,
                last_error_at=last_error_at,
                failing=problems["failed"],
                dead=problems["dead"],
            )
        )
    return result


# --- alerts ---------------------------------------------------------------------------------------------


def lock_alerts(tx: Transaction) -> None:
    """Serialize alert checks across every worker for the rest of the transaction (PostgreSQL: an advisory
    lock; SQLite's single writer already does)."""
    tx.execute("alert_lock")


def alert_last_sent(tx: Transaction, kind: str) -> float | None:
    """When the last alert of `kind` was recorded (an event `alert.<kind>` without a job), or None."""
    value = tx.value("alert_last_sent", type=f"alert.{kind}")
    return None if value is None else float(value)


def disabled_subscriptions(tx: Transaction, *, since: float) -> list[Row]:
    """Subscriptions disabled by the deliverer (not deleted) after `since` (id, kind, disabled_reason,
    updated_at), oldest first."""
    return tx.all("alert_disabled_subscriptions", since=since)


def dead_letters(tx: Transaction, *, since: float) -> tuple[int, int]:
    """(deliveries, tasks) that died after `since`; alert deliveries are not counted."""
    return int(tx.value("alert_dead_deliveries", since=since) or 0), int(tx.value("alert_dead_tasks", since=since) or 0)


def waiting_jobs(tx: Transaction, provider: str, *, before: float) -> tuple[int, float | None]:
    """(how many, the oldest submit time) of the jobs submitted to `provider` before `before` and still open."""
    row = tx.one("alert_waiting_jobs", provider=provider, before=before)
    if row is None:
        return 0, None
    return int(row["n"] or 0), row["oldest_at"]


def completions_since(tx: Transaction, provider: str, *, kind: str, since: float) -> int:
    """How many completions of `kind` (`webhook`, or `poll`: a job the reconciler settled) `provider` gave
    since `since`."""
    return int(tx.value("alert_inbox_since", provider=provider, kind=kind, since=since) or 0)


def alert_target(tx: Transaction, sub_id: str) -> Row | None:
    """The alert subscription's shown columns (id, kind, url, status, disabled_reason, failing_since,
    circuit_state), or None when there is no such subscription."""
    return tx.one("alert_target", id=sub_id)


# --- sessions logged out -----------------------------------------------------------------------------------


async def session_revoked(db: Database, sid: str, *, now: float) -> bool:
    """Whether the dashboard session `sid` was logged out (by any process) before it expires."""
    return await db.one("dashboard_session_revoked", sid=sid, now=now) is not None


def revoke_session(tx: Transaction, sid: str, *, expires_at: float, now: float) -> None:
    """Log the dashboard session `sid` out for every process until it would have expired; the rows of sessions
    that expired anyway go."""
    tx.execute("forget_expired_revoked_sessions", now=now)
    tx.execute("revoke_dashboard_session", sid=sid, expires_at=expires_at)
