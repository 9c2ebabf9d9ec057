"""The crash harness's hostile sender: forged, stale, wrong-token, mismatched and replayed fal webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.actors import Watcher
from bench.rig import SECRET_KEY
from receiver.emulators.fal import FalEmulator, FalRequest, RequestStatus
from receiver.emulators.fal.delivery import webhook_body
from receiver.ingest.signatures import job_token, sign_fal

MARKER = "chaos-forged"  # in every body the hostile sender makes up; must never reach the database
HOSTILE_WEIGHTS = {"forged": 3, "stale": 2, "wrong_token": 2, "mismatched": 1, "replay": 3}
EXPECTED_REFUSAL = {"forged": 401, "stale": 401, "wrong_token": 403, "mismatched": 409}


@dataclass
class Sent:
    """One webhook the hostile sender posted, and what came back."""

    kind: str
    job_id: str
    request_id: str
    status_code: int | None
    result: str | None = None  # the receiver's `status` field on a 2xx (applied, recorded, duplicate)
    error: str | None = None


def target_of(request: FalRequest) -> tuple[str, str]:
    """(job id, token) from the webhook URL the receiver handed the emulator."""
    assert request.webhook_url is not None
    parts = urlsplit(request.webhook_url)
    return parts.path.rsplit("/", 1)[1], parse_qs(parts.query)["token"][0]


class Hostile:
    """Posts forged, stale, wrong-token, mismatched and replayed fal webhooks at the receiver on `url`."""

    def __init__(
        self, rng: random.Random, emulator: FalEmulator, key: Ed25519PrivateKey, url: str, watcher: Watcher
    ) -> None:
        self.rng = rng
        self.emulator = emulator
        self.key = key
        self.rogue = Ed25519PrivateKey.generate()  # not in the JWKS
        self.url = url
        self.watcher = watcher
        self.secret = SECRET_KEY.encode()
        self.sent: list[Sent] = []
        self.forged_bodies: set[bytes] = set()
        self.harness_errors: list[str] = []
        self._serial = 0

    def _forged(self, kind: str, request_id: str) -> bytes:
        """A made-up ERROR completion for a real request: applied, it would fail the job."""
        self._serial += 1
        note = f"{MARKER} {kind} #{self._serial}"
        document = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "error": note,
            "payload": {"detail": [{"loc": ["body", "prompt"], "msg": note, "type": MARKER}]},
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        self.forged_bodies.add(body)
        return body

    def _headers(self, key: Ed25519PrivateKey, request_id: str, body: bytes, *, age_s: int = 0) -> dict[str, str]:
        user_id = self.emulator.config.user_id
        headers = sign_fal(key, request_id=request_id, user_id=user_id, timestamp=int(time.time()) - age_s, body=body)
        headers["Content-Type"] = "application/json"
        return headers

    def pick(self) -> tuple[str, str, str, bytes, dict[str, str]] | None:
        """(kind, job id, token, body, headers) of the next hostile webhook, or None when no target exists yet."""
        requests = [r for r in list(self.emulator.requests.values()) if r.webhook_url]
        if not requests:
            return None
        kinds = list(HOSTILE_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[HOSTILE_WEIGHTS[k] for k in kinds])[0]
        request = self.rng.choice(requests)
        job_id, token = target_of(request)
        if token != job_token(self.secret, "fal", job_id):
            self.harness_errors.append(f"the webhook URL token of {job_id} is not job_token(secret, 'fal', id)")
        rid = request.request_id
        if kind == "replay":
            done = [r for r in requests if r.status is RequestStatus.COMPLETED]
            if not done:
                return None
            request = self.rng.choice(done)
            job_id, token = target_of(request)
            body = webhook_body(request)  # byte for byte what the emulator sends
            return kind, job_id, token, body, self._headers(self.key, request.request_id, body)
        if kind == "forged":
            body = self._forged(kind, rid)
            return kind, job_id, token, body, self._headers(self.rogue, rid, body)
        if kind == "stale":
            body = self._forged(kind, rid)
            return kind, job_id, token, body, self._headers(self.key, rid, body, age_s=600)
        if kind == "wrong_token":
            other = f"job_{self.rng.getrandbits(64):016x}"
            wrong = job_token(self.secret, "fal", other) if self.rng.random() < 0.5 else token[::-1]
            body = self._forged(kind, rid)
            return kind, job_id, wrong, body, self._headers(self.key, rid, body)
        # mismatched: validly signed, the right token, but another job's request; only once the target job
        # is bound (the API showed its request id), so the refusal is deterministic.
        bound = list(self.watcher.bound.items())
        if len(bound) < 2:
            return None
        (job_id, own), (_, foreign) = self.rng.sample(bound, 2)
        if own == foreign:
            return None
        body = self._forged(kind, foreign)
        return kind, job_id, job_token(self.secret, "fal", job_id), body, self._headers(self.key, foreign, body)

    async def send(self, client: httpx.AsyncClient) -> None:
        picked = self.pick()
        if picked is None:
            return
        kind, job_id, token, body, headers = picked
        request_id = headers["X-Fal-Webhook-Request-Id"]
        url = f"{self.url}/webhooks/fal/{job_id}?{urlencode({'token': token})}"
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            self.sent.append(Sent(kind, job_id, request_id, None, error=type(exc).__name__))
            return
        result = None
        if 200 <= response.status_code < 300:
            with contextlib.suppress(ValueError, AttributeError):
                result = response.json().get("status")
        self.sent.append(Sent(kind, job_id, request_id, response.status_code, result=result))

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event, per_s: float) -> None:
        slots = asyncio.Semaphore(8)
        running: set[asyncio.Task[None]] = set()

        async def one() -> None:
            async with slots:
                await self.send(client)

        while not stop.is_set():
            task = asyncio.create_task(one())
            running.add(task)
            task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(per_s))
        await asyncio.gather(*running, return_exceptions=True)
