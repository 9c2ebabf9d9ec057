"""Checking answers against the API's one error shape, over an HTTP client or a raw TCP connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx

WAIT_S = 5.0  # bound on every wait for the server on a raw connection; never an assertion about speed


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has this status and is exactly `{"error": {"code": str, "message": str}}` with a message;
    returns the error."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


class RawConnection:
    """A raw TCP connection to a server, for requests no HTTP client would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Any) -> RawConnection:
        """A connection to `server.url` (a Stack, or anything with a base URL)."""
        parts = urlsplit(server.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """The status, headers and body of the next response; None when the server closed instead."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), WAIT_S)
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT_S)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server may have closed first: that is what some of these tests ask of it


def assert_raw_error_shape(answer: tuple[int, dict[str, str], bytes] | None, status: int) -> None:
    """A raw answer with this status in the one error shape."""
    assert answer is not None, "the server closed the connection without an answer"
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message"}
