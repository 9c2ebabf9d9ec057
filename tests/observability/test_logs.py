"""Log lines: JSON objects with the bound ids, text lines ending with them, ids kept apart per asyncio task, and
the redacting filter ahead of either format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from receiver.notify.redaction import REDACTED, RedactingFilter
from receiver.observability.logs import JSONFormatter, TextFormatter, bind, bound


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of its own writing to a buffer through a handler with the redacting filter (as `redact_logs`
    sets it up); the test picks the formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"receiver.test.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


async def test_a_json_line_holds_the_bound_ids(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    """One JSON object per line: ts, level, logger, message, then the ids bound in this context."""
    logger, stream, handler = captured
    handler.setFormatter(JSONFormatter())

    async def handle() -> None:
        bind(job_id="job_1", provider="fal", task_kind="submit", absent=None)
        logger.info("submitted %s", "job_1")

    await asyncio.create_task(handle())
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["level"] == "info" and line["message"] == "submitted job_1"
    assert line["logger"] == logger.name and line["ts"].endswith("Z")
    assert {k: line[k] for k in ("job_id", "provider", "task_kind")} == {
        "job_id": "job_1",
        "provider": "fal",
        "task_kind": "submit",
    }
    assert "absent" not in line
    assert bound() == {}  # the task's binding stayed in the task


async def test_ids_stay_with_their_own_task(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    """Two tasks running at once each log their own job id, never the other's."""
    logger, stream, handler = captured
    handler.setFormatter(JSONFormatter())
    both = asyncio.Event()

    async def handle(job_id: str) -> None:
        bind(job_id=job_id)
        if job_id == "job_b":
            both.set()
        await both.wait()
        logger.info("done")

    await asyncio.gather(handle("job_a"), handle("job_b"))
    assert sorted(json.loads(text)["job_id"] for text in stream.getvalue().splitlines()) == ["job_a", "job_b"]


def test_json_lines_are_redacted_and_carry_tracebacks(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    """A webhook token in a message or a traceback is redacted before the JSON line is written."""
    logger, stream, handler = captured
    handler.setFormatter(JSONFormatter())
    try:
        raise ValueError("POST http://127.0.0.1/webhooks/fal/job_1?token=TracebackSecret9")
    except ValueError:
        logger.exception("failed at %s", "http://x/webhooks/fal/job_1?token=ArgSecret7")
    text = stream.getvalue()
    line = json.loads(text)
    assert "TracebackSecret9" not in text and "ArgSecret7" not in text
    assert REDACTED in line["message"] and "ValueError" in line["exc"]


def test_text_lines_end_with_the_bound_ids(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    """The text format is the usual line, then `name=value` for each bound id (nothing when none is)."""
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())

    async def handle() -> None:
        bind(request_id="r-1", provider="wavespeed")
        logger.warning("slow")

    logger.warning("plain")
    asyncio.run(handle())
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"WARNING {logger.name} plain")
    assert second.endswith(f"WARNING {logger.name} slow request_id=r-1 provider=wavespeed")
