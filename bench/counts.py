"""The crash harness's report: what a run did, counted section by section (one function a section), and the
violations the invariant checks found; `ChaosReport.table()` prints both."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.actors import OPEN
from bench.hostile import HOSTILE_WEIGHTS
from bench.snapshot import error_code
from bench.world import World, status_class


@dataclass
class ChaosReport:
    seed: int
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, section: str, name: str, value: Any) -> None:
        self.counts.setdefault(section, {})[name] = value

    def table(self) -> str:
        width = max((len(name) for values in self.counts.values() for name in values), default=10)
        lines = [f"chaos run: seed {self.seed}, {self.elapsed_s:.1f} s"]
        for section, values in self.counts.items():
            lines.append(f"[{section}]")
            lines.extend(f"  {name:<{width}}  {value}" for name, value in values.items())
        if self.violations:
            lines.append(f"VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"  - {violation}" for violation in self.violations[:60])
            if len(self.violations) > 60:
                lines.append(f"  ... and {len(self.violations) - 60} more")
        else:
            lines.append("every invariant held")
        return "\n".join(lines)


def run(world: World) -> dict[str, Any]:
    mid_task = [kinds for _, kinds in world.killed_at if kinds]
    return {
        "seed": world.seed,
        "kills (SIGKILL) at s": ", ".join(f"{t:.1f}" for t, _ in world.killed_at) or "-",
        "kills with a task leased": f"{len(mid_task)} of {len(world.killed_at)}",
        "task kinds leased at kills": dict(Counter(k for kinds in mid_task for k in kinds)) or "-",
        "server starts": world.server.starts,
        "start-up time s (max)": f"{max(world.server.start_s, default=0):.2f}",
        "settled within bound": f"{world.settled} ({world.settle_s:.1f} s)",
        "final SIGTERM exit code": world.exit_code,
    }


def jobs(world: World) -> dict[str, Any]:
    load, all_jobs = world.load, world.jobs.values()
    by_status = Counter(job["status"] for job in all_jobs)
    images = Counter(job["images_status"] for job in all_jobs if job["status"] == "succeeded")
    return {
        "created (202 seen)": len(load.acked),
        "create cut by a kill": load.unknown,
        "create refused": len(load.refused),
        "in database": len(world.jobs),
        **{status: by_status.get(status, 0) for status in ("succeeded", "failed", "cancelled", *OPEN)},
        "failed by code": dict(Counter(error_code(job) for job in all_jobs if job["status"] == "failed")) or "-",
        "succeeded: images stored": images.get("stored", 0),
        "status changes watched": world.watcher.changes,
        "API polls ok / failed": f"{world.watcher.polls} / {world.watcher.failed_polls}",
    }


def emulator(world: World) -> dict[str, Any]:
    requests = world.requests
    attempts = [a for r in requests for a in r.deliveries]
    answered = Counter(status_class(a.status_code) for a in attempts)
    return {
        "requests (submits reaching fal)": len(requests),
        "with duplicate delivery": sum(r.config.duplicate_delivery for r in requests),
        "with late delivery": sum(r.config.late_delivery_s > 0 for r in requests),
        "with no delivery": sum(r.config.no_delivery for r in requests),
        "with model error": sum(r.failure is not None for r in requests),
        "delivery attempts": len(attempts),
        **{f"  answered {name}": n for name, n in sorted(answered.items())},
        "deliveries given up": sum(r.delivery_state.value == "gave_up" for r in requests),
    }


def inbox(world: World) -> dict[str, Any]:
    return {
        "rows by kind": dict(Counter(row["kind"] for row in world.snapshot.inbox)) or "-",
        "fal requests with a 2xx": len(world.acked_2xx),
        "fal requests with a webhook row": len(world.webhook_rows),
    }


def outcomes(world: World) -> dict[str, Any]:
    """Jobs by the final state fal's side of the run implies for them."""
    return dict(sorted(Counter(world.outcome(job)[0] for job in world.jobs.values()).items()))


def hostile(world: World) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for kind in HOSTILE_WEIGHTS:
        mine = [s for s in world.hostile.sent if s.kind == kind]
        classes = Counter(status_class(s.status_code) for s in mine)
        shown = ", ".join(f"{name} {n}" for name, n in sorted(classes.items())) or "-"
        counts[kind] = f"{len(mine)} sent: {shown}"
    counts["replay 2xx results"] = dict(Counter(s.result for s in world.replays if s.result)) or "-"
    return counts


def subscriber(world: World) -> dict[str, Any]:
    receipts, accepted = world.subscriber.receipts, world.accepted
    ids = Counter((r.subscription, r.webhook_id) for r in accepted)
    return {
        "receipts (raw)": len(receipts),
        "answered 503 on purpose": len(receipts) - len(accepted),
        "accepted": len(accepted),
        "distinct webhook-ids accepted": len(ids),
        "same webhook-id accepted again": sum(n - 1 for n in ids.values()),
        "bad signatures": len(world.subscriber.refused),
    }


def deliveries(world: World) -> dict[str, Any]:
    rows = world.snapshot.deliveries
    return {
        "by status": dict(Counter(d["status"] for d in rows)) or "-",
        "attempts (max per delivery)": max((d["attempts"] for d in rows), default=0),
    }


def images(world: World) -> dict[str, Any]:
    blobs, db = world.workdir / "blobs", world.snapshot
    return {
        "image rows / job image rows": f"{len(db.images)} / {len(db.job_images)}",
        "temp files left by kills": sum(1 for _ in blobs.rglob(".tmp-*")) if blobs.exists() else 0,
    }


def tasks(world: World) -> dict[str, Any]:
    rows = world.snapshot.tasks
    return {
        "by status": dict(Counter(t["status"] for t in rows)) or "-",
        "by kind": dict(Counter(t["kind"] for t in rows)) or "-",
        "taken over after a kill": sum(t["interrupted"] for t in rows),
    }


SECTIONS: tuple[tuple[str, Callable[[World], dict[str, Any]]], ...] = (
    ("run", run),
    ("jobs", jobs),
    ("emulator", emulator),
    ("inbox", inbox),
    ("outcomes", outcomes),
    ("hostile", hostile),
    ("subscriber", subscriber),
    ("deliveries", deliveries),
    ("images", images),
    ("tasks", tasks),
)
