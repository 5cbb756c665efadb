"""Settings: the embedded default needs nothing; production refuses default secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_the_embedded_sqlite_file_under_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.is_embedded
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.pretrain' / 'orchestrator.db'}"
    assert settings.redis_url is None
    assert settings.backend == "local"


def test_environment_variables_use_the_pretrain_prefix(monkeypatch):
    monkeypatch.setenv("PRETRAIN_BACKEND", "kubernetes")
    monkeypatch.setenv("PRETRAIN_NAMESPACE", "training")
    settings = Settings()
    assert (settings.backend, settings.namespace) == ("kubernetes", "training")


def test_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("PRETRAIN_BACKEND", "slurm")
    with pytest.raises(ValidationError, match="backend"):
        Settings()


@pytest.mark.parametrize("token", ["changeme", "admin", "short"])
def test_production_refuses_default_or_short_admin_tokens(token):
    with pytest.raises(ValidationError, match="production refuses it"):
        Settings(environment="production", database_url="postgresql+psycopg://db/x", admin_token=token)


def test_production_refuses_the_embedded_database():
    with pytest.raises(ValidationError, match="needs PRETRAIN_DATABASE_URL"):
        Settings(environment="production", admin_token="a-long-random-token-0123456789")


def test_production_accepts_a_real_database_and_a_strong_token():
    settings = Settings(
        environment="production",
        database_url="postgresql+psycopg://db/x",
        admin_token="a-long-random-token-0123456789",
    )
    assert not settings.is_embedded


@pytest.mark.parametrize("given", ["postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"])
def test_plain_postgres_urls_get_the_psycopg_driver(given):
    assert Settings(database_url=given).resolved_database_url == "postgresql+psycopg://u@h/db"
