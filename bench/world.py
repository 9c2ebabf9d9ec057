"""Everything one crash-harness run observed (its actors, the emulator, the final database), and the views of
it that the invariant checks and the counts share."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.actors import TERMINAL, Load, Watcher
from bench.hostile import Hostile, Sent, target_of
from bench.processes import ServerProcess
from bench.rig import Receipt, Subscriber
from bench.snapshot import Snapshot, error_code
from receiver.emulators.fal import FalEmulator, FalRequest


def status_class(code: int | None) -> str:
    return "no answer" if code is None else f"{code // 100}xx"


@dataclass
class World:
    """What a run saw, for `harness.evaluate`."""

    seed: int
    workdir: Path
    settle_bound_s: float
    emulator: FalEmulator
    subscriber: Subscriber
    subscriptions: dict[str, list[str] | None]  # subscriber path -> the events it asked for (None: all)
    hostile: Hostile
    watcher: Watcher
    load: Load
    server: ServerProcess
    killed_at: list[tuple[float, list[str]]]
    exit_code: int | None
    settled: bool
    settle_s: float
    snapshot: Snapshot

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.snapshot.jobs

    @property
    def final_jobs(self) -> list[dict[str, Any]]:
        return [job for job in self.jobs.values() if job["status"] in TERMINAL]

    @cached_property
    def requests(self) -> list[FalRequest]:
        """The fal requests whose submit reached the emulator."""
        return [r for r in self.emulator.requests.values() if r.webhook_url]

    @cached_property
    def requests_by_job(self) -> dict[str, list[FalRequest]]:
        by_job: defaultdict[str, list[FalRequest]] = defaultdict(list)
        for request in self.requests:
            by_job[target_of(request)[0]].append(request)
        return by_job

    @cached_property
    def replays(self) -> list[Sent]:
        return [s for s in self.hostile.sent if s.kind == "replay"]

    @cached_property
    def acked_2xx(self) -> dict[str, list[str]]:
        """fal request id -> the senders (the emulator, a replay) that got a 2xx for its webhook."""
        acked: defaultdict[str, list[str]] = defaultdict(list)
        for request in self.requests:
            if any(a.ok for a in request.deliveries):
                acked[request.request_id].append("emulator")
        for sent in self.replays:
            if sent.status_code is not None and 200 <= sent.status_code < 300:
                acked[sent.request_id].append("replay")
        return acked

    @cached_property
    def webhook_rows(self) -> dict[str, list[dict[str, Any]]]:
        """fal request id -> the inbox rows of its webhook."""
        rows: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.snapshot.inbox:
            if row["provider"] == "fal" and row["kind"] == "webhook":
                rows[row["dedup_key"]].append(row)
        return rows

    @cached_property
    def accepted(self) -> list[Receipt]:
        """The notifications the subscriber answered with a 2xx."""
        return [r for r in self.subscriber.receipts if 200 <= r.answered < 300]

    @cached_property
    def told(self) -> dict[tuple[str, str], list[Receipt]]:
        """(subscription, job id) -> the notifications the subscriber accepted for them."""
        told: defaultdict[tuple[str, str], list[Receipt]] = defaultdict(list)
        for receipt in self.accepted:
            told[(receipt.subscription, receipt.job_id)].append(receipt)
        return told

    def outcome(self, job: dict[str, Any]) -> tuple[str, str | None]:
        """The final state that fal's side of the run implies for `job`, named for the counts, and a violation
        when the job ended otherwise (None when it did not)."""
        job_id, status, error = job["id"], job["status"], job["error"]
        reqs = self.requests_by_job.get(job_id, [])
        if not reqs:
            name, holds = "never reached fal (submit cut by a kill): failed", status == "failed"
            broken = f"job {job_id} never reached fal but ends {status}"
        elif job["provider_request_id"] or reqs[0].request_id in self.acked_2xx:
            expected = "failed" if reqs[0].failure is not None else "succeeded"
            name, holds = f"reached fal: {expected}", status == expected
            broken = f"job {job_id} ends {status} ({error}); fal's result was {expected}"
        else:
            # The submit answer was lost to a kill and no webhook got through: the job can only time out.
            name = "reached fal, answer lost, no webhook: timed out"
            holds = status == "failed" and error_code(job) == "timeout"
            broken = f"job {job_id}: unbound and never told, yet ends {status} ({error})"
        return name, None if holds else broken
