"""Operator alerts: a subscription disabled, dead letters piling up, webhooks stopping while jobs wait.

The alerter runs in the worker role beside the reconciler, outside every path it watches: it reads the
database, and an alert is an event (`alert.<kind>`, no job) with one delivery to `RECEIVER_ALERT_SUBSCRIPTION`,
written in one transaction. The delivery is sent, signed, retried and dead-lettered by the deliverer like any
other. At most one alert per kind per `RECEIVER_ALERT_RATE_LIMIT_S`, across every worker (the check and the
write hold a lock; the last alert of a kind is its newest event). An alert whose target is itself disabled
or gone is recorded but not sent (logged), and alert deliveries that die are not counted as dead letters: an
alert never raises another about itself.

Alert text names ids, counts, providers and reasons, never a URL's credentials, a webhook token or a
subscription secret (it is passed through `redaction.redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from receiver.models import IdFactory
from receiver.notify.redaction import redact
from receiver.settings import Settings
from receiver.storage import dashboard, events
from receiver.storage.base import Database, Row, Transaction
from receiver.tasks.lanes import queue_delivery

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
MAX_LISTED = 10  # subscriptions named in one alert; more are counted


class AlertKind(StrEnum):
    SUBSCRIPTION_DISABLED = "subscription_disabled"
    DEAD_LETTERS = "dead_letters"
    WEBHOOKS_SILENT = "webhooks_silent"


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Where alerts go and when they fire (the `RECEIVER_ALERT_*` settings). `webhook_providers`: the
    providers whose completions arrive by webhook (their silence is watched)."""

    subscription_id: str
    interval_s: float = 60.0
    rate_limit_s: float = 3600.0
    dead_letters: int = 10
    webhook_silence_s: float = 1800.0
    webhook_providers: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, webhook_providers: tuple[str, ...]) -> AlertPolicy | None:
        """None when no alert subscription is configured (no alerter runs)."""
        if not settings.alert_subscription:
            return None
        return cls(
            subscription_id=settings.alert_subscription,
            interval_s=settings.alert_interval_s,
            rate_limit_s=settings.alert_rate_limit_s,
            dead_letters=settings.alert_dead_letters,
            webhook_silence_s=settings.alert_webhook_silence_s,
            webhook_providers=webhook_providers,
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as recorded: its event id, whether a delivery was queued, and its text."""

    kind: AlertKind
    event_id: str
    queued: bool
    summary: str


def clean(text: str) -> str:
    """Alert text with URL-borne credentials (tokens, user-info, chat webhook secrets) removed."""
    return redact(text)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Alerter:
    """Every `policy.interval_s`, checks each alert kind and records (and queues) the ones that fire;
    `run_once()` for tests. `on_task` wakes the task runner after a delivery was queued."""

    def __init__(
        self,
        db: Database,
        policy: AlertPolicy,
        *,
        clock: Callable[[], float],
        on_task: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        self.on_task = on_task
        self.ids = IdFactory()
        self._stop = asyncio.Event()

    async def run_once(self) -> list[Alert]:
        """One pass over every kind; the alerts recorded."""
        sent = []
        for kind in AlertKind:
            now = self.clock()

            def check(tx: Transaction, kind: AlertKind = kind, now: float = now) -> Alert | None:
                return self._check(tx, kind, now)

            alert = await self.db.write(check)
            if alert is None:
                continue
            sent.append(alert)
            if alert.queued:
                self.on_task()
                log.warning("alert %s sent to subscription %s: %s", kind, self.policy.subscription_id, alert.summary)
        return sent

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("alert check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.policy.interval_s)

    def stop(self) -> None:
        self._stop.set()

    # --- one kind, inside one transaction --------------------------------------------------------------

    def _check(self, tx: Transaction, kind: AlertKind, now: float) -> Alert | None:
        dashboard.lock_alerts(tx)
        last = dashboard.alert_last_sent(tx, kind)
        if last is not None and now - last < self.policy.rate_limit_s:
            return None
        # Since the last alert of the kind; the first one looks back one window (at least one check's interval).
        since = last if last is not None else now - max(self.policy.rate_limit_s, self.policy.interval_s)
        found = self._condition(tx, kind, since=since, now=now)
        if found is None:
            return None
        summary, details = found
        return self._record(tx, kind, clean(summary), details, now)

    def _condition(
        self, tx: Transaction, kind: AlertKind, *, since: float, now: float
    ) -> tuple[str, dict[str, Any]] | None:
        if kind is AlertKind.SUBSCRIPTION_DISABLED:
            return self._disabled(dashboard.disabled_subscriptions(tx, since=since))
        if kind is AlertKind.DEAD_LETTERS:
            deliveries, tasks = dashboard.dead_letters(tx, since=since)
            if deliveries + tasks < self.policy.dead_letters:
                return None
            summary = (
                f"{deliveries + tasks} dead letters since {_iso(since)} ({deliveries} deliveries, {tasks} tasks; "
                f"threshold {self.policy.dead_letters}): see /deliveries to retry or replay them"
            )
            return summary, {"dead_deliveries": deliveries, "dead_tasks": tasks, "since": _iso(since)}
        return self._silent(tx, now)

    def _disabled(self, rows: list[Row]) -> tuple[str, dict[str, Any]] | None:
        if not rows:
            return None
        listed = [
            {"id": row["id"], "kind": row["kind"], "reason": clean(row["disabled_reason"] or "")}
            for row in rows[:MAX_LISTED]
        ]
        names = "; ".join(f"{sub['id']} ({sub['kind']}): {sub['reason']}" for sub in listed)
        more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
        summary = f"{len(rows)} subscription(s) disabled: {names}{more}"
        return summary, {"subscriptions": listed, "count": len(rows)}

    def _silent(self, tx: Transaction, now: float) -> tuple[str, dict[str, Any]] | None:
        silence_s = self.policy.webhook_silence_s
        cutoff = now - silence_s
        quiet: list[dict[str, Any]] = []
        for provider in self.policy.webhook_providers:
            waiting, oldest_at = dashboard.waiting_jobs(tx, provider, before=cutoff)
            polled = dashboard.completions_since(tx, provider, kind="poll", since=cutoff)
            if not waiting and not polled:
                continue  # nothing has waited that long: silence means nothing
            if dashboard.completions_since(tx, provider, kind="webhook", since=cutoff):
                continue
            quiet.append(
                {
                    "provider": provider,
                    "waiting_jobs": waiting,
                    "oldest_waiting_s": round(now - oldest_at) if oldest_at is not None else None,
                    "settled_by_polling": polled,
                }
            )
        if not quiet:
            return None
        parts = []
        for entry in quiet:
            text = f"{entry['provider']}: {entry['waiting_jobs']} job(s) waiting"
            if entry["oldest_waiting_s"] is not None:
                text += f", the oldest for {_minutes(entry['oldest_waiting_s'])}"
            if entry["settled_by_polling"]:
                text += f"; {entry['settled_by_polling']} settled by polling instead"
            parts.append(text)
        summary = f"no webhook received for {_minutes(silence_s)} while jobs wait ({'; '.join(parts)})"
        return summary, {"providers": quiet, "silence_s": silence_s}

    def _record(self, tx: Transaction, kind: AlertKind, summary: str, details: dict[str, Any], now: float) -> Alert:
        """The alert's event, and its delivery when the target can take it (else why not, logged)."""
        event_id = self.ids.new("evt", now)
        event_type = f"alert.{kind}"
        payload = {
            "schema_version": SCHEMA_VERSION,
            "id": event_id,
            "type": event_type,
            "timestamp": _iso(now),
            "data": {"alert": {"kind": str(kind), "summary": summary, "details": details}},
        }
        events.insert_event(tx, event_id, event_type=event_type, job_id=None, payload=payload, now=now)
        target_id = self.policy.subscription_id
        target = dashboard.alert_target(tx, target_id)
        if target is None or target["status"] != "active":
            why = "does not exist"
            if target is not None:
                why = f"is itself disabled ({clean(target['disabled_reason'] or '')})"
            log.error("alert %s not sent: the alert subscription %s %s: %s", kind, target_id, why, summary)
            return Alert(kind, event_id, False, summary)
        if target["failing_since"] is not None or target["circuit_state"] != "closed":
            log.warning("alert %s: the alert subscription %s is itself failing; queued anyway", kind, target_id)
        delivery_id = self.ids.new("dlv", now)
        events.insert_delivery(
            tx,
            delivery_id,
            event_id=event_id,
            subscription_id=target_id,
            target="subscription",
            url=target["url"],
            webhook_id=f"msg_{delivery_id[4:]}",
            now=now,
        )
        queue_delivery(tx, delivery_id, now, subscription_id=target_id, url=target["url"])
        return Alert(kind, event_id, True, summary)
