"""Pytest plugin: session-scoped ``postgres_url`` and ``redis_url`` fixtures.

Register it from tests/conftest.py with ``pytest_plugins = ["tests.plugin_servers"]``.

Each fixture yields ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set, else
the URL of a throwaway server (see tests/servers.py). Servers are started
lazily, by the first test that asks for the fixture, and stopped at the end
of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import provide_postgres, provide_redis


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a real Postgres database, e.g.
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/pretrain_test``."""
    with provide_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server, e.g. ``redis://127.0.0.1:PORT/0``."""
    with provide_redis() as url:
        yield url
