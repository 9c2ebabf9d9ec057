"""The `deliver` task: one notification to one target, every attempt logged, retried on a day-long schedule."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx

from receiver.errors import DeferredError, RetryLaterError, SealedSecretError
from receiver.images.blobs import BlobStore
from receiver.models import Task
from receiver.notify.circuits import BreakerPolicy, Circuit, CircuitState, admit, record_attempt
from receiver.notify.secrets import open_subscription
from receiver.notify.targets import (
    RETRY_SCHEDULE_S,
    Attempt,
    ImageAttachment,
    Message,
    Target,
    describe,
    next_delay,
    send,
)
from receiver.observability import metrics
from receiver.settings import Settings
from receiver.storage import events, subscriptions, tasks
from receiver.storage.base import Database, Row, Transaction
from receiver.support.sealing import Sealer
from receiver.tasks.lanes import delivery_lane, is_callback_lane
from receiver.tasks.runner import TaskContext

log = logging.getLogger(__name__)
FINAL = frozenset({"delivered", "dead"})
PROBE_MARGIN_S = 5.0  # a probe holds the half-open circuit this much longer than one attempt may take


def callback_secret(settings: Settings, secret_key: bytes) -> str:
    """The secret that signs per-job `callback_url` deliveries (shown by `GET /v1/callback-secret`)."""
    if settings.callback_secret is not None:
        return settings.callback_secret.get_secret_value()
    raw = hmac.new(secret_key, b"callback-signing", hashlib.sha256).digest()[:24]
    return "whsec_" + base64.b64encode(raw).decode()


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        http: httpx.AsyncClient,
        *,
        secret_key: bytes,
        clock: Callable[[], float],
        sealer: Sealer,
    ) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.http = http
        self.clock = clock
        self.sealer = sealer
        self.callback_secret = callback_secret(settings, secret_key)
        self.breaker = BreakerPolicy(
            failures=settings.notify_breaker_failures,
            open_s=settings.notify_breaker_open_s,
            max_open_s=settings.notify_breaker_max_open_s,
            probe_s=settings.notify_timeout_s + PROBE_MARGIN_S,
        )
        self._slots: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.notify_concurrency_per_target)
        )
        # A delivery held back by an open circuit longer than a failing one would be retried dies.
        self.hold_limit_s = sum(RETRY_SCHEDULE_S) * settings.notify_retry_scale

    async def handle_deliver(self, task: Task, ctx: TaskContext) -> None:
        delivery = await events.read_delivery(self.db, task.payload["delivery_id"])
        if delivery is None or delivery["status"] in FINAL:
            return
        event = await events.read_event(self.db, delivery["event_id"])
        subscription = None
        if delivery["subscription_id"]:
            subscription = await subscriptions.read_subscription(self.db, delivery["subscription_id"])
            if subscription is None or subscription["status"] != "active":
                reason = (subscription["disabled_reason"] if subscription else None) or "deleted"
                await self._finish(
                    delivery["id"], "dead", f"subscription disabled ({reason})", attempted=0, done=(task, ctx)
                )
                return
        assert event is not None  # a delivery row always has its event (foreign key)
        lane = delivery_lane(delivery["subscription_id"], delivery["url"])
        try:
            target = self._target(delivery, subscription)
        except SealedSecretError as exc:  # a key missing from the configuration: a failed try, retried later
            # Not the target's fault: no lane, so its circuit breaker does not count it.
            unsent = Attempt(False, None, 0.0, exc.message, None, gone=False)
            await self._outcome(task, ctx, delivery, subscription, unsent, None)
            return
        message = await self._message(delivery, event, target)
        # The runner claims up to four times this many per target, so the next one is ready the moment a send
        # ends. A failed attempt holds its slot until its outcome, and the breaker's, is stored (the next one
        # must see the circuit it leaves); a delivered one frees it as soon as the target has answered.
        slot = _Slot(self._slots[lane])
        waited = slot.semaphore.locked()
        async with slot:
            # The circuit as it is now: after a wait for the slot the subscription row read above is stale.
            fresh = subscription if subscription is not None and not waited else None
            await self._attempt(task, ctx, delivery, subscription, target, message, lane, fresh, slot)

    async def _attempt(
        self,
        task: Task,
        ctx: TaskContext,
        delivery: Row,
        subscription: Row | None,
        target: Target,
        message: Message,
        lane: str,
        circuit_row: Row | None,
        slot: _Slot,
    ) -> None:
        wait_s = await self._admit(lane, subscription=subscription is not None, row=circuit_row)
        if wait_s is not None:
            if self.clock() - delivery["updated_at"] > self.hold_limit_s:
                error = "target unreachable: its circuit stayed open"
                await self._finish(delivery["id"], "dead", error, attempted=0, done=(task, ctx))
                return
            raise DeferredError(f"the circuit of delivery {delivery['id']}'s target is open", retry_after_s=wait_s)
        attempt = await send(
            self.http,
            target,
            message,
            now=self.clock(),
            timeout_s=self.settings.notify_timeout_s,
            allow_private=self.settings.notify_allow_private,
            telegram_api_url=self.settings.telegram_api_url,
        )
        metrics.DELIVERIES.labels("delivered" if attempt.ok else "failed", target.kind).inc()
        if attempt.ok:
            slot.release()
        await self._outcome(task, ctx, delivery, subscription, attempt, lane)

    async def _outcome(
        self,
        task: Task,
        ctx: TaskContext,
        delivery: Row,
        subscription: Row | None,
        attempt: Attempt,
        lane: str | None,
    ) -> None:
        """Store one attempt's outcome: delivered, failed (retried later), or dead; a final one finishes the
        task in the same write."""
        now = self.clock()
        record = {
            "delivery_id": delivery["id"],
            "now": now,
            "status_code": attempt.status_code,
            "latency_ms": round(attempt.latency_ms, 1),
            "error": attempt.error,
            "lane": lane,
            "answered": attempt.status_code is not None,
        }
        if attempt.ok:
            await self._finish(
                delivery["id"], "delivered", None, record=record, subscription=subscription, done=(task, ctx)
            )
            return
        if attempt.gone and subscription is not None:
            gone = f"target is gone: {attempt.error}"
            await self._finish(delivery["id"], "dead", attempt.error, record=record, disable=gone, done=(task, ctx))
            return
        # A failure no retry can fix (and a callback that is gone) is dead at once, not after a day of retries.
        never = attempt.permanent or attempt.gone
        delay = None if never else next_delay(task.attempts, retry_after_s=attempt.retry_after_s)
        if delay is not None:
            delay *= self.settings.notify_retry_scale
        disable = self._failing_too_long(subscription, now)
        if delay is None or disable:
            await self._finish(
                delivery["id"], "dead", attempt.error, record=record, disable=disable, failing=True, done=(task, ctx)
            )
            return
        await self._finish(
            delivery["id"],
            "failed",
            attempt.error,
            record=record,
            next_at=now + delay,
            failing=subscription is not None,
        )
        raise RetryLaterError(f"delivery {delivery['id']} failed: {attempt.error}", retry_after_s=delay)

    async def _admit(self, lane: str, *, subscription: bool, row: Row | None) -> float | None:
        """None when a delivery to the target may go now, else the seconds to wait (its circuit is open).
        `row`: the target's circuit as just read (a subscription row holds its own), else it is read here."""
        if row is None:
            row = await subscriptions.read_circuit(self.db, lane, subscription=subscription)
        circuit = Circuit.from_row(row)
        if circuit.state is CircuitState.CLOSED:
            return None
        now = self.clock()
        wait_s = circuit.wait_s(now)
        if wait_s is not None:
            return wait_s
        # The window has ended: whoever the writer lets through first is the one probe.
        return await self.db.write(lambda tx: admit(tx, lane, subscription=subscription, now=now, policy=self.breaker))

    def _failing_too_long(self, subscription: Row | None, now: float) -> str | None:
        if subscription is None or subscription["failing_since"] is None:
            return None
        if now - subscription["failing_since"] < self.settings.notify_disable_after_s:
            return None
        return f"failing for more than {self.settings.notify_disable_after_s / 3600:g} h"

    def _target(self, delivery: Row, subscription: Row | None) -> Target:
        if subscription is None:
            return Target(kind="callback", url=delivery["url"], secrets=(self.callback_secret,))
        return self.target_for(subscription)

    def target_for(self, subscription: Row) -> Target:
        """Where and how a subscription is sent to (both secrets during a rotation's grace period);
        SealedSecretError when its stored credentials do not open with the configured keys."""
        opened = open_subscription(self.sealer, subscription)
        secrets = [opened.secret] if opened.secret else []
        if opened.previous_secret and (subscription["previous_expires_at"] or 0) > self.clock():
            secrets.append(opened.previous_secret)
        return Target(
            kind=subscription["kind"],
            url=opened.url,
            secrets=tuple(secrets),
            chat_id=opened.chat_id,
            bot_token=opened.bot_token,
        )

    async def _message(self, delivery: Row, event: Row, target: Target) -> Message:
        payload: dict[str, Any] = json.loads(event["payload"])
        image = None
        if target.kind in ("slack", "discord", "telegram"):
            images = (payload["data"].get("job") or {}).get("images") or []  # an alert has no job
            first = next((img for img in images if img.get("sha256")), None)
            if first is not None:
                data = await self.blobs.get(first["sha256"])
                if data is not None:
                    extension = (first["content_type"] or "image/png").split("/")[-1]
                    image = ImageAttachment(data, first["content_type"], f"output.{extension}", first["url"])
        text = describe(event["type"], payload)
        return Message(
            webhook_id=delivery["webhook_id"], event_type=event["type"], payload=payload, text=text, image=image
        )

    def _record_circuit(self, tx: Transaction, record: dict[str, Any]) -> None:
        lane = record["lane"]
        if lane is None:  # the attempt never reached the target
            return
        record_attempt(
            tx, lane, subscription=not is_callback_lane(lane), answered=record["answered"], error=record["error"],
            now=record["now"], policy=self.breaker,
        )  # fmt: skip

    async def _finish(
        self,
        delivery_id: str,
        status: str,
        error: str | None,
        *,
        record: dict[str, Any] | None = None,
        attempted: int = 1,
        next_at: float | None = None,
        subscription: Row | None = None,
        disable: str | None = None,
        failing: bool = False,
        done: tuple[Task, TaskContext] | None = None,
    ) -> None:
        """Store a delivery's new state (and the attempt, the breaker's count, the subscription's health);
        with `done`, the delivery is final and its task is finished in the same write."""
        now = self.clock()

        def write(tx: Transaction) -> None:
            if done is not None:
                tasks.complete(tx, done[0].id, owner=done[1].owner, attempts=done[0].attempts, now=now)
            if record is not None:
                events.insert_attempt(
                    tx,
                    delivery_id=record["delivery_id"],
                    now=record["now"],
                    status_code=record["status_code"],
                    latency_ms=record["latency_ms"],
                    error=record["error"],
                )
                self._record_circuit(tx, record)
            events.update_delivery(
                tx,
                delivery_id,
                status=status,
                attempted=attempted if record is not None else 0,
                last_error=error,
                next_attempt_at=next_at,
                delivered_at=now if status == "delivered" else None,
                now=now,
            )
            sub_id = events.delivery_subscription_id(tx, delivery_id)
            if sub_id is None:
                return
            if status == "delivered":
                subscriptions.mark_succeeded(tx, sub_id, now=now)
            elif failing:
                subscriptions.mark_failing(tx, sub_id, now=now)
            if disable:
                log.warning("subscription %s disabled: %s", sub_id, disable)
                subscriptions.disable_subscription(tx, sub_id, reason=disable, now=now)

        await self.db.write(write)
        if done is not None:
            done[1].finished = True


class _Slot:
    """One of a target's sending slots, given back once: early by `release()`, else when the block ends."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self._held = False

    async def __aenter__(self) -> _Slot:
        await self.semaphore.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.semaphore.release()
