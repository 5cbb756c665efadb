"""Schemathesis over the published OpenAPI, against real Postgres: no input may cause a 5xx."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_TOKEN, auth

CASES_PER_OPERATION = int(os.environ.get("FUZZ_CASES", "25"))  # FUZZ_CASES=500 for a deeper run


@pytest.fixture
def api_schema(pg_url, tmp_path):
    app = create_app(Settings(database_url=pg_url, admin_token=ADMIN_TOKEN, state_dir=tmp_path))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_causes_a_server_error(case):
    # The admin token opens every route, so generated inputs reach the handlers, not just auth.
    response = case.call(headers=auth(ADMIN_TOKEN))
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
