"""A throwaway PostgreSQL server for the tests and the benchmarks: `initdb` and `pg_ctl` in a temporary directory.

`PostgresCluster` finds the Debian server binaries (`/usr/lib/postgresql/<version>/bin`, the `postgresql`
package; `scripts/test` installs it), runs them as the `postgres` system user when this process is root
(they refuse to run as root), keeps the data directory and the unix socket in a temporary directory that
user owns, and listens on a free 127.0.0.1 port with password authentication (the URLs it hands out carry
the password, as a real deployment's do). `durable=False` (the tests) turns fsync, synchronous commit and
full-page writes off (and detects deadlocks after 100 ms, not 1 s); `durable=True` (the benchmarks) keeps
PostgreSQL's defaults.

A watchdog process owns the server's lifetime: `stop()` (or the end of the `with` block) tells it to stop
the server and remove the directory, and so does the death of this process, even by SIGKILL (the watchdog
sees its pipe close), so no killed test run leaves a server behind.

`python -m bench.postgres` starts one, prints a database URL and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

from bench.processes import free_port

SUPERUSER = "receiver"
BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_ATTEMPTS = 5  # a free port can be taken by another process before the server binds it


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl` (else the ones on PATH)."""
    found = [Path(p) for p in glob.glob(BIN_GLOB) if (Path(p) / "initdb").is_file() and (Path(p) / "pg_ctl").is_file()]
    if found:
        return max(found, key=lambda p: _version_key(p.parent.name))
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    raise PostgresMissing(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found under {BIN_GLOB} nor on PATH: install the "
        "Debian package `postgresql` (scripts/test does: apt-get install -y postgresql)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class PostgresCluster:
    """One PostgreSQL server in a temporary directory, for the length of a `with` block (or `start()` to
    `stop()`). `create_database(name)` gives a URL a `receiver` can use."""

    def __init__(self, *, durable: bool = False, max_connections: int = 400, shared_buffers: str | None = None) -> None:
        self.durable = durable
        self.max_connections = max_connections
        self.shared_buffers = shared_buffers or ("128MB" if durable else "32MB")
        self.password = secrets.token_hex(16)
        self.port = 0
        self.dir: Path | None = None
        self._bin = find_bin_dir()
        self._as_postgres = os.geteuid() == 0
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()

    # --- lifetime ------------------------------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, then start the server on a free loopback port (another port if that one was taken)."""
        self.dir = Path(tempfile.mkdtemp(prefix="receiver-pg-"))
        try:
            if self._as_postgres:
                user = _postgres_user()
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._initdb()
            for attempt in range(START_ATTEMPTS):
                self.port = free_port()
                started = self._run(
                    "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_path),
                    "-o", f"-p {self.port}", check=False,
                )  # fmt: skip
                if started.returncode == 0:
                    break
                if "could not bind" not in self.log_tail() or attempt == START_ATTEMPTS - 1:
                    raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{self.log_tail()}")
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "bench.postgres", "--watch", str(self.dir)],
                stdin=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,  # a Ctrl-C to the test run must not kill it before it cleans up
            )
        except BaseException:
            self._teardown()
            raise

    def stop(self) -> None:
        """Stop the server at once and remove its directory (nothing in it is meant to last)."""
        with self._lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()  # the watchdog stops the server and removes the directory
            self._watchdog.wait()
            self._watchdog = None
        elif self.dir is not None:
            self._teardown()
        self.dir = None

    def _teardown(self) -> None:
        if self.dir is None:
            return
        teardown(self.dir, bin_dir=self._bin, as_postgres=self._as_postgres)

    # --- databases -----------------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The URL of `database` on this server (TCP on 127.0.0.1, with the superuser's password)."""
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{quote(database)}"

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` if given, which nobody may be connected to); its URL."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self.admin(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, ending any session still connected to it."""
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def admin(self, statement: sql.Composable | str) -> None:
        """Run one statement as the superuser on the `postgres` database (through the unix socket)."""
        with self._lock:
            if self._admin is None or self._admin.closed:
                self._admin = psycopg.connect(
                    host=str(self.dir), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
                )
            self._admin.execute(statement)

    # --- helpers -------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "the cluster is not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "the cluster is not started"
        return self.dir / "server.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _initdb(self) -> None:
        assert self.dir is not None
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            user = _postgres_user()
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        args = ["-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--locale=C", f"--pwfile={pwfile}"]
        args += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
        if not self.durable:
            args.append("--no-sync")
        self._run("initdb", *args)
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": str(self.max_connections),
            "shared_buffers": self.shared_buffers,
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off", deadlock_timeout="100ms")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# bench.postgres\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool(self._bin, program, *args, cwd=self.dir, as_postgres=self._as_postgres, check=check)


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing(
            "running as root, the PostgreSQL server needs the `postgres` system user (the `postgresql` package "
            "creates it): initdb and pg_ctl refuse to run as root"
        ) from None


def run_tool(
    bin_dir: Path, program: str, *args: str, cwd: Path | None, as_postgres: bool, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a server binary (as the `postgres` user when `as_postgres`), its output captured."""
    argv = [str(bin_dir / program), *args]
    if as_postgres:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def teardown(directory: Path, *, bin_dir: Path, as_postgres: bool) -> None:
    """Stop the server of `directory` (if one runs) at once and remove the directory."""
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        run_tool(bin_dir, "pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(data), cwd=directory,
                 as_postgres=as_postgres, check=False)  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)


def _watch(directory: Path) -> None:
    """The watchdog: wait until the parent closes our stdin (or dies), then tear the cluster down."""
    with contextlib.suppress(KeyboardInterrupt):
        while sys.stdin.buffer.read(65536):
            pass
    teardown(directory, bin_dir=find_bin_dir(), as_postgres=os.geteuid() == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a throwaway PostgreSQL server until Ctrl-C.")
    parser.add_argument("--watch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--durable", action="store_true", help="keep fsync and synchronous commit on")
    parser.add_argument("--database", default="receiver")
    args = parser.parse_args()
    if args.watch is not None:
        _watch(args.watch)
        return
    with PostgresCluster(durable=args.durable) as cluster:
        print(cluster.create_database(args.database), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
