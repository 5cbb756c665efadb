"""Settings: the embedded default needs nothing; production refuses default secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings, trainer_environment


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


def test_production_is_the_default_and_development_an_explicit_opt_in(monkeypatch):
    monkeypatch.delenv("PRETRAIN_ENVIRONMENT", raising=False)
    assert Settings(database_url="postgresql+psycopg://db/x").environment == "production"
    with pytest.raises(ValidationError, match="PRETRAIN_ENVIRONMENT=development"):
        Settings()  # the embedded SQLite file is development's
    monkeypatch.setenv("PRETRAIN_ENVIRONMENT", "development")
    assert Settings().is_embedded


@pytest.mark.parametrize(
    "given",
    [
        {"admin_token": "weak-token-4711", "database_url": "postgresql://u:db-password-4711@h/x"},
        {"admin_token": "weak-token-4711", "redis_url": "redis://h/0", "redis_password": "redis-password-4711"},
        {"admin_token": "a-long-admin-token-4711", "database_url": "sqlite:///db-password-4711.db", "api_port": "x"},
    ],
)
def test_a_settings_error_names_the_setting_and_never_shows_a_secret(given):
    with pytest.raises(ValidationError) as refused:
        Settings(environment="production", **given)
    shown = str(refused.value) + repr(refused.value)  # what `serve` and the CLI print
    assert "4711" not in shown


def test_clients_connect_with_the_redis_password_which_no_repr_shows():
    settings = Settings(redis_url="redis://cache.internal:6379/2", redis_password="p@ss/word")
    assert settings.resolved_redis_url == "redis://:p%40ss%2Fword@cache.internal:6379/2"
    assert "p@ss" not in repr(settings) and "p%40ss" not in repr(settings)
    replaced = Settings(redis_url="redis://user:old@h:6379/0", redis_password="new")
    assert replaced.resolved_redis_url == "redis://user:new@h:6379/0"
    assert Settings(redis_url="redis://h:6379/0").resolved_redis_url == "redis://h:6379/0"


def test_a_local_trainer_gets_only_its_share_of_the_environment(monkeypatch):
    monkeypatch.setenv("PRETRAIN_ADMIN_TOKEN", "admin-secret-0123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("OBJECT_STORE_KEY", "passed-on-purpose")
    env = trainer_environment({"PRETRAIN_INGEST_TOKEN": "pto_job"}, passthrough=["OBJECT_STORE_KEY"])
    assert "PRETRAIN_ADMIN_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OMP_NUM_THREADS"] == "4" and env["OBJECT_STORE_KEY"] == "passed-on-purpose"
    assert env["PRETRAIN_INGEST_TOKEN"] == "pto_job"  # given, the one PRETRAIN_ variable it gets
    assert "PATH" in env
