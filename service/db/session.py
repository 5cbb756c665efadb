"""Engines and sessions; one engine per database URL per process.

SQLite has no row locks: a transaction that decides on what it read must hold the write lock
before it reads, or two of them read the same state and the second fails to write ("database
is locked") or, worse, acts on what the first already changed. `lock_for_write` makes the
session's transaction a `BEGIN IMMEDIATE` one at that point (pysqlite's own BEGIN is turned off
so that ours is the one that runs); on Postgres the row locks (`FOR UPDATE`) do this job.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

# Execution option read by the SQLite begin listener: take the write lock at BEGIN.
SQLITE_IMMEDIATE = "sqlite_immediate"
# session.info keys: this transaction holds SQLite's write lock (BEGIN IMMEDIATE, or it wrote).
_HOLDS_WRITE_LOCK = "holds_write_lock"


def _enable_sqlite_foreign_keys_and_wal(dbapi_connection, _record) -> None:
    # Our own BEGIN (below) instead of pysqlite's, which it would emit lazily and only before DML.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API read while the controller writes; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _begin_sqlite(connection) -> None:
    immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """A new engine for `url`, tuned for the backend it names."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys_and_wal)
        event.listen(engine, "begin", _begin_sqlite)
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
    """Make the session's transaction hold the database's write lock from here on (SQLite).

    Call it before reading what a write will be decided on. A transaction that has only read so
    far is ended first (it has nothing to lose), so the reads that follow are fresh. Postgres:
    nothing to do, the caller's `FOR UPDATE` row lock serialises.
    """
    if session.get_bind().dialect.name != "sqlite" or session.info.get(_HOLDS_WRITE_LOCK):
        return
    if session.in_transaction():
        session.commit()  # read-only so far: a transaction that wrote holds the lock already
    session.connection(execution_options={SQLITE_IMMEDIATE: True})
    session.info[_HOLDS_WRITE_LOCK] = True


@event.listens_for(Session, "after_flush")
def _flushed_writes_hold_the_write_lock(session: Session, _context) -> None:
    # SQLite: a transaction that wrote holds the write lock (or its write failed), and its
    # snapshot is the newest one (WAL refuses a write from an older one).
    session.info[_HOLDS_WRITE_LOCK] = True


@event.listens_for(Session, "after_transaction_end")
def _transaction_end_releases_the_write_lock(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_HOLDS_WRITE_LOCK, None)
