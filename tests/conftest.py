"""Shared fixtures: real databases (Postgres and the embedded SQLite), an app, tokens per role."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.api.app import create_app
from service.db import migrate
from service.db.models import Base, Role
from service.db.session import get_engine, get_sessionmaker
from service.settings import Settings
from service.tokens import mint_token

pytest_plugins = ["tests.plugin_servers", "tests.plugin_secrets"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"

# Production is the service's default; the suite runs its apps on throwaway SQLite files and
# generated tokens, which only development allows, so it opts in here, for itself and the
# processes it starts. Tests about production ask for it by name.
os.environ["PRETRAIN_ENVIRONMENT"] = "development"
# Two workers share two cores, each starting trainers beside services: a torch process with more
# OpenMP threads than it has cores to itself spins waiting for them (a 0.3 s step took 3-7 s).
# One thread per process, unless the caller chose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    settings = Settings(database_url=postgres_url)
    migrate.downgrade(settings, "base")
    migrate.upgrade(settings)
    return settings.resolved_database_url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'orchestrator.db'}"
    migrate.upgrade(Settings(database_url=url))
    return url


def _empty_tables(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty database: real Postgres, and the embedded SQLite default."""
    url = request.getfixturevalue(f"migrated_{request.param}")
    _empty_tables(url)
    yield url
    _empty_tables(url)


@pytest.fixture
def pg_url(migrated_postgres: str) -> Iterator[str]:
    """A migrated, empty Postgres database only, for tests about Postgres behaviour."""
    _empty_tables(migrated_postgres)
    yield migrated_postgres
    _empty_tables(migrated_postgres)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        state_dir=tmp_path / "state",
        max_request_bytes=64 * 1024,
        default_page_size=20,
        max_page_size=100,
        # The 2 s default is wall-clock time: on a loaded test machine an ordinary spec can take
        # longer. The tests that are about the budget set their own.
        spec_budget_s=120,
    )


@pytest.fixture
def session(settings: Settings):
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    """One bearer token per role, plus a second submitter, by name."""
    minted = {"admin": ADMIN_TOKEN}
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for name, role in [
            ("viewer", Role.VIEWER),
            ("alice", Role.SUBMITTER),
            ("bob", Role.SUBMITTER),
            ("oncall", Role.ONCALL),
        ]:
            minted[name] = mint_token(session, name=name, role=role, created_by="test")[1]
    return minted


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tiny_spec() -> dict:
    """The tiny CPU example as a dict; tests copy and mutate it."""
    return copy.deepcopy(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules of the longest runs (marked slow) first, each module's tests kept together.

    The workers (pytest-xdist's worksteal) start on contiguous halves of this order and steal
    from each other's ends: begun early, a minute-long run cannot be what one worker still does
    while the other has nothing left.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
