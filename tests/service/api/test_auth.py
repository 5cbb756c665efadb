"""Bearer tokens and roles: 401 without a valid token, 403 for a role that may not act."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.db.models import ApiToken, Event
from tests.conftest import ADMIN_TOKEN, auth


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs/1"),
        ("post", "/v1/jobs/1/cancel"),
        ("get", "/v1/jobs/1/events"),
        ("get", "/v1/tokens"),
        ("get", "/v1/whoami"),
    ],
)
def test_requests_without_a_token_get_401(app_client, method, path):
    response = getattr(app_client, method)(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_unknown_token_gets_401(app_client):
    response = app_client.get("/v1/jobs", headers=auth("pto_not-a-real-token"))
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked token"


def test_a_viewer_may_read_but_not_submit(app_client, tokens, tiny_spec):
    assert app_client.get("/v1/jobs", headers=auth(tokens["viewer"])).status_code == 200
    response = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["viewer"]))
    assert response.status_code == 403
    assert "needs submitter" in response.json()["detail"]


def test_only_admins_manage_tokens(app_client, tokens):
    for name in ("viewer", "alice", "oncall"):
        assert app_client.get("/v1/tokens", headers=auth(tokens[name])).status_code == 403
        created = app_client.post("/v1/tokens", json={"name": "x", "role": "admin"}, headers=auth(tokens[name]))
        assert created.status_code == 403


def test_admin_mints_a_token_that_works_and_is_stored_hashed(app_client, session):
    response = app_client.post("/v1/tokens", json={"name": "carol", "role": "submitter"}, headers=auth(ADMIN_TOKEN))
    assert response.status_code == 201
    secret = response.json()["token"]
    assert secret.startswith("pto_")

    whoami = app_client.get("/v1/whoami", headers=auth(secret)).json()
    assert whoami == {"name": "carol", "role": "submitter"}
    stored = session.scalars(select(ApiToken).where(ApiToken.name == "carol")).one()
    assert secret not in (stored.token_hash, stored.prefix)
    assert session.scalars(select(Event.kind)).all() == ["token.created"]


def test_a_revoked_token_gets_401(app_client, tokens):
    created = app_client.post("/v1/tokens", json={"name": "dave", "role": "viewer"}, headers=auth(ADMIN_TOKEN)).json()
    assert app_client.get("/v1/jobs", headers=auth(created["token"])).status_code == 200
    revoked = app_client.delete(f"/v1/tokens/{created['id']}", headers=auth(ADMIN_TOKEN))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert app_client.get("/v1/jobs", headers=auth(created["token"])).status_code == 401


def test_revoking_an_unknown_token_is_404(app_client):
    response = app_client.delete("/v1/tokens/999", headers=auth(ADMIN_TOKEN))
    assert response.status_code == 404
    assert response.json()["detail"] == "token 999 not found"


@pytest.mark.parametrize("body", [{"name": "x", "role": "root"}, {"name": "", "role": "viewer"}, {"role": "viewer"}, {"name": "a b", "role": "viewer"}])
def test_token_creation_refuses_bad_fields(app_client, body):
    response = app_client.post("/v1/tokens", json=body, headers=auth(ADMIN_TOKEN))
    assert response.status_code == 422


def test_token_listing_never_shows_secrets(app_client, tokens):
    listing = app_client.get("/v1/tokens", headers=auth(ADMIN_TOKEN))
    assert listing.status_code == 200
    body = listing.text
    for secret in (tokens["alice"], tokens["viewer"]):
        assert secret not in body
    assert {t["name"] for t in listing.json()} >= {"alice", "bob", "viewer", "oncall"}


def test_no_error_response_carries_the_admin_token(app_client, settings, tiny_spec, tmp_path):
    """4xx and 5xx answers to requests that carry the admin token (or one a byte off) never echo
    it, in the body or a header; the secret watch (tests/plugin_secrets.py) checks the logs."""
    admin = auth(ADMIN_TOKEN)
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=admin).json()["id"]
    assert app_client.post(f"/v1/jobs/{job}/cancel", headers=admin).status_code == 200
    broken = TestClient(create_app(settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'unmigrated.db'}"})), raise_server_exceptions=False)
    answers = {
        401: app_client.get("/v1/jobs", headers=auth(ADMIN_TOKEN + "x")),
        404: app_client.get("/v1/jobs/999999", headers=admin),
        409: app_client.post(f"/v1/jobs/{job}/cancel", headers=admin),
        413: app_client.post("/v1/plan", content=b"x" * (settings.max_request_bytes + 1), headers=admin),
        422: app_client.post("/v1/jobs", json={**tiny_spec, "nodes": -1}, headers=admin),
        500: broken.get("/v1/jobs", headers=admin),
    }
    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        assert ADMIN_TOKEN not in response.text + str(response.headers), status
