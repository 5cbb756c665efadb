"""Migrations take an empty Postgres and SQLite to head and back, and match the ORM models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from service.db import migrate
from service.db.models import Base
from service.settings import Settings

TABLES = {"jobs", "attempts", "checkpoints", "metric_points", "latest_metrics", "events", "api_tokens", "watchdog_state", "scaling_fits"}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request, postgres_url, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    postgres_url = Settings(database_url=postgres_url).resolved_database_url
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS migration_check"))
        connection.execute(text("CREATE DATABASE migration_check"))
    yield postgres_url.rsplit("/", 1)[0] + "/migration_check"
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS migration_check WITH (FORCE)"))
    admin.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_to_head_then_downgrade_to_base(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings)
    assert _tables(empty_database) == TABLES

    migrate.downgrade(settings, "base")
    assert _tables(empty_database) == set()

    migrate.upgrade(settings)
    assert _tables(empty_database) == TABLES


def test_migrated_schema_matches_the_models(empty_database):
    migrate.upgrade(Settings(database_url=empty_database))
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def _job_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def _execute(url: str, query: str):
    """Run one statement in its own transaction; the first value of a query's first row."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(query))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def test_0003_gives_existing_jobs_an_empty_result_and_downgrading_keeps_the_jobs(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0002")
    _execute(
        empty_database,
        "INSERT INTO jobs (name, kind, owner, state, desired_state, spec, spec_hash, derived, "
        "warnings, created_at, updated_at) VALUES ('before', 'pretrain', 'alice', 'succeeded', "
        "'running', '{}', 'h', '{}', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    )

    migrate.upgrade(settings, "0003")
    assert "result" in _job_columns(empty_database)
    assert _execute(empty_database, "SELECT count(*) FROM jobs WHERE result IS NULL") == 1

    migrate.downgrade(settings, "0002")
    assert "result" not in _job_columns(empty_database)
    assert _execute(empty_database, "SELECT name FROM jobs") == "before"
    # The partial unique index on live names survives the round trip.
    migrate.upgrade(settings)
    live = (
        "INSERT INTO jobs (name, kind, owner, state, desired_state, spec, spec_hash, derived, "
        "warnings, created_at, updated_at) VALUES ('live', 'tokenizer', 'alice', 'pending', "
        "'running', '{}', 'h', '{}', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    _execute(empty_database, live)
    with pytest.raises(IntegrityError):
        _execute(empty_database, live)


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_0004_scopes_tokens_to_attempts_and_downgrading_keeps_the_rows(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0003")
    _execute(
        empty_database,
        "INSERT INTO api_tokens (name, role, token_hash, prefix, created_by, created_at) "
        "VALUES ('alice', 'viewer', 'h', 'pto_x', 'admin', CURRENT_TIMESTAMP)",
    )

    migrate.upgrade(settings, "0004")
    assert "attempt" in _columns(empty_database, "api_tokens")
    assert "unusable_reason" in _columns(empty_database, "checkpoints")
    assert "outcome" in _columns(empty_database, "attempts")
    # An existing token stays job-wide (no attempt).
    assert _execute(empty_database, "SELECT count(*) FROM api_tokens WHERE attempt IS NULL") == 1

    migrate.downgrade(settings, "0003")
    assert "attempt" not in _columns(empty_database, "api_tokens")
    assert "outcome" not in _columns(empty_database, "attempts")
    assert _execute(empty_database, "SELECT name FROM api_tokens") == "alice"


def test_0006_stores_existing_specs_as_version_1_and_downgrading_keeps_the_jobs(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0005")
    _execute(
        empty_database,
        "INSERT INTO jobs (name, kind, owner, state, desired_state, spec, spec_hash, derived, "
        "warnings, created_at, updated_at) VALUES ('before', 'pretrain', 'alice', 'succeeded', "
        "'running', '{}', 'h', '{}', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    )

    migrate.upgrade(settings, "0006")
    assert _execute(empty_database, "SELECT spec_version FROM jobs WHERE name = 'before'") == 1

    migrate.downgrade(settings, "0005")
    assert "spec_version" not in _job_columns(empty_database)
    assert _execute(empty_database, "SELECT name FROM jobs") == "before"


def test_0007_keeps_each_jobs_newest_point_per_metric_and_downgrading_drops_only_that(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0006")
    _execute(
        empty_database,
        "INSERT INTO jobs (id, name, kind, owner, state, desired_state, spec, spec_hash, derived, "
        "warnings, created_at, updated_at) VALUES (7, 'before', 'pretrain', 'alice', 'running', "
        "'running', '{}', 'h', '{}', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    )
    # Attempt 1 (after a rollback) at step 5 is newer than attempt 0 at step 9, whatever the ids.
    for attempt, step, value in ((1, 5, 2.5), (0, 8, 3.0), (0, 9, 3.1), (1, 4, 2.6)):
        _execute(
            empty_database,
            "INSERT INTO metric_points (job_id, attempt, step, name, value, tokens, created_at) "
            f"VALUES (7, {attempt}, {step}, 'loss', {value}, {step * 10}, CURRENT_TIMESTAMP)",
        )

    migrate.upgrade(settings, "0007")
    newest = "SELECT attempt || '/' || step || '/' || value || '/' || tokens FROM latest_metrics WHERE job_id = 7"
    assert _execute(empty_database, newest) in ("1/5/2.5/50", "1/5/2.5e0/50")
    assert _execute(empty_database, "SELECT count(*) FROM latest_metrics") == 1

    migrate.downgrade(settings, "0006")
    assert "latest_metrics" not in _tables(empty_database)
    assert _execute(empty_database, "SELECT count(*) FROM metric_points") == 4
