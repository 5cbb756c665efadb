"""Engines and sessions; one engine per database URL per process.

SQLite has no row locks: a transaction that decides on what it read must hold the write lock
before it reads, or two of them read the same state and the second fails to write ("database
is locked", a unique violation) or acts on what the first already changed. `lock_for_write`
begins the session's database transaction with `BEGIN IMMEDIATE` at that point; on Postgres the
row locks (`FOR UPDATE`) do this job. pysqlite keeps its own habit otherwise (reads outside a
transaction, a BEGIN before the first write), so reading sessions never hold a stale snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def _enable_sqlite_foreign_keys_and_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API read while the controller writes; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A new engine for `url`, tuned for the backend it names."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys_and_wal)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process's shared engine for `url`."""
    return make_engine(url)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def session_scope(url: str) -> Iterator[Session]:
    """Yield a session that is always closed; callers commit what they mean to keep."""
    with get_sessionmaker(url)() as session:
        yield session


def lock_for_write(session: Session) -> None:
    """Make the session's database transaction hold the write lock from here on (SQLite).

    Call it before reading what a write will be decided on. On SQLite a transaction that has
    written holds the lock already; otherwise (pysqlite ran the reads so far outside one) it
    begins one now with `BEGIN IMMEDIATE`, waiting its turn (busy_timeout), and the reads that
    follow see every write committed before. Postgres: nothing to do, the caller's row lock
    serialises.
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if not raw.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
