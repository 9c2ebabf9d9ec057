"""`receiver jobs --watch`: follow `GET /v1/stream` (server-sent events), resuming with `Last-Event-ID` after a
dropped connection, and print one line per job change."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.markup import escape

from receiver.cli.client import ApiError, api_error
from receiver.cli.common import err
from receiver.cli.jobs import local_url, print_line
from receiver.tasks.retry import RetryPolicy

STREAM_PATH = "/v1/stream"
# The server sends `: ping` every RECEIVER_STREAM_PING_S (15 s by default): this much silence means the
# connection is gone even if no error says so; the reconnect resumes where it stopped.
READ_TIMEOUT_S = 90.0
DEFAULT_RETRY_S = 2.0  # until the server's `retry:` field says otherwise
# Consecutive failed reconnects before giving up (about a minute): the feed lost for good is an error.
RECONNECT = RetryPolicy(max_attempts=10, base_s=1.0, max_s=15.0)


@dataclass
class SseEvent:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)
    retry_ms: int | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-sent events from the stream's lines (the WHATWG format: `field: value`, a blank line ends an
    event, `:` starts a comment). An event with only `retry:` is yielded too, without data."""
    event = SseEvent()
    for line in lines:
        if not line:
            if event.data or event.retry_ms is not None or event.id is not None:
                yield event
            event = SseEvent()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            event.data.append(value)
        elif name == "event":
            event.event = value
        elif name == "id" and "\0" not in value:
            event.id = value
        elif name == "retry" and value.isdigit():
            event.retry_ms = int(value)


@dataclass
class Follower:
    """Reads the feed and reconnects: `last_event_id` carries over, so no event is missed or repeated."""

    url: str
    token: str | None
    on_event: Callable[[SseEvent], None]
    sleep: Callable[[float], None] = time.sleep
    last_event_id: str | None = None
    retry_s: float = DEFAULT_RETRY_S
    connected: bool = False  # once: later failures are reconnected, not reported
    failures: int = 0  # consecutive failed (re)connects

    def run(self) -> None:
        """Follow until interrupted; ApiError when the server cannot be reached at first, refuses us (bad
        token, ...), or cannot be reached again within the reconnect budget."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
        with httpx.Client(base_url=self.url, headers=headers, timeout=timeout) as http:
            while True:
                try:
                    self._follow(http)
                    reason = "the server ended the feed"
                except httpx.TransportError as exc:
                    if not self.connected:
                        raise ApiError(0, "unreachable", f"cannot reach the receiver at {self.url}: {exc}") from exc
                    self.failures += 1
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except _Transient as exc:
                    if not self.connected:
                        raise exc.error from None
                    self.failures += 1
                    reason = str(exc.error)
                if self.failures <= 1:
                    delay_s: float | None = self.retry_s
                else:
                    delay_s = RECONNECT.next_delay(self.failures, retry_after_s=self.retry_s)
                if delay_s is None:
                    raise ApiError(0, "unreachable", f"lost the feed at {self.url} and could not reconnect: {reason}")
                err.print(f"feed interrupted ({escape(reason)}); reconnecting in {delay_s:.1f} s", soft_wrap=True)
                self.sleep(delay_s)

    def _follow(self, http: httpx.Client) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        with http.stream("GET", STREAM_PATH, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                error = api_error(response)
                if response.status_code in (429, 502, 503, 504):
                    raise _Transient(error)
                raise error
            self.connected, self.failures = True, 0
            for event in parse_sse(response.iter_lines()):
                if event.retry_ms is not None:
                    self.retry_s = event.retry_ms / 1000
                if event.data:
                    self.on_event(event)
                if event.id is not None:  # after handling: an interrupted print is shown again on resume
                    self.last_event_id = event.id


class _Transient(Exception):
    """A refusal worth retrying (429, 502-504): internal to Follower.run."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error))
        self.error = error


def event_line(event: SseEvent, server: str) -> str:
    """`timestamp  type  job id  provider  model  status  images ...` for a job event; other events as raw."""
    try:
        payload: dict[str, Any] = json.loads("\n".join(event.data))
        job = payload["data"]["job"]
    except (ValueError, KeyError, TypeError):
        return f"{event.event}  {' '.join(event.data)}"
    fields = [str(payload.get("timestamp", "-")), event.event, job["id"], job["provider"], job["model"], job["status"]]
    if job.get("error"):
        fields.append(f"error {job['error'].get('code')}: {job['error'].get('message')}")
    if job.get("images_status"):
        fields.append(f"images {job['images_status']}")
    fields += [str(local_url(image["url"], server)) for image in job.get("images") or [] if image.get("url")]
    if job.get("images_error"):
        fields.append(str(job["images_error"]))
    return "  ".join(fields)


def watch_jobs(url: str, token: str | None, *, as_json: bool) -> int:
    """Print the feed until Ctrl-C (exit 0); 1 with the reason when it cannot be followed."""

    def show(event: SseEvent) -> None:
        print_line("\n".join(event.data) if as_json else event_line(event, url))
        sys.stdout.flush()  # a pipe is block-buffered: each change goes out as it comes

    follower = Follower(url, token, on_event=show)
    err.print(f"watching {url.rstrip('/')}{STREAM_PATH} (Ctrl-C to stop)", soft_wrap=True)
    try:
        follower.run()
    except KeyboardInterrupt:
        return 0
    except ApiError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    return 0
