"""The PostgreSQL backend: named SQL blocks, migrations under an advisory lock, group-committing writer threads,
pooled async reads, LISTEN/NOTIFY wake-ups and advisory-lock liveness.

psycopg 3 async for reads and LISTEN, its sync API on writer threads for the sync transaction bodies. A
transaction body is a plain function that never awaits (`receiver.storage.base`), so it cannot run on an
async connection without blocking the event loop; `Database.write` queues it for a few writer threads
(`writers`), each with a connection from a `psycopg_pool.ConnectionPool`. A writer takes whatever has queued
meanwhile and runs it in ONE transaction, each body in its own SAVEPOINT (one failing body rolls back only
its own work), like SQLite's group commit; a serialization failure or a deadlock anywhere in the batch rolls
the batch back and runs it again (a body may run more than once: the storage contract allows it). Reads, the
health check, LISTEN and the liveness locks use `psycopg.AsyncConnection`s (`database`; reads from a
`psycopg_pool.AsyncConnectionPool`).

Queries are the `-- name: x` blocks of `receiver/storage/sql/postgres/*.sql`, their `:name` parameters turned
into psycopg's `%(name)s` once at import (`queries`). Driver errors become the `receiver.storage.base` errors
in `driver`, with the primary message only (a DETAIL line may quote row values) and never the database URL
(it may hold a password). What the backend itself needs (advisory locks, LISTEN, savepoints, VACUUM) is SQL
of this package: it is the backend's bookkeeping, not the receiver's data.
"""

from receiver.storage.postgres.database import DEFAULT_POOL_SIZE, Database
from receiver.storage.postgres.driver import PostgresTransaction
from receiver.storage.postgres.queries import load_queries, migrations, to_pyformat
from receiver.storage.postgres.schema import MIGRATION_LOCK, migrate, open_read_only

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MIGRATION_LOCK",
    "Database",
    "PostgresTransaction",
    "load_queries",
    "migrate",
    "migrations",
    "open_read_only",
    "to_pyformat",
]
