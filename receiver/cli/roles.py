"""The roles of `receiver serve`, and the worker child of `--role all`: started, restarted with backoff when
it dies, stopped before the web part closes the database.

`web` serves HTTP only (API, webhooks, images, inputs, SSE); `worker` runs the task runner, the reconciler
and retention, and listens on no port; `all` (the default) is one `web` with one `worker` child. Any
number of each may run against one database.

In `all`, ingest must not share its core with the follow-up work (docs/benchmarks.md, "Where the worker
runs"), so the worker is `receiver serve --role worker` in a child process, with the parent's environment,
working directory, stdout and stderr. The two share nothing but the database, and are tied both ways:
the parent stops it (SIGTERM, then waits for its graceful stop) before closing the database, and the child
dies with the parent when the parent is killed (`bind_to_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from enum import StrEnum

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.5  # the first restart's delay, doubled after each quick death
RESTART_MAX_S = 30.0
STEADY_S = 60.0  # a child that ran this long before dying restarts after RESTART_MIN_S again
STOP_TIMEOUT_S = 45.0  # the task runner's 30 s shutdown grace, and some: then SIGKILL
READY_TIMEOUT_S = 30.0  # the web part waits this long at most for its worker to run before serving
_PR_SET_PDEATHSIG = 1


class Role(StrEnum):
    ALL = "all"
    WEB = "web"
    WORKER = "worker"


def worker_argv(parent_pid: int) -> list[str]:
    return [sys.executable, "-m", "receiver", "serve", "--role", "worker", "--parent-pid", str(parent_pid)]


class WorkerProcess:
    """Runs `argv` as a child until `stop()`; a child that dies (a non-zero status, a signal) is started
    again after a backoff. A child that exits with status 0 was asked to stop by someone else (a SIGTERM
    to it alone, or to the whole process group while the parent stops too) and is left stopped."""

    def __init__(self, argv: Sequence[str], *, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.argv = list(argv)
        self.stop_timeout_s = stop_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.ready = asyncio.Event()  # the current child runs its task runner (it said so on a pipe)
        self._stopping = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            # stdout and stderr are the parent's; close_fds (the default) keeps the listening socket out.
            read_fd, write_fd = os.pipe()
            try:
                # The child writes a byte on `--ready-fd` once its task runner runs (EOF if it dies first).
                argv = [*self.argv, "--ready-fd", str(write_fd)]
                self.proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(write_fd,))
            except OSError as exc:
                self.proc, status = None, -1
                os.close(read_fd)
                log.error("cannot start the worker process: %s", exc)
            else:
                self.starts += 1
                log.info("worker process %d started", self.proc.pid)
                told = asyncio.create_task(self._told_ready(read_fd))
                status = await self.proc.wait()
                self.ready.clear()
                await told
            finally:
                os.close(write_fd)
            if self._stopping.is_set():
                return
            if status == 0:
                log.warning("worker process %d stopped (asked to by a signal of its own); not restarting", self.pid)
                return
            failures = 1 if time.monotonic() - began >= STEADY_S else failures + 1
            delay_s = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (failures - 1))
            log.error("worker process %d died (status %d); restarting in %.1f s", self.pid, status, delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay_s)

    async def _told_ready(self, read_fd: int) -> None:
        try:
            if await asyncio.to_thread(os.read, read_fd, 1):
                self.ready.set()
        finally:
            os.close(read_fd)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Until the child runs its task runner (False after `timeout_s`, or once stopping)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout=timeout_s)
        return self.ready.is_set()

    async def stop(self) -> None:
        """SIGTERM the child and wait for its graceful stop (SIGKILL after `stop_timeout_s`, or at once if
        this wait is cancelled: a second Ctrl-C). Again after it stopped: nothing."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.stop_timeout_s)
        except BaseException:  # timed out, or cancelled
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise


@contextlib.asynccontextmanager
async def supervised(argv: Sequence[str]) -> AsyncIterator[WorkerProcess]:
    """A `WorkerProcess` running for the block's length, stopped (and waited for) when it ends."""
    worker = WorkerProcess(argv)
    running = asyncio.create_task(worker.run(), name="worker-process")
    try:
        yield worker
    finally:
        try:
            with contextlib.suppress(TimeoutError):
                await worker.stop()
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def bind_to_parent(parent_pid: int) -> bool:
    """In the child: die with the parent (Linux: the kernel sends SIGKILL when it ends, `kill -9` too, as
    when the worker ran inside it). False when the parent is gone already (the caller exits)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent_pid


async def watch_parent(parent_pid: int, stop: asyncio.Event, *, interval_s: float = 1.0) -> None:
    """Set `stop` once the parent is gone (the backstop where the kernel does not tell: not Linux)."""
    while not stop.is_set():
        if os.getppid() != parent_pid:  # nothing tells of a parent's end: polled
            log.warning("the parent process %d is gone; stopping", parent_pid)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
