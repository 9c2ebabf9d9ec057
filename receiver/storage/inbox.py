"""The inbox table: every provider event received, deduplicated. Every query on it.

Functions taking a `Transaction` run inside a caller's transaction body; the `async` ones (`read*`,
`list*`) read through the `Database`. See `receiver.storage.base`.
"""

from __future__ import annotations

import json

from receiver.models import ProviderEvent
from receiver.storage.base import Database, Row, Transaction

_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # `json.dumps(...)` builds one per call


def insert(tx: Transaction, event: ProviderEvent, *, now: float) -> bool:
    """Record the event; False (and nothing written) when its provider, kind and dedup key were seen before."""
    inserted = tx.execute(
        "insert_inbox",
        provider=event.provider,
        kind=event.kind,
        dedup_key=event.dedup_key,
        job_id=event.job_id,
        headers=_compact_json(event.headers),
        body=event.body,
        outcome=event.outcome.status.value,
        now=now,
    )
    return inserted == 1


async def list_for_job(db: Database, job_id: str) -> list[Row]:
    """(id, provider, kind, dedup_key, headers, body, outcome, received_at) of a job's events, in order."""
    return await db.all("list_inbox_for_job", job_id=job_id)
