"""Storage contract, the dashboard's and the alerts' reads: task queues, problem deliveries, subscription
health, provider outcomes, queue positions, and what the alerts watch.

Every test runs against each backend (`database`), through the stores and the `Database` API only.
"""

from __future__ import annotations

from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import dashboard, events, inbox, jobs, subscriptions, tasks
from receiver.storage.base import Database, Transaction
from tests.helpers.storage_rows import T0, AddJob, insert_subscription


def finish(tx: Transaction, job_id: str, status: JobStatus, *, at: float) -> None:
    jobs.update_status(
        tx, job_id, status=status, result=None, provider_result=None, error=None, completed_at=at, now=at
    )


def add_delivery(
    tx: Transaction, delivery_id: str, *, event_id: str, sub_id: str | None, status: str, at: float
) -> None:
    events.insert_delivery(
        tx, delivery_id, event_id=event_id, subscription_id=sub_id, target="subscription" if sub_id else "callback",
        url=None if sub_id else "https://cb.example/x", webhook_id=f"msg_{delivery_id}", now=at,
    )  # fmt: skip
    if status != "pending":
        events.update_delivery(
            tx, delivery_id, status=status, attempted=1, last_error=f"error of {delivery_id}",
            next_attempt_at=None, delivered_at=None, now=at,
        )  # fmt: skip


async def test_task_kinds_count_queued_running_and_dead_with_the_oldest_open(database: Database) -> None:
    """Per kind: pending, leased and dead tasks, and the creation time of the oldest open one."""

    def write(tx: Transaction) -> None:
        tasks.insert(tx, "deliver", None, T0, payload={"delivery_id": "a"}, lane="x")
        tasks.insert(tx, "deliver", None, T0 + 5, payload={"delivery_id": "b"}, lane="x")
        tasks.insert(tx, "notify", None, T0 + 1, payload={"n": 1}, lane="y")

    await database.write(write)
    claimed = await database.write(
        lambda tx: tasks.claim(tx, owner="w", kinds=["notify"], limit=1, lease_expires_at=T0 + 60, now=T0 + 2)
    )
    assert len(claimed) == 1
    task = claimed[0]
    await database.write(
        lambda tx: tasks.kill(tx, task.id, owner="w", attempts=task.attempts, error="gave up", now=T0 + 3)
    )
    await database.write(lambda tx: tasks.insert(tx, "notify", None, T0 + 9, payload={"n": 2}, lane="y"))
    found = await dashboard.task_kinds(database)
    assert found == [
        dashboard.TaskKindHealth("deliver", queued=2, running=0, dead=0, oldest_at=T0),
        dashboard.TaskKindHealth("notify", queued=1, running=0, dead=1, oldest_at=T0 + 9),
    ]


async def test_problem_deliveries_are_failed_and_dead_ones_paged_and_filtered(
    database: Database, add_job: AddJob
) -> None:
    """Failed and dead deliveries across subscriptions and callbacks, newest first, with their event's type
    and job; by status, by subscription, and in pages below a cursor; delivered and pending ones never."""
    job_id = await add_job()

    def write(tx: Transaction) -> None:
        insert_subscription(tx, "sub_a")
        insert_subscription(tx, "sub_b", kind="slack")
        events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=job_id, payload={}, now=T0)
        add_delivery(tx, "dlv_1", event_id="evt_1", sub_id="sub_a", status="dead", at=T0)
        add_delivery(tx, "dlv_2", event_id="evt_1", sub_id="sub_b", status="failed", at=T0)
        add_delivery(tx, "dlv_3", event_id="evt_1", sub_id=None, status="dead", at=T0)
        events.insert_event(tx, "evt_2", event_type="job.failed", job_id=job_id, payload={}, now=T0)
        add_delivery(tx, "dlv_4", event_id="evt_2", sub_id="sub_a", status="delivered", at=T0)
        add_delivery(tx, "dlv_5", event_id="evt_2", sub_id="sub_b", status="pending", at=T0)

    await database.write(write)
    rows = await dashboard.problem_deliveries(database, limit=10)
    assert [(row["id"], row["status"], row["subscription_kind"]) for row in rows] == [
        ("dlv_3", "dead", None), ("dlv_2", "failed", "slack"), ("dlv_1", "dead", "webhook"),
    ]  # fmt: skip
    assert (rows[0]["event_type"], rows[0]["job_id"], rows[0]["last_error"]) == (
        "job.succeeded", job_id, "error of dlv_3"
    )  # fmt: skip
    dead = await dashboard.problem_deliveries(database, status="dead", limit=10)
    assert [row["id"] for row in dead] == ["dlv_3", "dlv_1"]
    of_a = await dashboard.problem_deliveries(database, subscription_id="sub_a", limit=10)
    assert [row["id"] for row in of_a] == ["dlv_1"]
    first = await dashboard.problem_deliveries(database, limit=2)
    rest = await dashboard.problem_deliveries(database, cursor=first[-1]["id"], limit=2)
    assert [row["id"] for row in first + rest] == ["dlv_3", "dlv_2", "dlv_1"]
    assert await dashboard.problem_delivery_counts(database) == {"failed": 1, "dead": 2}


async def test_subscription_health_counts_the_window_and_keeps_the_last_error(
    database: Database, add_job: AddJob
) -> None:
    """Success rate over the attempts in the window, the newest failed attempt's error, failing and dead
    deliveries, and no secret column; an old attempt is out of the window."""
    job_id = await add_job()

    def write(tx: Transaction) -> None:
        insert_subscription(tx, "sub_a", now=T0)
        insert_subscription(tx, "sub_b", now=T0 + 1)
        subscriptions.disable_subscription(tx, "sub_b", reason="target is gone", now=T0 + 2)
        events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=job_id, payload={}, now=T0)
        add_delivery(tx, "dlv_1", event_id="evt_1", sub_id="sub_a", status="dead", at=T0)
        add_delivery(tx, "dlv_2", event_id="evt_1", sub_id="sub_b", status="failed", at=T0)
        for at, code, error in [
            (T0 - 100, 500, "too old"), (T0 + 1, 200, None), (T0 + 2, 500, "HTTP 500 first"),
            (T0 + 3, 200, None), (T0 + 4, 503, "HTTP 503 newest"),
        ]:  # fmt: skip
            events.insert_attempt(tx, delivery_id="dlv_1", now=at, status_code=code, latency_ms=1.0, error=error)

    await database.write(write)
    health = {item.row["id"]: item for item in await dashboard.subscription_health(database, since=T0)}
    assert list(health) == ["sub_a", "sub_b"]
    a, b = health["sub_a"], health["sub_b"]
    assert (a.attempts, a.successes, a.success_rate, a.last_error, a.last_error_at) == (
        4, 2, 0.5, "HTTP 503 newest", T0 + 4
    )  # fmt: skip
    assert (a.failing, a.dead, b.failing, b.dead) == (0, 1, 1, 0)
    assert (b.attempts, b.success_rate, b.row["status"], b.row["disabled_reason"]) == (
        0, None, "disabled", "target is gone"
    )  # fmt: skip
    assert "secret" not in a.row and "config" not in a.row and "previous_secret" not in a.row


async def test_provider_outcomes_and_queue_positions(database: Database, add_job: AddJob) -> None:
    """Per provider, jobs finished in the window and the failed ones; queued jobs with their last queue
    position, longest waiting first (a running one, or one never told, is left out)."""
    for name in ("job_1", "job_2", "job_3", "job_old"):
        await add_job(name)
    await add_job("job_ws", provider="wavespeed")
    for name in ("job_q1", "job_q2", "job_run", "job_untold"):
        await add_job(name)

    def write(tx: Transaction) -> None:
        finish(tx, "job_1", JobStatus.SUCCEEDED, at=T0 + 10)
        finish(tx, "job_2", JobStatus.FAILED, at=T0 + 11)
        finish(tx, "job_3", JobStatus.FAILED, at=T0 + 12)
        finish(tx, "job_old", JobStatus.FAILED, at=T0 - 500)
        finish(tx, "job_ws", JobStatus.SUCCEEDED, at=T0 + 10)
        for n, name in enumerate(("job_q2", "job_q1", "job_run", "job_untold")):
            jobs.record_submission(
                tx, name, request_id=f"req-{name}", urls=None, error=None, next_poll_at=None, poll_base_s=10.0,
                now=T0 + n,
            )  # fmt: skip
        dashboard.record_queue_position(tx, "job_q1", position=7, now=T0 + 20)
        dashboard.record_queue_position(tx, "job_q2", position=3, now=T0 + 21)
        dashboard.record_queue_position(tx, "job_run", position=1, now=T0 + 21)
        jobs.update_status(
            tx, "job_run", status=JobStatus.RUNNING, result=None, provider_result=None, error=None,
            completed_at=None, now=T0 + 22,
        )  # fmt: skip

    await database.write(write)
    outcomes = await dashboard.provider_outcomes(database, since=T0)
    assert [(o.provider, o.finished, o.failed) for o in outcomes] == [("fal", 3, 2), ("wavespeed", 1, 0)]
    assert outcomes[0].error_rate == 2 / 3
    queued = await dashboard.queue_positions(database, "fal", limit=10)
    assert [(row["id"], row["queue_position"], row["queue_position_at"]) for row in queued] == [
        ("job_q2", 3, T0 + 21), ("job_q1", 7, T0 + 20),
    ]  # fmt: skip


async def test_alert_reads_see_disabled_subscriptions_dead_letters_and_webhook_silence(
    database: Database, add_job: AddJob
) -> None:
    """What the alerter checks: subscriptions disabled (not deleted) after a time; dead deliveries after a time
    without alerts' own; waiting jobs and completions per provider and kind; the last alert of a kind."""
    job_id = await add_job()
    waiting = await add_job("job_wait")

    def write(tx: Transaction) -> None:
        for sub_id in ("sub_old", "sub_new", "sub_deleted"):
            insert_subscription(tx, sub_id)
        subscriptions.disable_subscription(tx, "sub_old", reason="failing", now=T0)
        subscriptions.disable_subscription(tx, "sub_new", reason="target is gone", now=T0 + 10)
        subscriptions.delete_subscription(tx, "sub_deleted", now=T0 + 10)
        events.insert_event(tx, "evt_job", event_type="job.succeeded", job_id=job_id, payload={}, now=T0)
        events.insert_event(tx, "evt_alert", event_type="alert.dead_letters", job_id=None, payload={}, now=T0 + 3)
        add_delivery(tx, "dlv_1", event_id="evt_job", sub_id="sub_old", status="dead", at=T0 + 5)
        add_delivery(tx, "dlv_2", event_id="evt_job", sub_id="sub_new", status="dead", at=T0 - 5)
        add_delivery(tx, "dlv_3", event_id="evt_alert", sub_id="sub_new", status="dead", at=T0 + 5)
        jobs.record_submission(
            tx, waiting, request_id="req-w", urls=None, error=None, next_poll_at=None, poll_base_s=10.0, now=T0
        )
        event = ProviderEvent("fal", "webhook", "d1", job_id, "req-1", Outcome(JobStatus.SUCCEEDED), b"{}", {})
        inbox.insert(tx, event, now=T0 + 50)

    await database.write(write)

    def read(tx: Transaction) -> dict[str, object]:
        dashboard.lock_alerts(tx)
        return {
            "disabled": [row["id"] for row in dashboard.disabled_subscriptions(tx, since=T0 + 1)],
            "dead": dashboard.dead_letters(tx, since=T0),
            "waiting": dashboard.waiting_jobs(tx, "fal", before=T0 + 1),
            "waiting_later": dashboard.waiting_jobs(tx, "fal", before=T0),
            "webhooks": dashboard.completions_since(tx, "fal", kind="webhook", since=T0 + 50),
            "webhooks_after": dashboard.completions_since(tx, "fal", kind="webhook", since=T0 + 51),
            "polls": dashboard.completions_since(tx, "fal", kind="poll", since=T0),
            "last_dead": dashboard.alert_last_sent(tx, "dead_letters"),
            "last_other": dashboard.alert_last_sent(tx, "subscription_disabled"),
            "target": dict(dashboard.alert_target(tx, "sub_new") or {}),
            "no_target": dashboard.alert_target(tx, "sub_none"),
        }

    found = await database.write(read)
    target = found.pop("target")
    assert found == {
        "disabled": ["sub_new"],
        "dead": (1, 0),
        "waiting": (1, T0),
        "waiting_later": (0, None),
        "webhooks": 1,
        "webhooks_after": 0,
        "polls": 0,
        "last_dead": T0 + 3,
        "last_other": None,
        "no_target": None,
    }
    assert isinstance(target, dict)
    assert (target["status"], target["disabled_reason"], target["url"]) == (
        "disabled", "target is gone", "https://hooks.example/sub_new"
    )  # fmt: skip


async def test_a_revoked_session_is_refused_until_it_expires(database: Database) -> None:
    """A logged-out session is revoked for every process until it would have expired; revoking twice is fine,
    and a later revocation forgets the rows of sessions that expired anyway."""
    assert not await dashboard.session_revoked(database, "sid-a", now=T0)
    await database.write(lambda tx: dashboard.revoke_session(tx, "sid-a", expires_at=T0 + 100, now=T0))
    await database.write(lambda tx: dashboard.revoke_session(tx, "sid-a", expires_at=T0 + 100, now=T0))
    assert await dashboard.session_revoked(database, "sid-a", now=T0 + 99)
    assert not await dashboard.session_revoked(database, "sid-b", now=T0 + 99)
    assert not await dashboard.session_revoked(database, "sid-a", now=T0 + 100)  # expired: nothing to refuse
    await database.write(lambda tx: dashboard.revoke_session(tx, "sid-b", expires_at=T0 + 500, now=T0 + 200))
    assert await database.value("dashboard_session_revoked", sid="sid-a", now=T0) is None  # forgotten
    assert await dashboard.session_revoked(database, "sid-b", now=T0 + 200)
