"""Schema migrations through Alembic, callable from the CLI and tests."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from service.settings import Settings


def alembic_config(settings: Settings, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(settings.migrations_dir))
    # '%' is ConfigParser interpolation syntax; escape it so URLs with %-encoding survive.
    config.set_main_option("sqlalchemy.url", (url or settings.resolved_database_url).replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head", url: str | None = None) -> None:
    """Apply migrations up to `revision`, creating the SQLite file's folder when needed."""
    if url is None and settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings, url), revision)


def downgrade(settings: Settings, revision: str, url: str | None = None) -> None:
    command.downgrade(alembic_config(settings, url), revision)


def head_revision(settings: Settings) -> str:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
