"""The tasks table: the leased work queue. Every query on it.

Functions taking a `Transaction` run inside a caller's transaction body; see `receiver.storage.base`.
"""

from __future__ import annotations

import json
from typing import Any

from receiver.storage.base import Transaction


def insert(
    tx: Transaction,
    kind: str,
    job_id: str | None,
    now: float,
    *,
    payload: Any = None,
    delay_s: float = 0,
    lane: str | None = None,
) -> None:
    """Queue a task; a second live task of the same kind for the same job is a no-op. Its lane (see
    `receiver.tasks.lanes`) is `lane`, else the job's provider."""
    tx.execute(
        "insert_task",
        kind=kind,
        job_id=job_id,
        payload=json.dumps(payload or {}, separators=(",", ":")),
        run_at=now + delay_s,
        lane=lane,
        now=now,
    )
