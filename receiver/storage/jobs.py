"""The jobs table (and its input images, idempotency keys and superseded requests): every query on them.

Functions taking a `Transaction` run inside a caller's transaction body; see `receiver.storage.base`.
"""

from __future__ import annotations

from receiver.errors import NotFoundError
from receiver.models import Job
from receiver.storage.base import Transaction


def get(tx: Transaction, job_id: str) -> Job:
    """The job, or `NotFoundError`."""
    row = tx.one("select_job", id=job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)
