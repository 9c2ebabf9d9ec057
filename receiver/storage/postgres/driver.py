"""The PostgreSQL driver boundary: connections, the URL's password kept out of every message, driver errors
translated into the storage errors, and the `Transaction` over a cursor."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import PoolClosed

from receiver.storage.base import DatabaseClosed, IntegrityViolation, Row, StorageError, UniqueViolation
from receiver.storage.postgres.queries import NOTIFIES, QUERIES

CONNECT_TIMEOUT_S = 10  # libpq's connect_timeout, unless the URL sets one


class DatabaseUrl:
    """A database URL and what must never be shown of it (its password)."""

    __slots__ = ("_secrets", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        # libpq quotes a malformed URL (or a part of it) in its error, so the password is found here by hand too.
        secrets = {url}
        _, _, rest = url.partition("://")
        for userinfo in (rest.partition("@")[0], rest.rpartition("@")[0]):
            if ":" in userinfo:
                secrets.add(userinfo.partition(":")[2])
        secrets.update(re.findall(r"[?&]password=([^&]*)", url))
        with contextlib.suppress(psycopg.Error):
            given = conninfo_to_dict(url).get("password")
            if isinstance(given, str):
                secrets.add(given)
        secrets |= {unquote(secret) for secret in secrets}
        self._secrets = sorted((secret for secret in secrets if secret), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def connect_kwargs(self) -> dict[str, Any]:
        """libpq options the receiver sets unless the URL does."""
        try:
            given = conninfo_to_dict(self.url)
        except psycopg.Error:
            given = {}  # the connect call reports the malformed URL
        kwargs: dict[str, Any] = {}
        if "connect_timeout" not in given:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in given:
            kwargs["application_name"] = "receiver"
        return kwargs

    def __repr__(self) -> str:
        return "<database URL>"


RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def translate(exc: Exception, url: DatabaseUrl | None = None) -> Exception:
    """The storage-level error for a driver error (the caller chains the driver's as `__cause__`): its primary
    message only, the URL's password redacted. Anything else is returned as it is."""
    if isinstance(exc, PoolClosed):
        return DatabaseClosed("database is not open")
    if not isinstance(exc, psycopg.Error):
        return exc
    message = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    if url is not None:
        message = url.redact(message)
    if isinstance(exc, pg_errors.UniqueViolation):
        return UniqueViolation(message)
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityViolation(message)
    return StorageError(message)


def chained(exc: Exception, url: DatabaseUrl | None = None) -> Exception:
    """`translate`, with the driver's error as the cause, the text of it and of every error it chains redacted
    too (libpq quotes a malformed URL)."""
    error = translate(exc, url)
    if error is not exc:
        link: BaseException | None = exc
        while url is not None and link is not None:  # the driver chains errors of its own
            link.args = tuple(url.redact(arg) if isinstance(arg, str) else arg for arg in link.args)
            link = link.__cause__ or link.__context__
        error.__cause__ = exc
        error.__suppress_context__ = True
    return error


# --- connections ---------------------------------------------------------------------------------------


def connect(url: DatabaseUrl, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
    """A sync connection, rows as dicts (driver errors untranslated)."""
    return psycopg.connect(url.url, autocommit=autocommit, row_factory=dict_row, **url.connect_kwargs())


async def connect_async(url: DatabaseUrl) -> psycopg.AsyncConnection[dict[str, Any]]:
    """An async autocommit connection, rows as dicts (driver errors untranslated)."""
    return await psycopg.AsyncConnection.connect(url.url, autocommit=True, row_factory=dict_row, **url.connect_kwargs())


def notify_statement(channels: set[str]) -> bytes:
    """One transaction that only notifies `channels` (migration 0010), sent once the writes it announces
    committed. `synchronous_commit` off: it holds PostgreSQL's global notify lock from its commit on, and so
    must not wait for a disk flush meanwhile (a wake-up lost in a crash is backstopped by the listeners' poll)."""
    notifies = "".join(f" NOTIFY {channel};" for channel in sorted(channels))
    return f"BEGIN; SET LOCAL synchronous_commit TO off;{notifies} COMMIT".encode()


def first_value(row: Row) -> Any:
    return next(iter(row.values()))


# --- the transaction -----------------------------------------------------------------------------------


class Unsynced:
    """A writer batch's pipeline, and the statements it carries whose outcome no one has read yet.

    A queued statement (`Transaction.execute_later`, `execute_at_commit`) travels with the next sync, which may
    be a later body's statement or the COMMIT. If it fails, the server skips everything after it up to that
    sync. Each is sent on a cursor of its own, listed in `pending` with its body's position in the batch: after
    a failed sync, the first of them without a result is the one that failed (none: the statement synced, or
    the COMMIT). If that is an earlier body's, that body is the batch's `culprit` (with its error): the batch
    runs again without it, since its savepoint has been released into the others' work already.
    `at_commit`: the statements the batch's bodies left to run just before the COMMIT, by position."""

    __slots__ = ("at_commit", "conn", "culprit", "pending", "pipeline")

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], pipeline: psycopg.Pipeline) -> None:
        self.conn, self.pipeline = conn, pipeline
        self.pending: list[tuple[int, psycopg.Cursor[dict[str, Any]]]] = []
        self.at_commit: list[tuple[int, bytes | str, dict[str, Any]]] = []
        self.culprit: tuple[int, Exception] | None = None

    def send(self, position: int, sql: bytes | str, params: dict[str, Any], *, running: int | None = None) -> None:
        """Queue `sql` for body `position`, its outcome read at the next sync. `running`: the body running, if
        not that one (-1: none, the writer sends what bodies left for the commit)."""
        cur = self.conn.cursor()
        self.pending.append((position, cur))
        self.execute(position if running is None else running, cur, sql, params)

    def execute(
        self, position: int, cur: psycopg.Cursor[dict[str, Any]], sql: bytes | str, params: dict[str, Any] | None
    ) -> psycopg.Cursor[dict[str, Any]]:
        """`cur.execute` in the pipeline for body `position` (-1: the writer's own statement). psycopg reads what
        results have come back meanwhile, so a queued statement's error may surface here, as at a sync."""
        if self.culprit is not None:
            raise StorageError("the batch runs again (an earlier body's statement failed)")
        try:
            return cur.execute(sql, params)
        except psycopg.Error as exc:
            self.failed(exc, position)
            raise

    def sync(self, position: int) -> None:
        """Send what is queued and read every outcome (`position`: the body syncing). A failed statement's
        error is raised; if it was an earlier body's queued one, that body becomes the `culprit` first."""
        if self.culprit is not None:
            raise StorageError("the batch runs again (an earlier body's statement failed)")
        try:
            self.pipeline.sync()
        except psycopg.Error as exc:
            self.failed(exc, position)
            raise
        self.pending.clear()

    def failed(self, exc: psycopg.Error, position: int) -> None:
        """After `exc` came back: find whose statement it was (the `culprit`, unless `position`'s), read what
        is left of the aborted segment, and forget the pending statements."""
        owner = self.owner(exc, position)
        with contextlib.suppress(psycopg.Error):  # the error may have come before the rest of the results
            self.pipeline.sync()
        self.pending.clear()
        if owner != position:
            self.culprit = (owner, chained(exc))

    def owner(self, exc: psycopg.Error, position: int) -> int:
        """Whose statement raised `exc` at the last sync: the body of the first pending statement without a
        result, else `position`. A serialization failure, a deadlock or a lost connection is the batch's:
        `position` (the batch runs again, or fails, whoever sent it)."""
        if isinstance(exc, RETRYABLE) or self.conn.broken:
            return position
        for body, cur in self.pending:
            if cur.pgresult is None:
                return body
        return position


class PostgresTransaction:
    """`receiver.storage.base.Transaction` over a writer's cursor, inside the writer's transaction.

    A failed statement aborts PostgreSQL's transaction: the body's later statements fail too, until the body
    returns and its savepoint is rolled back. `retry` is set when a statement hit a serialization failure or a
    deadlock, which the batch answers by running again, whatever the body made of the error. `channels`: the
    LISTEN channels of the inserts that ran (`NOTIFIES`), which the writer notifies once the body committed
    (migration 0010). In a writer's batch (`unsynced`, the body's `position` in it) each statement but a queued
    one is synced (its outcome is read at once), and `at_commit` collects what the writer sends after the last
    body (`execute_at_commit`); out of a batch (`write_scrubbed`) every statement runs at once."""

    __slots__ = ("_cur", "_position", "_unsynced", "at_commit", "channels", "retry")

    def __init__(
        self, cur: psycopg.Cursor[dict[str, Any]], unsynced: Unsynced | None = None, position: int = 0
    ) -> None:
        self._cur = cur
        self._unsynced = unsynced
        self._position = position
        self.retry: Exception | None = None
        self.channels: set[str] = set()
        self.at_commit: list[tuple[str, dict[str, Any]]] = []  # for the writer to send before the COMMIT

    def _failed(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, RETRYABLE):
            self.retry = exc
        return translate(exc)

    # Each method runs its statement itself (no shared helper): this is the ingest path, once per statement.
    def execute(self, query: str, /, **params: Any) -> int:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            if self._unsynced is None:
                cur = self._cur.execute(QUERIES[query], params)
            else:
                cur = self._unsynced.execute(self._position, self._cur, QUERIES[query], params)
                self._unsynced.sync(self._position)
            return cur.rowcount
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def execute_later(self, query: str, /, **params: Any) -> None:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            if self._unsynced is not None:
                self._unsynced.send(self._position, QUERIES[query], params)
            else:
                self._cur.execute(QUERIES[query], params)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def execute_at_commit(self, query: str, /, **params: Any) -> None:
        if self._unsynced is None:
            self.execute_later(query, **params)
        else:
            self.at_commit.append((QUERIES[query], params))
            if query in NOTIFIES:
                self.channels.update(NOTIFIES[query])

    def one(self, query: str, /, **params: Any) -> Row | None:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            if self._unsynced is None:
                cur = self._cur.execute(QUERIES[query], params)
            else:
                cur = self._unsynced.execute(self._position, self._cur, QUERIES[query], params)
                self._unsynced.sync(self._position)
            return cur.fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def all(self, query: str, /, **params: Any) -> list[Row]:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            if self._unsynced is None:
                cur = self._cur.execute(QUERIES[query], params)
            else:
                cur = self._unsynced.execute(self._position, self._cur, QUERIES[query], params)
                self._unsynced.sync(self._position)
            return list(cur.fetchall())
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def value(self, query: str, /, **params: Any) -> Any:
        row = self.one(query, **params)
        return None if row is None else first_value(row)
