"""A cache of a JWKS's Ed25519 keys: bounded age, single-flight fetches, rate-limited refetch, last good keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.errors import VerificationUnavailable
from receiver.ingest.signatures import parse_jwks
from receiver.observability import metrics

log = logging.getLogger(__name__)
MAX_AGE_S = 86400.0  # fal: cache "no longer than 24 h", the keys can change


class JwksCache:
    """Keys from `url`, refreshed when older than `max_age_s`.

    When the JWKS host is down the last good keys keep being used (stale beats none); with no keys
    at all `keys()` raises VerificationUnavailable, which the webhook route answers with 503 so the
    sender retries. `refresh_for_unknown_key()` refetches at most once per `refetch_interval_s`, so a
    rotated key is picked up at once while forged signatures cannot make us hammer the JWKS host.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        clock: Callable[[], float],
        max_age_s: float = MAX_AGE_S,
        refetch_interval_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.max_age_s = min(max_age_s, MAX_AGE_S)
        self.refetch_interval_s = refetch_interval_s
        self.timeout_s = timeout_s
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.generation = 0  # bumped on every successful fetch

    async def keys(self) -> list[Ed25519PublicKey]:
        if self._fetched_at is None or self.clock() - self._fetched_at >= self.max_age_s:
            await self._refresh(min_gap_s=1.0)
        if not self._keys:
            raise VerificationUnavailable("no webhook signing keys: the JWKS could not be fetched")
        return self._keys

    async def refresh_for_unknown_key(self) -> bool:
        """Refetch because no cached key verified; returns whether a new key set arrived."""
        before = self.generation
        await self._refresh(min_gap_s=self.refetch_interval_s)
        return self.generation != before

    async def _refresh(self, *, min_gap_s: float) -> None:
        generation = self.generation
        async with self._lock:
            if self.generation != generation:
                return  # another caller fetched while we waited for the lock
            if self._attempted_at is not None and self.clock() - self._attempted_at < min_gap_s:
                return
            self._attempted_at = self.clock()
            self.fetches += 1
            try:
                response = await self.client.get(self.url, timeout=self.timeout_s)
                response.raise_for_status()
                keys = parse_jwks(response.content)
            except (httpx.HTTPError, ValueError) as exc:
                metrics.JWKS_REFRESHES.labels("error").inc()
                log.warning("JWKS fetch from %s failed (%s); keeping %d cached keys", self.url, exc, len(self._keys))
                return
            if not keys:
                metrics.JWKS_REFRESHES.labels("no_keys").inc()
                log.warning("JWKS at %s has no Ed25519 keys; keeping %d cached keys", self.url, len(self._keys))
                return
            metrics.JWKS_REFRESHES.labels("ok").inc()
            self._keys = keys
            self._fetched_at = self.clock()
            self.generation += 1
