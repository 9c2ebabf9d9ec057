"""A real S3 protocol server on loopback (moto's server mode), a bucket per test, and a TCP proxy that cuts uploads.

`s3_server` is session-scoped (one moto per test process; importing moto takes a moment); `s3_bucket` makes
a fresh bucket for each test. `CuttingProxy` sits between a client and the server on real sockets: it records
every request and drops the connection in the middle of the body of the first `cut_puts` PUT requests, so a
test sees what a store does when an upload dies half-way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import obstore
import pytest
from obstore.store import S3Store

from receiver.images.s3 import S3BlobStore
from tests.helpers.processes import free_port

ACCESS_KEY_ID = "s3-test-access-key"
SECRET_ACCESS_KEY = "s3-test-secret-key-never-shown"
SESSION_TOKEN = "s3-test-session-token-never-shown"
REGION = "eu-west-3"
_KEY = re.compile(r"<Key>([^<]*)</Key>")  # keys here are hex digits and slashes: no XML escapes


@dataclass(frozen=True)
class S3Server:
    """A moto server on loopback: its endpoint (plain http)."""

    endpoint: str


@dataclass(frozen=True)
class S3Bucket:
    """One bucket of the loopback server, with what a store or the settings need to reach it."""

    endpoint: str
    name: str

    def url(self, prefix: str = "images") -> str:
        """The `RECEIVER_BLOB_URL` of this bucket under `prefix`."""
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def settings(self, prefix: str = "images", *, endpoint: str | None = None) -> dict[str, Any]:
        """Settings overrides (`make_settings`/`open_stack`) that store images in this bucket."""
        return {
            "blob_url": self.url(prefix),
            "aws_endpoint_url": endpoint or self.endpoint,
            "aws_region": REGION,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "aws_session_token": SESSION_TOKEN,
        }

    def store(self, prefix: str = "images", *, endpoint: str | None = None, **options: Any) -> S3BlobStore:
        """An `S3BlobStore` on this bucket (through `endpoint`, e.g. a proxy, when given)."""
        return S3BlobStore(
            self.name,
            prefix=prefix,
            endpoint=endpoint or self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            session_token=SESSION_TOKEN,
            **options,
        )

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket (full keys), read with a plain obstore client (not the receiver's store)."""
        client = self.client()
        return {
            meta["path"]: bytes(obstore.get(client, meta["path"]).bytes())
            for page in obstore.list(client)
            for meta in page
        }

    def multipart_uploads(self) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        with httpx.Client(base_url=self.endpoint, timeout=10) as http:
            listing = http.get(f"/{self.name}", params={"uploads": ""}).raise_for_status()
            return _KEY.findall(listing.text)

    def client(self) -> S3Store:
        """An obstore client of the whole bucket with the test credentials."""
        return S3Store(
            self.name,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            session_token=SESSION_TOKEN,
            client_options={"allow_http": True},
        )


def content_addressed(objects: dict[str, bytes]) -> bool:
    """Whether every object's bytes hash to the last part of its key (so none holds partial content)."""
    return all(hashlib.sha256(data).hexdigest() == key.rsplit("/", 1)[-1] for key, data in objects.items())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server on a free loopback port for the whole test process."""
    from moto.server import ThreadedMotoServer  # imported here: only the S3 tests pay for it

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # one access-log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """A new, empty bucket on the session's S3 server."""
    name = f"receiver-test-{uuid.uuid4().hex[:16]}"
    httpx.put(f"{s3_server.endpoint}/{name}", timeout=10).raise_for_status()
    return S3Bucket(s3_server.endpoint, name)


_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")
_HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection")


class CuttingProxy:
    """A loopback TCP proxy in front of `upstream` (an http URL). It rewrites each request to `Connection:
    close` (one request per connection, so it never has to frame responses), records every request's method
    and path in `requests`, and for the first `cut_puts` PUT requests forwards only the request head and the
    first half of the body, then closes both connections: the server sees a body that ends early and the
    client a connection that dies mid-upload. `cut` counts the uploads it broke."""

    def __init__(self, upstream: str, *, cut_puts: int = 0) -> None:
        parts = httpx.URL(upstream)
        self.upstream = (parts.host, parts.port or 80)
        self.cut_puts = cut_puts
        self.cut = 0
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._closed = True
            open_sockets = [self._listener, *self._sockets]
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.add(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed: the proxy is stopping
                return
            if self._track(client):
                self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head, body = _read_head(client)
            if head is None:
                return
            method, path, headers = head
            length = int(headers.get(b"content-length", b"0"))
            with self._lock:
                self.requests.append((method, path))
                cut = method == "PUT" and self.cut < self.cut_puts
                self.cut += cut
            upstream = socket.create_connection(self.upstream)
            if not self._track(upstream):
                return
            upstream.sendall(_rewrite(head))
            if cut:
                half = length // 2
                while len(body) < half:
                    more = client.recv(65536)
                    if not more:
                        break
                    body += more
                upstream.sendall(body[:half])
                return  # closing both ends below: the upload dies half-way
            upstream.sendall(body)
            self._spawn(_pipe, client, upstream)
            _pipe(upstream, client)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                    with self._lock:
                        self._sockets.discard(sock)


def _read_head(sock: socket.socket) -> tuple[tuple[str, str, dict[bytes, bytes]] | None, bytes]:
    """The request line and headers of the next request on `sock` (None at EOF), and any body bytes read."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None, b""
        data += more
    raw, body = data.split(b"\r\n\r\n", 1)
    lines = raw.split(b"\r\n")
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        return None, b""
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return (match[1].decode(), match[2].decode(), headers), body


def _rewrite(head: tuple[str, str, dict[bytes, bytes]]) -> bytes:
    method, path, headers = head
    lines = [f"{method} {path} HTTP/1.1".encode()]
    lines += [name + b": " + value for name, value in headers.items() if name not in _HOP_BY_HOP]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes from `source` to `target` until `source` ends (or either side fails)."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)
