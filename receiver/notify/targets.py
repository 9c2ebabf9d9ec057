"""Sending one notification attempt to one target, judging its outcome, and when to try again.

`send` never raises for what the network or the other side does: an SSRF refusal, a DNS failure, a
timeout, a transport error or any non-2xx answer becomes a failed `Attempt` whose `error` says why
(without credentials, and naming hosts, never the addresses they resolved to). A failure no retry can
fix is marked `permanent`. Retries are the caller's: `next_delay` only decides how long to wait.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args
from urllib.parse import urlsplit

import httpx

from receiver.errors import RetryLaterError
from receiver.notify.messages import ImageAttachment, Message, describe
from receiver.notify.outbound import OutboundRequest, discord_request, slack_request, telegram_request, webhook_request
from receiver.notify.redaction import install_log_redaction, redact
from receiver.notify.signing import secret_key
from receiver.notify.target_rules import TargetProblem, check_bot_token, check_target_url
from receiver.support.netguard import BlockedTarget, Client, Pinned, Resolver, pin, request_pinned, system_resolver
from receiver.tasks.retry import parse_retry_after

__all__ = [
    "RETRY_SCHEDULE_S",
    "Attempt",
    "ImageAttachment",
    "Message",
    "Target",
    "TargetKind",
    "describe",
    "next_delay",
    "send",
]

TargetKind = Literal["webhook", "callback", "slack", "discord", "telegram"]
KINDS: tuple[str, ...] = get_args(TargetKind)
SIGNED_KINDS = frozenset({"webhook", "callback"})
# Delay before attempt n+1 after n attempts (Svix's schedule): at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = (0.8, 1.2)
MAX_RETRY_AFTER_S = max(RETRY_SCHEDULE_S)  # a target cannot park its deliveries for longer than our longest wait
DETAIL_CHARS = 200
# Chat services answer these for a request that will be refused the same way every time (bad payload,
# bad token, no such channel or chat, not allowed): retrying cannot help. A `webhook`/`callback` receiver
# is someone's own server, where a 4xx is often a deploy or a secret rotation in progress: those retry.
NEVER_STATUSES = {
    "slack": frozenset({400, 403, 404}),
    "discord": frozenset({400, 401, 403, 404, 405, 413}),
    "telegram": frozenset({400, 401, 403, 404}),
}
NOT_RETRIED = " (permanent: not retried)"


@dataclass(frozen=True, repr=False)
class Target:
    """Where a notification goes. `url` for every kind but telegram (which uses `bot_token` + `chat_id`);
    `secrets` (`whsec_...`, newest first, at least one) sign webhook and callback deliveries.

    Only what every send needs is checked here; the URL and token rules (`target_rules`) run in `send`,
    so a target stored before a rule existed fails its first send as permanent instead of raising."""

    kind: TargetKind
    url: str | None
    secrets: tuple[str, ...] = ()
    chat_id: str | None = None
    bot_token: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown target kind {self.kind!r} (one of {', '.join(KINDS)})")
        if isinstance(self.secrets, str) or not isinstance(self.secrets, tuple):
            raise TypeError("secrets is a tuple of whsec_ strings")
        if self.kind == "telegram":
            if not self.chat_id or not self.bot_token:
                raise ValueError("a telegram target needs chat_id and bot_token")
        elif not self.url:
            raise ValueError(f"a {self.kind} target needs url")
        if self.kind in SIGNED_KINDS and not self.secrets:
            raise ValueError(f"a {self.kind} target needs at least one signing secret")
        for secret in self.secrets:
            secret_key(secret)  # fail at construction, not at the first delivery

    def __repr__(self) -> str:
        host = _host_of(self.url) if self.url else None
        secrets = f"<{len(self.secrets)} secrets>"
        return f"Target(kind={self.kind!r}, host={host!r}, secrets={secrets}, chat_id={self.chat_id!r})"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one try. `gone`: the target says it no longer exists (stop sending to it);
    `retry_after_s`: the target asked us to wait (429/503 `Retry-After`, Telegram's `retry_after`)."""

    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_s: float | None
    gone: bool
    permanent: bool = False  # no retry can fix it (a target that can never work): the delivery is dead at once


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:  # a URL stored before the rules existed; `send` fails it as permanent
        return "?"


def target_problem(target: Target, *, allow_private: bool) -> str | None:
    """Why `target` can never be sent to (the rules subscriptions are created under), or None."""
    try:
        if target.kind == "telegram":
            check_bot_token(target.bot_token or "")
        else:
            check_target_url(target.kind, target.url or "", allow_private=allow_private)
    except TargetProblem as exc:
        return str(exc)
    return None


def build_request(target: Target, message: Message, *, now: float, telegram_api_url: str) -> OutboundRequest:
    if target.kind == "telegram":
        assert target.bot_token is not None and target.chat_id is not None  # checked by Target
        return telegram_request(telegram_api_url, target.bot_token, target.chat_id, message)
    assert target.url is not None  # checked by Target
    if target.kind == "slack":
        return slack_request(target.url, message)
    if target.kind == "discord":
        return discord_request(target.url, message)
    return webhook_request(target.url, target.secrets, message, now=now)


async def send(
    client: Client,
    target: Target,
    message: Message,
    *,
    now: float,
    timeout_s: float = 15.0,
    allow_private: bool = False,
    telegram_api_url: str = "https://api.telegram.org",
    resolver: Resolver = system_resolver,
) -> Attempt:
    """POST `message` to `target` once, through the SSRF guard; `timeout_s` bounds the whole attempt
    (DNS, connect, upload, answer). Redirects are never followed: a 3xx is a failure."""
    install_log_redaction()
    started = time.perf_counter()
    pinned: Pinned | None = None

    def failed(
        error: str, *, status_code: int | None = None, retry_after_s: float | None = None, permanent: bool = False
    ) -> Attempt:
        latency_ms = (time.perf_counter() - started) * 1000
        error = pinned.scrub(error) if pinned is not None else error
        if permanent:
            error += NOT_RETRIED
        error = redact(error, target.bot_token)
        return Attempt(False, status_code, latency_ms, error, retry_after_s, gone=False, permanent=permanent)

    problem = target_problem(target, allow_private=allow_private)
    if problem is not None:
        return failed(f"invalid target: {problem}", permanent=True)
    request = build_request(target, message, now=now, telegram_api_url=telegram_api_url)
    host = _host_of(request.url)
    try:
        async with asyncio.timeout(timeout_s):
            pinned = await pin(request.url, allow_private=allow_private, resolver=resolver)
            response = await request_pinned(
                client,
                "POST",
                pinned,
                headers=request.headers,
                content=request.content,
                data=request.data,
                files=request.files,
                timeout=timeout_s,
            )
    except BlockedTarget as exc:  # the URL passed the rules, so its name resolves to a non-public address
        return failed(f"blocked target: {exc.message}", permanent=True)
    except RetryLaterError as exc:  # the guard could not resolve the host
        return failed(exc.message, retry_after_s=exc.retry_after_s)
    except (TimeoutError, httpx.TimeoutException) as exc:
        return failed(f"{type(exc).__name__}: no answer from {host} within {timeout_s:g} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return failed(f"{type(exc).__name__} talking to {host}: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000
    return judge(target.kind, response, host=host, latency_ms=latency_ms, secret=target.bot_token)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        value = json.loads(response.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _detail(response: httpx.Response, answer: dict[str, Any] | None) -> str:
    if answer is not None:
        for key in ("description", "message", "error"):  # Telegram, Discord, generic
            if isinstance(answer.get(key), str):
                return str(answer[key])
    return " ".join(response.text.split())


def _gone(kind: str, status: int, response: httpx.Response, answer: dict[str, Any] | None) -> bool:
    """410 anywhere; also each chat service's own word for a webhook or chat that is no more."""
    if status == 410:
        return True
    if kind == "slack" and status == 404:
        return response.text.strip() == "no_service"  # the incoming webhook was disabled or removed
    if kind == "discord" and status == 404 and answer is not None:
        return answer.get("code") == 10015  # Unknown Webhook
    if kind == "telegram" and status == 403:
        return True  # the bot was blocked by the user or removed from the chat
    return False


def judge(kind: str, response: httpx.Response, *, host: str, latency_ms: float, secret: str | None = None) -> Attempt:
    """An Attempt from the target's answer: 2xx is success, except Telegram's `{"ok": false}`."""
    status = response.status_code
    answer = _json_object(response) if kind == "telegram" or not response.is_success else None
    if response.is_success and (kind != "telegram" or (answer is not None and answer.get("ok") is True)):
        return Attempt(True, status, latency_ms, None, None, gone=False)
    retry_after_s = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    if kind == "telegram" and answer is not None and retry_after_s is None:
        parameters = answer.get("parameters")
        value = parameters.get("retry_after") if isinstance(parameters, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            retry_after_s = float(value)
    if 300 <= status < 400:
        error = f"HTTP {status} from {host}: redirects are not followed"
    elif response.is_success:
        error = f"Telegram refused on HTTP {status}: {_detail(response, answer) or 'no ok:true in the answer'}"
    else:
        detail = _detail(response, answer)[:DETAIL_CHARS]
        error = f"HTTP {status} from {host}" + (f": {detail}" if detail else "")
    gone = _gone(kind, status, response, answer)
    permanent = not gone and status in NEVER_STATUSES.get(kind, ())
    if permanent:
        error += NOT_RETRIED
    return Attempt(False, status, latency_ms, redact(error, secret), retry_after_s, gone, permanent)


class Uniform(Protocol):
    def uniform(self, a: float, b: float, /) -> float: ...


def next_delay(attempts_done: int, *, retry_after_s: float | None, rng: Uniform = random) -> float | None:
    """Seconds to wait before the next attempt after `attempts_done` attempts, or None when the schedule
    is spent (after len(RETRY_SCHEDULE_S) attempts in all).

    The scheduled delay is jittered by x0.8-1.2 (the immediate first attempt stays immediate); a
    `Retry-After` is a floor, itself capped at the longest scheduled wait.
    """
    if attempts_done < 0:
        raise ValueError("attempts_done cannot be negative")
    if attempts_done >= len(RETRY_SCHEDULE_S):
        return None
    scheduled = RETRY_SCHEDULE_S[attempts_done]
    delay = scheduled * rng.uniform(*JITTER) if scheduled else 0.0
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay
