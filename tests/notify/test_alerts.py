"""Operator alerts through the real path: conditions read from a real database, the alert sent by the task
runner as a signed delivery to a real subscriber on loopback, once per rate-limit window, secrets redacted,
and an alert target that is itself disabled never alerted about itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.responses import JSONResponse

from receiver.emulators.fal import FalEmulatorConfig
from receiver.notify import verify
from receiver.notify.alerts import Alerter, AlertKind, AlertPolicy, clean
from receiver.settings import Settings
from receiver.storage import dashboard
from tests.helpers.clock import Clock
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import FAST, ClockedStack, Stack, StackFactory, subscribe

TOKEN = "tok3n-never-in-an-alert"
PASSWORD = "pa55word-never-in-an-alert"
ONLY_ALERTS = ["job.cancelled"]  # the alert target hears no job event of these tests


@contextlib.asynccontextmanager
async def gone_target() -> AsyncIterator[HookReceiver]:
    """A subscriber that answers 410 Gone, quoting credentials in its error body."""
    body = {"message": f"gone, see https://admin:{PASSWORD}@hooks.example/x?token={TOKEN}"}
    receiver = HookReceiver(default_status=410)
    async with receiver.running():
        receiver.answers = [JSONResponse(body, status_code=410) for _ in range(10)]
        yield receiver


async def clocked(make_stack: StackFactory, **overrides: Any) -> ClockedStack:
    """A stack on a hand-moved clock whose task runner and reconciler the test runs (`drain`)."""
    stack = await make_stack(clock=Clock(), workers=False, notify_retry_scale=0.0001, **overrides)
    assert isinstance(stack, ClockedStack)
    return stack


async def drain(stack: Stack) -> None:
    """Run the due tasks, and the ones they queue, until none is due."""
    while await stack.services.runner.run_once():
        pass


async def disable_by_a_job(stack: Stack, target: HookReceiver) -> dict[str, Any]:
    """A webhook subscription (its URL carrying a token) disabled by its target's 410 to a StepFun job's event
    (a synchronous provider: the job needs no webhook, whatever the clock says)."""
    sub = await subscribe(stack, {"kind": "webhook", "url": f"{target.url}?token={TOKEN}"})
    job = await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI})
    await drain(stack)
    assert (await stack.job(job["id"]))["status"] == "succeeded"
    [row] = await read_rows(stack.database, "SELECT status FROM subscriptions WHERE id = ?", sub["id"])
    assert row["status"] == "disabled"
    return sub


def alerter(stack: ClockedStack, target_id: str, **policy: Any) -> Alerter:
    values: dict[str, Any] = {"rate_limit_s": 3600.0, "dead_letters": 1000, **policy}
    services = stack.services
    return Alerter(services.db, AlertPolicy(target_id, **values), clock=stack.clock, on_task=services.runner.wake)


async def alert_events(stack: Stack) -> list[Any]:
    return await read_rows(stack.database, "SELECT type FROM events WHERE job_id IS NULL ORDER BY seq")


async def test_a_disabled_subscription_is_alerted_once_signed_and_redacted(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """One alert per window reaches the alert subscription, signed with its secret, naming the disabled
    subscription and its reason without its token, URL password or any secret; the next subscription disabled
    within the window waits for the next window's alert, which names only it."""
    stack = await clocked(make_stack)
    target = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ONLY_ALERTS})
    async with gone_target() as gone:
        first = await disable_by_a_job(stack, gone)
        stack.clock.advance(1)
        alerts = alerter(stack, target["id"])
        [sent] = await alerts.run_once()
        assert (sent.kind, sent.queued) == (AlertKind.SUBSCRIPTION_DISABLED, True)
        await drain(stack)
        assert len(hook.hooks) == 1
        verify(target["secret"], hook.hooks[0].headers, hook.hooks[0].body, now=stack.clock())
        assert await alerts.run_once() == []  # the same condition, within the window: nothing
        stack.clock.advance(1)
        second = await disable_by_a_job(stack, gone)
        assert await alerts.run_once() == []  # a new one, still within the window: held
        stack.clock.advance(3600)
        [later] = await alerts.run_once()
        assert later.kind is AlertKind.SUBSCRIPTION_DISABLED
        await drain(stack)
        verify(target["secret"], hook.hooks[-1].headers, hook.hooks[-1].body, now=stack.clock())

    assert len(hook.hooks) == 2
    for delivered in hook.hooks:
        for secret in (TOKEN, PASSWORD, first["secret"], second["secret"], target["secret"]):
            assert secret not in delivered.body.decode()
    one, two = (delivered.json for delivered in hook.hooks)
    assert one["type"] == "alert.subscription_disabled"
    assert [sub["id"] for sub in one["data"]["alert"]["details"]["subscriptions"]] == [first["id"]]
    assert first["id"] in one["data"]["alert"]["summary"] and "target is gone" in one["data"]["alert"]["summary"]
    assert [sub["id"] for sub in two["data"]["alert"]["details"]["subscriptions"]] == [second["id"]]
    assert [row["type"] for row in await alert_events(stack)] == ["alert.subscription_disabled"] * 2


async def test_dead_letters_past_the_threshold_alert_and_an_alert_never_alerts_about_itself(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Dead letters at the threshold raise an alert; when the alert target itself is gone, its dead alert
    deliveries are not counted as dead letters, and its own disabling is recorded and logged, not sent."""
    stack = await clocked(make_stack)
    async with gone_target() as gone, gone_target() as gone_alerts:
        target = await subscribe(stack, {"kind": "webhook", "url": gone_alerts.url, "events": ONLY_ALERTS})
        await disable_by_a_job(stack, gone)  # one dead delivery, one disabled subscription
        stack.clock.advance(1)
        alerts = alerter(stack, target["id"], dead_letters=1)
        sent = await alerts.run_once()
        assert [(alert.kind, alert.queued) for alert in sent] == [
            (AlertKind.SUBSCRIPTION_DISABLED, True), (AlertKind.DEAD_LETTERS, True)
        ]  # fmt: skip
        stack.clock.advance(1)
        await drain(stack)  # the alert target answers 410: disabled, both alert deliveries dead
        [row] = await read_rows(stack.database, "SELECT status FROM subscriptions WHERE id = ?", target["id"])
        assert row["status"] == "disabled"
        assert await read_rows(stack.database, "SELECT id FROM deliveries WHERE status <> 'dead'") == []
        heard = len(gone_alerts.hooks)  # one or both alerts (the second may have been in flight already)
        assert heard in (1, 2)
        stack.clock.advance(3600)
        with caplog.at_level(logging.ERROR, logger="receiver.notify.alerts"):
            again = await alerts.run_once()
        await drain(stack)
    assert [(alert.kind, alert.queued) for alert in again] == [(AlertKind.SUBSCRIPTION_DISABLED, False)]
    assert target["id"] in again[0].summary
    assert any("is itself disabled" in record.getMessage() for record in caplog.records)
    assert all(TOKEN not in record.getMessage() and PASSWORD not in record.getMessage() for record in caplog.records)
    assert len(gone_alerts.hooks) == heard  # the third alert was never sent
    assert [row["type"] for row in await alert_events(stack)] == [
        "alert.subscription_disabled", "alert.dead_letters", "alert.subscription_disabled"
    ]  # fmt: skip


async def test_webhook_silence_while_a_fal_job_waits_is_alerted_with_its_queue_position(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """A fal job that gets no webhook: its submit's queue_position is recorded, a status poll records it
    again, and once it has waited past the silence threshold with no fal webhook, one alert says so."""
    stack = await clocked(make_stack, emulator_config=FalEmulatorConfig(**{**FAST, "queue_s": 600.0}))
    target = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ONLY_ALERTS})
    first = await stack.create_job()  # holds fal's queue: the next one is queued behind it
    job = await stack.create_job()
    await drain(stack)
    [row] = await dashboard.queue_positions(stack.services.db, "fal", limit=1)
    submitted_at = row["submitted_at"]
    assert (row["id"], row["queue_position"], row["queue_position_at"]) == (first["id"], 0, submitted_at)
    stack.clock.advance(61)  # RECEIVER_RECONCILE_AFTER_S: the reconciler polls both
    await stack.services.reconciler.run_once()
    await drain(stack)
    rows = await dashboard.queue_positions(stack.services.db, "fal", limit=5)
    assert [(row["id"], row["queue_position"], row["queue_position_at"]) for row in rows] == [
        (first["id"], 0, submitted_at + 61), (job["id"], 1, submitted_at + 61)
    ]  # fmt: skip
    alerts = alerter(stack, target["id"], webhook_silence_s=120.0, webhook_providers=("fal", "wavespeed"))
    assert await alerts.run_once() == []  # they have not waited 120 s yet
    stack.clock.advance(60)
    [sent] = await alerts.run_once()
    assert sent.kind is AlertKind.WEBHOOKS_SILENT
    await drain(stack)
    assert len(hook.hooks) == 1
    [quiet] = hook.hooks[0].json["data"]["alert"]["details"]["providers"]
    assert (quiet["provider"], quiet["waiting_jobs"]) == ("fal", 2)
    assert "fal: 2 job(s) waiting" in hook.hooks[0].json["data"]["alert"]["summary"]


def test_alert_text_loses_url_credentials() -> None:
    """Query tokens, URL user-info and chat credentials in a reason never reach an alert's text."""
    text = clean(
        f"HTTP 401 from https://user:{PASSWORD}@h.example/p?token={TOKEN} and "
        "https://api.telegram.org/bot123456:ABCdef/sendMessage and https://hooks.slack.com/services/T0/B0/s3cr3t"
    )
    for secret in (PASSWORD, TOKEN, "ABCdef", "s3cr3t"):
        assert secret not in text
    assert "h.example" in text


def test_no_alert_subscription_runs_no_alerter(tmp_path: Any) -> None:
    """Without RECEIVER_ALERT_SUBSCRIPTION there is no policy; with it, the settings make the policy."""
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert AlertPolicy.from_settings(settings, ("fal",)) is None
    configured = settings.model_copy(update={"alert_subscription": "sub_x", "alert_dead_letters": 3})
    policy = AlertPolicy.from_settings(configured, ("fal",))
    assert policy is not None and (policy.subscription_id, policy.dead_letters) == ("sub_x", 3)
