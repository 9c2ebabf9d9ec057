"""What answers and log lines show of credential-bearing URLs: `display_url`, `redact` and the log filter,
and `receiver emulate`'s access log through a real process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from receiver.notify.redaction import REDACTED, RedactingFilter, display_url, redact
from receiver.web.asgi_server import bind_socket


@pytest.mark.parametrize(
    ("kind", "url", "shown"),
    [
        ("slack", "https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/services/T000/B000/***"),
        ("slack", "https://hooks.slack.com/workflows/T1/A2/333/secret", "https://hooks.slack.com/***"),
        ("discord", "https://discord.com/api/webhooks/123/tok-en", "https://discord.com/api/webhooks/123/***"),
        (
            "discord",
            "https://discord.com/api/v10/webhooks/123/tok?wait=true",
            "https://discord.com/api/v10/webhooks/123/***",
        ),
        ("discord", "https://user:pw@discord.com/other/path", "https://discord.com/***"),
        ("webhook", "https://hooks.example.com/receiver", "https://hooks.example.com/receiver"),
        ("telegram", None, None),
    ],
    ids=["slack", "slack-other-shape", "discord", "discord-versioned", "discord-userinfo", "webhook", "telegram"],
)
def test_display_url_hides_the_secret_part(kind: str, url: str | None, shown: str | None) -> None:
    """Slack/Discord URLs keep their public part and hide the rest as ***; other kinds are shown as given."""
    assert display_url(kind, url) == shown


@pytest.mark.parametrize(
    "text",
    [
        "POST /webhooks/fal/job_1?token=abcDEF_123 200",
        "http://q/fal/x?fal_webhook=http%3A%2F%2Fh%2Fwebhooks%2Ffal%2Fjob_1%3Ftoken%3DabcDEF_123",
        "token=abcDEF_123&x=1",
    ],
    ids=["query", "url-encoded-in-fal-webhook", "bare"],
)
def test_redact_hides_webhook_tokens(text: str) -> None:
    """A `token=` value is hidden wherever it appears, URL-encoded inside another URL too."""
    assert "abcDEF_123" not in redact(text)


def test_log_filter_redacts_tracebacks_too() -> None:
    """An exception logged with its traceback does not carry a token quoted in the exception's text."""
    try:
        raise ValueError("GET https://api.telegram.org/bot123:SECRET/sendPhoto failed")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("?token=abc",), sys.exc_info())
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "SECRET" not in text and "token=abc" not in text and REDACTED in text


def test_emulate_access_log_carries_no_webhook_token() -> None:
    """`receiver emulate` logs each request line, but a fal submit's `fal_webhook` token shows as redacted."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "emulate", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,  # uvicorn's access log goes to stdout
        stderr=subprocess.STDOUT,
    )
    try:
        hook = "http://127.0.0.1:1/webhooks/fal/job_1?token=EmulatorSecretToken42"
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    client.post(
                        "/fal/fal-ai/stepx-edit2",
                        params={"fal_webhook": hook},
                        json={"prompt": "x"},
                        headers={"Authorization": "Key k"},
                    )
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
                    time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    log = output.decode(errors="replace")
    assert "/fal/fal-ai/stepx-edit2" in log  # the request line was logged
    assert "EmulatorSecretToken42" not in log
