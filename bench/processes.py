"""Process control for the benchmarks and the crash harness: servers in subprocesses on fixed loopback ports
(started, waited for, signalled, restarted), their environment, a static JWKS server, and CPU and RSS of a
process group read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from receiver.web.asgi_server import bind_socket

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEYS = ("FAL_KEY", "WAVESPEED_API_KEY", "STEP_API_KEY", "MODELVERSE_API_KEY")


def free_port() -> int:
    """A loopback port free now; another process may take it before it is bound: where a server in another
    process binds it later, `held_port` instead."""
    sock = bind_socket("127.0.0.1", 0)
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A loopback port bound (not listening) by the caller while the block runs: no other process can take it
    (not even a test server or client of a parallel test run), before the server starts or between a kill and the
    restart, while `receiver serve` binds it beside this socket (both set
    SO_REUSEADDR, which on Linux lets a socket bind a port no socket listens on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment minus any RECEIVER_* setting or provider key, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_") and k not in PROVIDER_KEYS}
    env.update(settings)
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file (a server's output), for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """A server in a subprocess on a fixed port, `receiver serve` unless `argv` says otherwise; started once
    `GET /healthz` answers 200 (with `healthz=False`, a process that serves no HTTP, such as
    `receiver serve --role worker`: once it has run for `settle_s` without exiting), stopped with a signal,
    and restartable on the same port. With `group` it leads a process group of its own (with the worker child
    of `receiver serve`, its uvicorn workers), and SIGKILL goes to the whole group at once, as a crash of the
    machine or its container would."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        *,
        cwd: Path,
        log_path: Path,
        argv: list[str] | None = None,
        name: str = "receiver serve",
        healthz: bool = True,
        settle_s: float = 1.0,
        group: bool = False,
    ) -> None:
        self.env, self.port, self.cwd, self.log_path, self.name = env, port, cwd, log_path, name
        self.healthz, self.settle_s, self.group = healthz, settle_s, group
        self.argv = argv or [sys.executable, "-m", "receiver", "serve", "--port", str(port)]
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_s: list[float] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 30.0) -> None:
        began = time.monotonic()
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            # Popen returns at once, so it does not block the loop; cwd keeps a stray .env out.
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.group,
            )
        self.starts += 1
        if not self.healthz:
            await self._settle()
            self.start_s.append(time.monotonic() - began)
            return
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        break
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited during start-up ({self.log_path}):\n{tail(self.log_path)}")
                if time.monotonic() - began > timeout_s:
                    self.proc.kill()
                    raise RuntimeError(f"{self.name} did not answer /healthz in {timeout_s:g} s")
                await asyncio.sleep(0.02)
        self.start_s.append(time.monotonic() - began)

    async def _settle(self) -> None:
        assert self.proc is not None
        until = time.monotonic() + self.settle_s
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up ({self.log_path}):\n{tail(self.log_path)}")
            await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> int:
        """Send `sig` and wait for the exit (in a thread: the loop keeps serving the emulator meanwhile). With
        `group`, SIGKILL goes to every process of the group, and this returns once none of them is left (the
        children of a killed parent are not ours to wait for: /proc tells)."""
        proc = self.proc
        assert proc is not None
        whole_group = self.group and sig == signal.SIGKILL
        if whole_group:
            with contextlib.suppress(ProcessLookupError):  # the leader may be gone, a child not yet
                os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
        try:
            status = await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            raise
        if whole_group:
            await asyncio.to_thread(wait_group_gone, proc.pid, timeout_s)
        return status


def group_members(pgid: int) -> list[int]:
    """The live processes of the process group `pgid` (zombies left out: they run nothing and hold nothing)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Until no live process of the group `pgid` is left (after a SIGKILL to the group)."""
    until = time.monotonic() + timeout_s
    while members := group_members(pgid):
        if time.monotonic() > until:
            raise RuntimeError(f"processes {members} of group {pgid} outlived a SIGKILL by {timeout_s:g} s")
        time.sleep(0.01)


@contextlib.contextmanager
def jwks_server(directory: Path, jwk: dict[str, str]) -> Iterator[str]:
    """One public key as a JWKS document, served by `python -m http.server` on a free port; yields its URL."""
    root = directory / "jwks"
    (root / ".well-known").mkdir(parents=True)
    (root / ".well-known" / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    finally:
        proc.terminate()
        proc.wait()


# --------------------------------------------------------------------------------------------------
# /proc


def parents() -> dict[int, int]:
    """Every live process's parent, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def pids(root: int) -> list[int]:
    """The process and every descendant (uvicorn workers, the worker child of `receiver serve`), parents first."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents().items():
        children.setdefault(parent, []).append(pid)
    found, index = [root], 0
    while index < len(found):
        found.extend(sorted(children.get(found[index], [])))
        index += 1
    return found


def command_line(pid: int) -> list[str]:
    """The process's argv ([] once it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cpu_s(pid_list: list[int], *, reaped: bool = False) -> float:
    """CPU seconds (user + system) the processes used so far; `reaped` adds what their children that have
    exited and been waited for used (how a server's short-lived children still count)."""
    total = 0.0
    for pid in pid_list:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if reaped:
            total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pid_list: list[int], field: str = "VmRSS") -> int:
    total = 0
    for pid in pid_list:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total
