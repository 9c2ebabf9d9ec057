"""The crash harness: `receiver serve` under load and hostile webhooks, killed with SIGKILL and restarted.

One run (`run_chaos`):

1. In this process: the fal emulator (real Ed25519-signed webhooks with fal's retry policy, its delays
   shrunk by `time_scale`; duplicate, late, dropped deliveries and model errors switched at random as jobs
   come in) and a subscriber app that verifies every Standard Webhooks signature and records what came
   (`bench/rig.py`).
2. `receiver serve` in a subprocess on a fixed loopback port, with short leases and a fast reconciler.
3. Load: jobs created through `POST /v1/jobs` (both fal models, a tiny data-URI image). Meanwhile a
   hostile sender posts forged webhooks (a key not in the JWKS), stale ones (valid signature, 10 min
   old), wrong-token ones, validly signed ones for another job's request, and replays of genuine
   webhooks (duplicates, and reordered ahead of late deliveries); a watcher polls the API and checks
   that no job's status ever moves backwards (`bench/actors.py`, `bench/hostile.py`).
4. Chaos: SIGKILL the server at random moments (its whole process group: the web process and its worker
   child, as a crash would) and restart it at once on the same port.
5. Settle (bounded), stop the server with SIGTERM, read the database (the SQLite file, or the PostgreSQL
   database of `database_url`) and check every invariant
   (`evaluate`: the counts of `bench/counts.py`, the checks of `bench/invariants.py`); `ChaosReport.table()`
   prints the counts.

Only 127.0.0.1 is used. `tests/test_crash.py` runs it small, on both backends; `python -m bench.chaos` runs
it long.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.actors import TERMINAL, Load, Watcher, create_jobs, kill_at_random, shuffle_faults
from bench.counts import SECTIONS, ChaosReport
from bench.hostile import EXPECTED_REFUSAL, Hostile
from bench.invariants import INVARIANTS
from bench.processes import tail
from bench.rig import Subscriber, running_rig
from bench.snapshot import Snapshot, Where, read_db
from bench.world import World
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.emulators.webhooks import DELIVERY_DONE

# The harness's entry points; `tail` reads the end of a run's server log (`workdir/serve.log`).
__all__ = ["ChaosOptions", "ChaosReport", "run_chaos", "tail"]

# subscriber path -> the events it asks for (None: all)
SUBSCRIPTIONS: dict[str, list[str] | None] = {"all": None, "succeeded": ["job.succeeded"]}


@dataclass
class ChaosOptions:
    """Knobs of one run. The test keeps it under a minute; `bench.chaos` turns it up."""

    workdir: Path
    jobs: int = 30
    duration_s: float = 15.0  # load and kills happen in this window
    kills: int = 3
    seed: int = 0
    database_url: str | None = None  # a PostgreSQL URL; else a SQLite file in `workdir`
    settle_s: float = 40.0  # bound on waiting for everything to finish after the window (plus the down time)
    job_timeout_s: float = 20.0  # of server up-time; a submit cut by a kill is never resent: the job timeout ends it
    create_window: float = 0.8  # jobs are created during this first fraction of the window
    hostile_per_s: float = 20.0
    flaky_subscriber: float = 0.1  # fraction of notifications the subscriber answers with 503
    time_scale: float = 0.002  # shrinks the emulator's webhook retry delays (15 s doubling)
    min_up_s: float = 1.0  # least time the server runs between two kills
    aim_s: float = 1.5  # from a kill's random moment, wait up to this long for a task in flight
    log: Callable[[str], None] = field(default=lambda line: None)


def evaluate(world: World, report: ChaosReport) -> None:
    """Count what the run did, section by section, and check every invariant against what the run saw and
    what the database holds."""
    for section, tally in SECTIONS:
        for name, value in tally(world).items():
            report.count(section, name, value)
    for check in INVARIANTS:
        report.violations.extend(check(world))
    # What proves the chaos landed (a run without either proves little; tests/test_crash.py requires both).
    report.kills_mid_task = sum(1 for _, kinds in world.killed_at if kinds)
    report.hostile_refused = sum(1 for s in world.hostile.sent if s.status_code == EXPECTED_REFUSAL.get(s.kind))


# --------------------------------------------------------------------------------------------------
# settling


def settled(snapshot: Snapshot, emulator: FalEmulator, subscriber: Subscriber) -> tuple[bool, str]:
    """Whether nothing is left to happen: every job final, images handled, every task and delivery done,
    every fal request delivered (or given up), the subscriber told. The string says what is still open."""
    open_jobs = [j for j in snapshot.jobs.values() if j["status"] not in TERMINAL]
    if open_jobs:
        return False, f"{len(open_jobs)} jobs open"
    fetching = [j for j in snapshot.jobs.values() if j["status"] == "succeeded" and j["images_status"] == "pending"]
    if fetching:
        return False, f"{len(fetching)} jobs fetching images"
    busy = [t for t in snapshot.tasks if t["status"] in ("pending", "leased")]
    if busy:
        return False, f"{len(busy)} tasks pending or leased"
    undelivered = [d for d in snapshot.deliveries if d["status"] not in ("delivered", "dead")]
    if undelivered:
        return False, f"{len(undelivered)} deliveries open"
    sending = [r for r in emulator.requests.values() if r.webhook_url and r.delivery_state not in DELIVERY_DONE]
    if sending:
        return False, f"{len(sending)} fal webhooks still being delivered"
    told = {(r.subscription, r.job_id) for r in subscriber.receipts if 200 <= r.answered < 300}
    if len({job_id for _, job_id in told}) < len(snapshot.jobs):
        return False, "the subscriber is still missing notifications"
    return True, "settled"


async def wait_settled(
    db_path: Where, emulator: FalEmulator, subscriber: Subscriber, bound_s: float, log: Callable[[str], None]
) -> tuple[bool, float]:
    began = time.monotonic()
    last_note, said = "", 0.0
    while True:
        snapshot = await asyncio.to_thread(read_db, db_path)
        done, note = settled(snapshot, emulator, subscriber)
        elapsed = time.monotonic() - began
        if done:
            return True, elapsed
        if elapsed > bound_s:
            log(f"  not settled after {bound_s:g} s: {note}")
            return False, elapsed
        if note != last_note and elapsed - said > 2:
            log(f"  settling ({elapsed:.0f} s): {note}")
            last_note, said = note, elapsed
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# one run


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """One chaos run as the module docstring describes; the report says what happened and what broke."""
    began = time.monotonic()
    report = ChaosReport(seed=options.seed)
    rng = random.Random(options.seed)
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    db_path: Where = options.database_url or workdir / "receiver.db"
    on_postgres = {"RECEIVER_DATABASE_URL": options.database_url} if options.database_url else {}
    signing_key = Ed25519PrivateKey.generate()
    emulator = FalEmulator(
        FalEmulatorConfig(queue_s=0.05, inference_s=0.1, time_scale=options.time_scale), signing_key=signing_key
    )
    subscriber = Subscriber(random.Random(rng.random()), options.flaky_subscriber)
    watcher = Watcher()
    load = Load()
    hostile_rng = random.Random(rng.random())
    stop_load = asyncio.Event()
    async with (
        running_rig(workdir, emulator, subscriber, job_timeout_s=options.job_timeout_s, **on_postgres) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as api,
        httpx.AsyncClient(timeout=5) as hostile_client,
    ):
        hostile = Hostile(hostile_rng, emulator, signing_key, server.url, watcher)
        for name, events in SUBSCRIPTIONS.items():
            await subscriber.subscribe(api, name, events)

        options.log(
            f"chaos: {options.jobs} jobs, {options.kills} kills in {options.duration_s:g} s, seed {options.seed}"
        )
        background = [
            asyncio.create_task(shuffle_faults(emulator, random.Random(rng.random()), stop_load)),
            asyncio.create_task(watcher.run(api, stop_load)),
            asyncio.create_task(hostile.run(hostile_client, stop_load, options.hostile_per_s)),
        ]
        window_ends = time.monotonic() + options.duration_s
        try:
            window_s = options.duration_s * options.create_window
            creating = asyncio.create_task(
                create_jobs(api, load, random.Random(rng.random()), jobs=options.jobs, window_s=window_s)
            )
            killed_at, down_s = await kill_at_random(
                server,
                db_path,
                random.Random(rng.random()),
                kills=options.kills,
                window_s=options.duration_s,
                min_up_s=options.min_up_s,
                aim_s=options.aim_s,
                job_timeout_s=options.job_timeout_s,
                log=options.log,
            )
            await creating
            await asyncio.sleep(max(0.0, window_ends - time.monotonic()))  # hostile traffic fills the window
            stop_load.set()
            await asyncio.gather(*background)
        finally:
            stop_load.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        options.log(f"  load done after {time.monotonic() - began:.1f} s, {down_s:.1f} s of it down; settling")
        settle_bound_s = options.settle_s + down_s  # the job timeout grew by the down time (`kill_at_random`)
        quiet = asyncio.Event()
        final_watch = asyncio.create_task(watcher.run(api, quiet))  # keep checking monotonicity while settling
        try:
            ok, settle_s = await wait_settled(db_path, emulator, subscriber, settle_bound_s, options.log)
        finally:
            quiet.set()
            await final_watch
        with contextlib.suppress(httpx.TransportError):
            await watcher.poll_once(api)
        exit_code = await server.stop(signal.SIGTERM)
        snapshot = await asyncio.to_thread(read_db, db_path)
        world = World(
            seed=options.seed,
            workdir=workdir,
            settle_bound_s=settle_bound_s,
            emulator=emulator,
            subscriber=subscriber,
            subscriptions=SUBSCRIPTIONS,
            hostile=hostile,
            watcher=watcher,
            load=load,
            server=server,
            killed_at=killed_at,
            exit_code=exit_code,
            settled=ok,
            settle_s=settle_s,
            snapshot=snapshot,
        )
        evaluate(world, report)
    report.elapsed_s = time.monotonic() - began
    report.count("run", "wall time s", f"{report.elapsed_s:.1f}")
    return report
