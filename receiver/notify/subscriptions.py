"""Subscriptions and deliveries as the API and CLI manage them: create, list, rotate, delete, retry, replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from receiver.errors import InputError, NotFoundError
from receiver.models import IdFactory, RowLike
from receiver.notify.circuits import Circuit
from receiver.notify.secrets import seal_secret, stored_fields
from receiver.notify.signing import new_secret
from receiver.notify.target_rules import TargetProblem, check_target
from receiver.storage import events, subscriptions, tasks
from receiver.storage.base import Database, Row, Transaction
from receiver.support.netguard import BlockedTarget, Resolver, refuse_private_names, system_resolver
from receiver.support.sealing import Sealer
from receiver.tasks.lanes import delivery_lane, queue_delivery
from receiver.validation import describe_validation_error

MetadataValue = str | int | float | bool
EventType = Literal["job.succeeded", "job.failed", "job.cancelled"]
ALL_EVENTS: tuple[EventType, ...] = ("job.succeeded", "job.failed", "job.cancelled")
CREATE_DNS_TIMEOUT_S = 3.0  # a slower lookup lets the subscription through: every send checks again
REPLAY_PAGE = 500  # deliveries requeued per statement by a bulk replay


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = None
    model: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=20)


class CreateSubscription(BaseModel):
    """The body of `POST /v1/subscriptions`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webhook", "slack", "discord", "telegram"]
    url: str | None = Field(None, max_length=2048)
    events: list[EventType] = Field(default_factory=lambda: list(ALL_EVENTS), min_length=1)
    filter: Filter = Field(default_factory=Filter)
    bot_token: str | None = Field(None, max_length=200, description="telegram only")
    chat_id: str | None = Field(None, max_length=100, description="telegram only")

    @model_validator(mode="after")
    def _target_fields(self) -> CreateSubscription:
        if self.kind == "telegram":
            if not self.bot_token or not self.chat_id:
                raise ValueError("telegram subscriptions need bot_token and chat_id")
        elif not self.url:
            raise ValueError(f"{self.kind} subscriptions need a url")
        return self


async def check_new_target(request: CreateSubscription, *, allow_private: bool, resolver: Resolver) -> None:
    """The rules every send applies, applied now (422 naming the field); a URL's name is also resolved
    once, and refused when it points into a private network (a failed lookup lets it through)."""
    try:
        fields = {"url": request.url, "bot_token": request.bot_token, "chat_id": request.chat_id}
        check_target(request.kind, **fields, allow_private=allow_private)
        if request.url and request.kind != "telegram":
            await refuse_private_names(
                request.url, allow_private=allow_private, resolver=resolver, timeout_s=CREATE_DNS_TIMEOUT_S
            )
    except TargetProblem as exc:
        raise InputError(str(exc)) from None
    except BlockedTarget as exc:
        raise InputError(f"url: {exc.message}") from None


def subscription_view(row: RowLike) -> dict[str, Any]:
    config = json.loads(row["config"] or "{}")
    return {
        "id": row["id"],
        "kind": row["kind"],
        "url": row["url"],
        "chat_id": config.get("chat_id"),
        "events": json.loads(row["events"]),
        "filter": json.loads(row["filter"] or "{}"),
        "status": row["status"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": row["failing_since"],
        "circuit": Circuit.from_row(row).view(),
        "created_at": row["created_at"],
    }


class Subscriptions:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float],
        allow_private: bool,
        grace_s: float,
        on_task: Callable[[], None],
        sealer: Sealer,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.clock = clock
        self.allow_private = allow_private
        self.resolver = resolver
        self.grace_s = grace_s
        self.on_task = on_task
        self.ids = IdFactory()

    async def create(self, body: Any) -> dict[str, Any]:
        """Store a subscription; the answer carries its signing secret, the only time it is shown."""
        try:
            request = CreateSubscription.model_validate(body)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="")) from None
        await check_new_target(request, allow_private=self.allow_private, resolver=self.resolver)
        now = self.clock()
        sub_id = self.ids.new("sub", now)
        secret = new_secret() if request.kind == "webhook" else None
        config = {"chat_id": request.chat_id, "bot_token": request.bot_token} if request.kind == "telegram" else {}
        stored = stored_fields(self.sealer, sub_id, kind=request.kind, url=request.url, secret=secret, config=config)
        await self.db.write(
            lambda tx: subscriptions.insert_subscription(
                tx,
                sub_id,
                kind=request.kind,
                events=json.dumps(request.events, separators=(",", ":")),
                filter=request.filter.model_dump_json(),
                now=now,
                **stored,
            )
        )
        view = subscription_view(await self._row(sub_id))
        return {**view, "secret": secret} if secret else view

    async def _row(self, sub_id: str) -> Row:
        row = await subscriptions.read_subscription(self.db, sub_id)
        if row is None:
            raise NotFoundError(f"subscription {sub_id} not found")
        return row

    async def get(self, sub_id: str) -> Row:
        return await self._row(sub_id)

    async def list_all(self) -> list[dict[str, Any]]:
        return [subscription_view(row) for row in await subscriptions.list_subscriptions(self.db)]

    async def delete(self, sub_id: str) -> None:
        await self._row(sub_id)
        now = self.clock()
        await self.db.write(lambda tx: subscriptions.delete_subscription(tx, sub_id, now=now))

    async def rotate_secret(self, sub_id: str) -> dict[str, Any]:
        """A new secret; the old one keeps signing (both signatures sent) for the grace period."""
        row = await self._row(sub_id)
        if row["kind"] != "webhook":
            raise InputError(f"subscription {sub_id} is {row['kind']}: only webhook subscriptions have secrets")
        now, secret = self.clock(), new_secret()
        sealed = seal_secret(self.sealer, sub_id, secret)
        await self.db.write(
            lambda tx: subscriptions.rotate_secret(tx, sub_id, secret=sealed, grace_until=now + self.grace_s, now=now)
        )
        return {
            **subscription_view(await self._row(sub_id)),
            "secret": secret,
            "previous_valid_until": now + self.grace_s,
        }

    async def list_deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        rows = await events.list_deliveries(self.db, **filters)
        result = []
        for row in rows:
            attempts = await events.list_attempts(self.db, row["id"])
            view = dict(row)
            view["attempt_log"] = [
                {key: attempt[key] for key in ("attempted_at", "status_code", "latency_ms", "error")}
                for attempt in attempts
            ]
            result.append(view)
        return result

    async def retry(self, delivery_ids: list[str]) -> int:
        """Send these deliveries again (same webhook-id, so receivers can dedupe); returns how many."""
        now = self.clock()

        def write(tx: Transaction) -> int:
            count = 0
            for delivery_id in delivery_ids:
                if events.requeue_delivery(tx, delivery_id, now=now):
                    queue_delivery(tx, delivery_id, now)  # a no-op if its retry task still waits
                    count += 1
            tasks.hurry_deliver(tx, delivery_ids, now=now)
            return count

        count = await self.db.write(write)
        self.on_task()
        return count

    async def replay(self, **filters: Any) -> int:
        """Requeue every delivery matching `filters` (job_id, subscription_id, status, since, until) that is
        not pending; returns how many. Pages of REPLAY_PAGE in id order, three statements a page (never one per
        delivery)."""
        now, after, total = self.clock(), "", 0
        while True:

            def write(tx: Transaction, after: str = after) -> list[str]:
                rows = events.requeue_deliveries_page(tx, **filters, after=after, limit=REPLAY_PAGE, now=now)
                ids = [row["id"] for row in rows]
                if rows:
                    # Each in its target's lane.
                    lanes = [(row["id"], delivery_lane(row["subscription_id"], row["url"])) for row in rows]
                    tasks.queue_deliver(tx, lanes, now=now)
                    tasks.hurry_deliver(tx, ids, now=now)
                return ids

            ids = await self.db.write(write)
            total += len(ids)
            if ids:
                self.on_task()
            if len(ids) < REPLAY_PAGE:
                return total
            after = max(ids)
