"""The live feed's wake-ups: a commit noticed while a stream reads is never slept through, and commits by
other processes wake the streams only when the event log grew."""

from __future__ import annotations

import asyncio

from receiver.notify.stream import EventHub, EventTail
from receiver.storage import events
from receiver.storage.sqlite import Database
from tests.helpers.storage_rows import T0

HANG_GUARD_S = 10  # only stops a broken hub from hanging the suite; no test relies on timing


async def test_a_notify_during_a_read_is_not_slept_through() -> None:
    """A stream that noted the generation before its read returns at once from `wait` if a notify came
    meanwhile (even if another stream was woken by it first), and sleeps otherwise."""
    hub = EventHub()
    noted = hub.generation
    other = asyncio.create_task(hub.wait(3600))
    await asyncio.sleep(0)  # the other stream is waiting
    hub.notify()
    async with asyncio.timeout(HANG_GUARD_S):
        await other
        await hub.wait(3600, since=noted)
    sleeper = asyncio.create_task(hub.wait(3600, since=hub.generation))
    await asyncio.sleep(0)
    assert not sleeper.done()
    hub.notify()
    async with asyncio.timeout(HANG_GUARD_S):
        await sleeper


async def test_foreign_commits_wake_streams_only_when_events_were_added(db: Database) -> None:
    """With no stream open nothing is read; with one open, a commit that added an event wakes the hub once,
    and a commit that added none does not."""
    hub = EventHub()
    tail = EventTail(db, hub)
    tail.changed()
    assert hub.generation == 0 and tail._checking is None  # nobody follows: no read at all
    assert hub.open_stream(10)

    async def checked() -> None:
        assert tail._checking is not None
        async with asyncio.timeout(HANG_GUARD_S):
            await tail._checking

    tail.changed()
    await checked()
    assert hub.generation == 1  # the first look: streams may have missed something
    tail.changed()
    await checked()
    assert hub.generation == 1  # the event log did not move
    await db.write(lambda tx: events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=None,
                                                  payload={}, now=T0))  # fmt: skip
    tail.changed()
    await checked()
    assert hub.generation == 2
    await tail.aclose()
