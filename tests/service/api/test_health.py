"""Probes: /healthz says the process is up, /readyz that the database is reachable and migrated."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings


def test_healthz_needs_no_token(app_client):
    response = app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_is_ok_on_a_migrated_database(app_client):
    response = app_client.get("/readyz")
    assert response.status_code == 200, response.text


def test_readyz_is_503_on_an_unmigrated_database(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", state_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "pretrainctl db upgrade" in response.json()["detail"]


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    settings = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", state_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database unreachable")


def test_openapi_documents_the_job_spec_body(app_client):
    schema = app_client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert "stages" in schema["components"]["schemas"]["JobSpec"]["properties"]
