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
    """A writer batch's pipeline, and whose queued statements (`Transaction.execute_later`) it carries unread.

    A queued statement travels with the next sync, which may be a later body's statement or the COMMIT. If it
    fails, the server skips everything after it up to that sync, so the statements sent after it (the savepoint
    statements that end its body, later bodies' statements) did nothing. `pending` lists, since the last sync,
    each body (its position in the batch) that queued a statement, with the cursor of the statement sent just
    after its end (the `SAVEPOINT` opening the next body, or the `COMMIT`; None while it runs): the first body
    whose end-cursor has no result is the one that failed. That body is the batch's `culprit` (its error): the
    batch runs again without it, since its savepoint has been released into the others' work already."""

    __slots__ = ("conn", "culprit", "pending", "pipeline")

    def __init__(self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline) -> None:
        self.conn, self.pipeline = conn, pipeline
        self.pending: list[tuple[int, psycopg.Cursor[Any] | None]] = []
        self.culprit: tuple[int, Exception] | None = None

    def queued(self, position: int) -> None:
        if not self.pending or self.pending[-1][0] != position:
            self.pending.append((position, None))

    def ended(self, position: int, after: psycopg.Cursor[Any]) -> None:
        """Body `position` has ended; `after` is the first statement sent after it."""
        if self.pending and self.pending[-1] == (position, None):
            self.pending[-1] = (position, after)

    def sync(self, position: int) -> None:
        """Send what is queued and read every outcome (`position`: the body syncing). A failed statement's
        error is raised; if it was an earlier body's queued one, that body becomes the `culprit` first."""
        if self.culprit is not None:
            raise StorageError("the batch runs again (an earlier body's statement failed)")
        try:
            self.pipeline.sync()
        except psycopg.Error as exc:
            owner = self.owner(exc, position)
            self.pending.clear()
            with contextlib.suppress(psycopg.Error):  # the error may have come before the sync's own result
                self.pipeline.sync()
            if owner != position:
                self.culprit = (owner, chained(exc))
            raise
        self.pending.clear()

    def owner(self, exc: psycopg.Error, position: int) -> int:
        """Whose statement raised `exc` at the last sync: the first pending body whose end-cursor has no
        result, else `position`. A serialization failure, a deadlock or a lost connection is the batch's:
        `position` (the batch runs again, or fails, whoever sent it)."""
        if isinstance(exc, RETRYABLE) or self.conn.broken:
            return position
        for body, after in self.pending:
            if after is None or after.pgresult is None:
                return body
        return position


class PostgresTransaction:
    """`receiver.storage.base.Transaction` over a writer's cursor, inside the writer's transaction.

    A failed statement aborts PostgreSQL's transaction: the body's later statements fail too, until the body
    returns and its savepoint is rolled back. `retry` is set when a statement hit a serialization failure or a
    deadlock, which the batch answers by running again, whatever the body made of the error. `channels`: the
    LISTEN channels of the inserts that ran (`NOTIFIES`), which the writer notifies once the body committed
    (migration 0010). In a writer's batch (`unsynced`, the body's `position` in it) each statement but a queued
    one is synced (its outcome is read at once); out of one (`write_scrubbed`) every statement runs at once."""

    __slots__ = ("_cur", "_position", "_unsynced", "channels", "retry")

    def __init__(
        self, cur: psycopg.Cursor[dict[str, Any]], unsynced: Unsynced | None = None, position: int = 0
    ) -> None:
        self._cur = cur
        self._unsynced = unsynced
        self._position = position
        self.retry: Exception | None = None
        self.channels: set[str] = set()

    def _failed(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, RETRYABLE):
            self.retry = exc
        return translate(exc)

    # Each method runs its statement itself (no shared helper): this is the ingest path, once per statement.
    def execute(self, query: str, /, **params: Any) -> int:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            cur = self._cur.execute(QUERIES[query], params)
            if self._unsynced is not None:
                self._unsynced.sync(self._position)
            return cur.rowcount
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def execute_later(self, query: str, /, **params: Any) -> None:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        unsynced = self._unsynced
        try:
            if unsynced is not None:
                if unsynced.culprit is not None:
                    raise StorageError("the batch runs again (an earlier body's statement failed)")
                unsynced.queued(self._position)
            self._cur.execute(QUERIES[query], params)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def one(self, query: str, /, **params: Any) -> Row | None:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            cur = self._cur.execute(QUERIES[query], params)
            if self._unsynced is not None:
                self._unsynced.sync(self._position)
            return cur.fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def all(self, query: str, /, **params: Any) -> list[Row]:
        if query in NOTIFIES:
            self.channels.update(NOTIFIES[query])
        try:
            cur = self._cur.execute(QUERIES[query], params)
            if self._unsynced is not None:
                self._unsynced.sync(self._position)
            return list(cur.fetchall())
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def value(self, query: str, /, **params: Any) -> Any:
        row = self.one(query, **params)
        return None if row is None else first_value(row)
