"""The suite's Postgres and Redis fixtures give working servers."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests import servers

# Registered here too so this file works on its own; pytest loads a plugin once
# however many places name it.
pytest_plugins = ["tests.plugin_servers"]


def _engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # a bare TEST_DATABASE_URL
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed)


@pytest.mark.postgres
def test_postgres_round_trip(postgres_url: str) -> None:
    assert make_url(postgres_url).get_backend_name() == "postgresql"
    engine = _engine(postgres_url)
    table = f"servers_check_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
            assert version >= 120000
            conn.execute(
                sa.text(f"CREATE TABLE {table} (id serial PRIMARY KEY, name text NOT NULL)")
            )
            conn.execute(
                sa.text(f"INSERT INTO {table} (name) VALUES (:n)"), [{"n": "a"}, {"n": "b"}]
            )
        with engine.begin() as conn:
            names = conn.execute(sa.text(f"SELECT name FROM {table} ORDER BY id")).scalars().all()
            assert names == ["a", "b"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_redis_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"servers-check:{uuid.uuid4().hex}"
    try:
        assert client.ping()
        assert client.set(key, "value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
        client.close()


def _refuse_to_start():
    raise AssertionError("a throwaway server was started although the env URL is set")


def test_provide_postgres_uses_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://someone:secret@db.example:6543/elsewhere?sslmode=require"
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    monkeypatch.setattr(servers, "throwaway_postgres", _refuse_to_start)
    with servers.provide_postgres() as got:
        assert got == url


def test_provide_redis_uses_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://cache.example:7000/3"
    monkeypatch.setenv("TEST_REDIS_URL", url)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # not under xdist
    monkeypatch.setattr(servers, "throwaway_redis", _refuse_to_start)
    with servers.provide_redis() as got:
        assert got == url


@pytest.mark.parametrize("variable", ["TEST_DATABASE_URL", "TEST_REDIS_URL"])
def test_one_env_server_for_several_xdist_workers_is_refused_saying_how_to_run(monkeypatch, variable):
    monkeypatch.setenv(variable, "redis://cache.example:7000/3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(servers, "throwaway_postgres", _refuse_to_start)
    monkeypatch.setattr(servers, "throwaway_redis", _refuse_to_start)
    provide = servers.provide_postgres if variable == "TEST_DATABASE_URL" else servers.provide_redis
    with pytest.raises(servers.ServerStartError, match="TEST_WORKERS=0"), provide():
        pass


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _our_throwaway_dirs() -> set[Path]:
    """Throwaway server directories of this process (other test runs may be going on)."""
    base = Path(servers._base_tmpdir())
    return {
        d
        for d in base.glob("pretrain-test-*")
        if servers._read_pid(d / servers._OWNER_FILE) == os.getpid()
    }


def test_throwaway_redis_is_gone_afterwards() -> None:
    # No redis-server is a failure that says how to get one (make test installs it), not a skip.
    servers.find_redis_server()
    before = _our_throwaway_dirs()
    with servers.throwaway_redis() as url:
        port = redis.connection.parse_url(url)["port"]
        assert _port_open(port)
        assert len(_our_throwaway_dirs() - before) == 1
    assert not _port_open(port)
    assert _our_throwaway_dirs() == before
