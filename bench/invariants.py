"""The crash harness's invariants, one function each: given what a run saw, the violations it found (none
when the invariant held). `INVARIANTS` lists them in the order the report shows their findings."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

from bench.actors import TERMINAL
from bench.hostile import EXPECTED_REFUSAL, MARKER, target_of
from bench.world import World
from receiver.emulators.fal import RequestStatus
from receiver.emulators.fal.delivery import webhook_body
from receiver.emulators.webhooks import DELIVERY_DONE

# --- the run


def status_never_moved_backwards(world: World) -> list[str]:
    """What the API watcher saw: no status moved backwards or out of a final state; request ids stayed put."""
    return world.watcher.violations


def webhook_urls_carry_job_tokens(world: World) -> list[str]:
    """The token in each webhook URL the receiver handed fal is the job's token (the hostile sender checks)."""
    return world.hostile.harness_errors


def run_settled(world: World) -> list[str]:
    return [] if world.settled else [f"the run did not settle within {world.settle_bound_s:g} s (see the counts)"]


def sigterm_exits_cleanly(world: World) -> list[str]:
    code = world.exit_code
    return [] if code == 0 else [f"receiver serve exited with {code} on SIGTERM (expected 0)"]


# --- jobs


def every_create_accepted(world: World) -> list[str]:
    return [f"job create refused: {reason}" for reason in world.load.refused]


def acknowledged_jobs_stored(world: World) -> list[str]:
    return [
        f"job {job_id} was acknowledged with 202 but is not in the database"
        for job_id in world.load.acked
        if job_id not in world.jobs
    ]


def every_job_final(world: World) -> list[str]:
    return [
        f"job {job['id']} never reached a final state (still {job['status']})"
        for job in world.jobs.values()
        if job["status"] not in TERMINAL
    ]


def final_state_as_the_api_said(world: World) -> list[str]:
    found = []
    for job in world.jobs.values():
        seen = world.watcher.last.get(job["id"])
        if seen in TERMINAL and seen != job["status"]:
            found.append(f"job {job['id']} was {seen} in the API but ends {job['status']}")
    return found


def no_forged_job_error(world: World) -> list[str]:
    return [
        f"job {job['id']} carries a forged error: {job['error']}"
        for job in world.jobs.values()
        if MARKER in str(job["error"] or "")
    ]


def succeeded_jobs_have_images_stored(world: World) -> list[str]:
    return [
        f"job {job['id']} succeeded but images are {job['images_status']}: {job['images_error']}"
        for job in world.jobs.values()
        if job["status"] == "succeeded" and job["images_status"] != "stored"
    ]


# --- fal: what the emulator got and delivered


def fal_requests_finished(world: World) -> list[str]:
    return [
        f"emulator request {request.request_id} unfinished: {request.status} {request.delivery_state}"
        for request in world.requests
        if request.status is not RequestStatus.COMPLETED or request.delivery_state not in DELIVERY_DONE
    ]


def each_job_submitted_once(world: World) -> list[str]:
    return [
        f"job {job_id} was submitted to fal {len(reqs)} times (a submit was resent)"
        for job_id, reqs in world.requests_by_job.items()
        if len(reqs) > 1
    ]


def submits_are_for_stored_jobs(world: World) -> list[str]:
    return [
        f"fal got a submit for job {job_id}, which is not in the database"
        for job_id in world.requests_by_job
        if job_id not in world.jobs
    ]


# --- the inbox


def inbox_keys_unique(world: World) -> list[str]:
    keys = Counter((row["provider"], row["kind"], row["dedup_key"]) for row in world.snapshot.inbox)
    return [f"inbox holds {n} rows for {key}" for key, n in keys.items() if n > 1]


def acknowledged_webhooks_recorded_once(world: World) -> list[str]:
    """Every fal request for which any sender got a 2xx has exactly one webhook row."""
    found = []
    for request_id, senders in world.acked_2xx.items():
        rows = world.webhook_rows.get(request_id, [])
        if len(rows) != 1:
            found.append(
                f"fal request {request_id} got a 2xx ({', '.join(sorted(set(senders)))}) but has {len(rows)} rows"
            )
    return found


def inbox_holds_what_fal_sent(world: World) -> list[str]:
    """Each webhook row is for a request fal ran, holds the exact bytes fal sent and is bound to its job."""
    genuine = {r.request_id: r for r in world.requests}
    found = []
    for request_id, rows in world.webhook_rows.items():
        sender = genuine.get(request_id)
        if sender is None:
            found.append(f"inbox has a webhook for unknown fal request {request_id}")
            continue
        job_id = target_of(sender)[0]
        for row in rows:
            if bytes(row["body"]) != webhook_body(sender):
                found.append(f"inbox body of {request_id} is not the body fal sent (forged or re-serialised)")
            if row["job_id"] != job_id:
                found.append(f"inbox row of {request_id} is bound to {row['job_id']}, not {job_id}")
    return found


def no_forged_webhook_recorded(world: World) -> list[str]:
    forged = world.hostile.forged_bodies
    return [
        f"a forged webhook was recorded: {row['kind']} {row['dedup_key']}"
        for row in world.snapshot.inbox
        if MARKER.encode() in bytes(row["body"]) or bytes(row["body"]) in forged
    ]


# --- outcomes


def jobs_bound_to_the_request_fal_ran(world: World) -> list[str]:
    found = []
    for job in world.jobs.values():
        reqs = world.requests_by_job.get(job["id"])
        bound = job["provider_request_id"]
        if reqs and bound not in (None, reqs[0].request_id):
            found.append(f"job {job['id']} is bound to {bound}, but fal ran it as {reqs[0].request_id}")
    return found


def outcomes_follow_from_fal(world: World) -> list[str]:
    """Each job ends as fal's result implies; a job whose submit was cut by a kill before any answer, or
    whose answer was lost with no webhook getting through, fails (by its timeout)."""
    return [broken for job in world.jobs.values() if (broken := world.outcome(job)[1])]


# --- the hostile sender


def hostile_webhooks_refused(world: World) -> list[str]:
    """Forged, stale, wrong-token and mismatched webhooks got 401, 401, 403 and 409 (or no answer: a kill)."""
    found = []
    for sent in world.hostile.sent:
        expected = EXPECTED_REFUSAL.get(sent.kind)  # None for a replay
        if expected is not None and sent.status_code is not None and sent.status_code != expected:
            found.append(f"{sent.kind} webhook for job {sent.job_id} answered {sent.status_code}, expected {expected}")
    return found


def replays_accepted(world: World) -> list[str]:
    return [
        f"a genuine replay for {sent.request_id} was answered {sent.status_code}"
        for sent in world.replays
        if sent.status_code is not None and not 200 <= sent.status_code < 300
    ]


# --- notifications


def notifications_signed(world: World) -> list[str]:
    return [f"subscriber refused a notification: {reason}" for reason in world.subscriber.refused[:20]]


def one_event_per_final_job(world: World) -> list[str]:
    events = Counter(event["job_id"] for event in world.snapshot.events)
    return [
        f"job {job['id']} has {events.get(job['id'], 0)} events, expected 1"
        for job in world.final_jobs
        if events.get(job["id"], 0) != 1
    ]


def subscribers_told_once(world: World) -> list[str]:
    """Each subscription that wants a final job's event got it under exactly one `webhook-id`; the others none."""
    found = []
    for job in world.final_jobs:
        wanted = f"job.{job['status']}"
        for name, events in world.subscriptions.items():
            got = world.told.get((name, job["id"]), [])
            should = events is None or wanted in events
            distinct = {r.webhook_id for r in got}
            types = {r.event_type for r in got}
            if should and (len(distinct) != 1 or types != {wanted}):
                found.append(f"subscriber {name}: job {job['id']} ({job['status']}) got {sorted(types)} as {distinct}")
            if not should and got:
                found.append(f"subscriber {name}: job {job['id']} got unwanted {sorted(types)}")
    return found


def notifications_carry_the_final_state(world: World) -> list[str]:
    found = []
    for job in world.final_jobs:
        for name in world.subscriptions:
            for receipt in world.told.get((name, job["id"]), []):
                if receipt.job_status != job["status"]:
                    found.append(f"subscriber {name}: job {job['id']} notified as {receipt.job_status}")
                if receipt.event_type == "job.succeeded" and receipt.images_status != "stored":
                    found.append(f"subscriber {name}: job {job['id']} succeeded with images {receipt.images_status}")
    return found


def every_delivery_delivered(world: World) -> list[str]:
    return [
        f"delivery {delivery['id']} ends {delivery['status']}"
        for delivery in world.snapshot.deliveries
        if delivery["status"] != "delivered"
    ]


# --- stored images and tasks


def blobs_complete(world: World) -> list[str]:
    """Every image row's blob (and thumbnail) is on disk, complete, under its own sha256."""
    blobs, found = world.workdir / "blobs", []
    for image in world.snapshot.images:
        for digest in filter(None, (image["sha256"], image["thumbnail_sha256"])):
            path = blobs / digest[:2] / digest[2:4] / digest
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                found.append(f"blob {digest} is missing or corrupt")
    return found


def succeeded_jobs_have_an_output(world: World) -> list[str]:
    outputs = Counter(r["job_id"] for r in world.snapshot.job_images if r["role"] == "output" and r["sha256"])
    return [
        f"job {job['id']} succeeded without a stored output image"
        for job in world.jobs.values()
        if job["status"] == "succeeded" and not outputs.get(job["id"])
    ]


def no_task_left_over(world: World) -> list[str]:
    return [
        f"task {task['id']} {task['kind']} ({task['job_id']}) is {task['status']}: {task['last_error']}"
        for task in world.snapshot.tasks
        if task["status"] in ("pending", "leased", "dead")
    ]


INVARIANTS: tuple[Callable[[World], list[str]], ...] = (
    status_never_moved_backwards,
    webhook_urls_carry_job_tokens,
    run_settled,
    sigterm_exits_cleanly,
    every_create_accepted,
    acknowledged_jobs_stored,
    every_job_final,
    final_state_as_the_api_said,
    no_forged_job_error,
    succeeded_jobs_have_images_stored,
    fal_requests_finished,
    each_job_submitted_once,
    submits_are_for_stored_jobs,
    inbox_keys_unique,
    acknowledged_webhooks_recorded_once,
    inbox_holds_what_fal_sent,
    no_forged_webhook_recorded,
    jobs_bound_to_the_request_fal_ran,
    outcomes_follow_from_fal,
    hostile_webhooks_refused,
    replays_accepted,
    notifications_signed,
    one_event_per_final_job,
    subscribers_told_once,
    notifications_carry_the_final_state,
    every_delivery_delivered,
    blobs_complete,
    succeeded_jobs_have_an_output,
    no_task_left_over,
)
