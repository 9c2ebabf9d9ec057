"""A small client of the receiver's own `/v1` API, used by the CLI and the demo."""

from __future__ import annotations

import base64
import mimetypes
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from receiver.errors import ReceiverError
from receiver.models import TERMINAL_STATUSES, JobStatus
from receiver.tasks.retry import RetryPolicy, parse_retry_after

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Answers after which the same POST may be sent again: with its idempotency key, a retry never makes a
# second job, whether or not the first attempt reached the server.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CREATE_RETRY = RetryPolicy(max_attempts=4, base_s=0.5, max_s=8.0)


class ApiError(ReceiverError):
    """The server answered with its JSON error shape (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status

    def __str__(self) -> str:
        return f"{self.code} ({self.status_code}): {self.message}" if self.status_code else self.message


def image_reference(value: str) -> str:
    """A URL or data URI as given, or a local file turned into a data URI."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ApiError(0, "bad_image", f"--image {value!r} is neither an http(s) URL nor a readable file")
    content_type = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{content_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def is_final(job: dict[str, Any]) -> bool:
    return JobStatus(job["status"]) in TERMINAL_STATUSES


def _check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json() if response.content else None
    raise api_error(response)


def api_error(response: httpx.Response) -> ApiError:
    """The server's JSON error shape (or the start of its text) as an ApiError."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:300]
    return ApiError(response.status_code, code, message)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """Synchronous client (CLI)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_auth(token), timeout=timeout_s)
        self.sleep = sleep

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return _check(self.http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(0, "unreachable", f"cannot reach the receiver at {self.http.base_url}: {exc}")

    def create_job(
        self, body: dict[str, Any], *, idempotency_key: str | None = None, retry: RetryPolicy = CREATE_RETRY
    ) -> dict[str, Any]:
        """`POST /v1/jobs` under an `Idempotency-Key` (a fresh UUID4 unless given), sent again with the same
        key after a connection error, 429 or 5xx, up to `retry`'s budget: a lost answer never makes a
        second paid job. Gives up with the last failure as an ApiError."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key or str(uuid.uuid4())}
        attempts = 0
        while True:
            attempts += 1
            retry_after_s = None
            try:
                response = self.http.post("/v1/jobs", json=body, headers=headers)
            except httpx.TransportError as exc:
                failure = self._unreachable(exc)
            else:
                if response.status_code not in RETRY_STATUSES:
                    job: dict[str, Any] = _check(response)
                    return job
                failure = api_error(response)
                retry_after_s = parse_retry_after(response.headers.get("retry-after"))
            delay_s = retry.next_delay(attempts, retry_after_s=retry_after_s)
            if delay_s is None:
                raise failure
            self.sleep(delay_s)

    def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}")
        return job

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        page: dict[str, Any] = self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})
        return page

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other `/v1` call; raises ApiError with the server's error code and message."""
        return self._call(method, path, **kwargs)


class AsyncClient:
    """Asynchronous client (demo)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=_auth(token), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def create_job(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        job: dict[str, Any] = _check(await self.http.post("/v1/jobs", json=body, headers=headers))
        return job

    async def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = _check(await self.http.get(f"/v1/jobs/{job_id}"))
        return job

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return _check(await self.http.request(method, path, json=body))
