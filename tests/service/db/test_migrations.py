"""Migrations take an empty Postgres and SQLite to head and back, and match the ORM models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.db import migrate
from service.db.models import Base
from service.settings import Settings

TABLES = {"jobs", "attempts", "checkpoints", "metric_points", "events", "api_tokens", "watchdog_state"}


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
