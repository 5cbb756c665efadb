"""Schemathesis over the published OpenAPI with every check it has (`--checks all`), on SQLite.

No generated input may cause a 5xx, and every answer must be documented: its status, content
type, headers and body schema. A bounded number of examples per operation keeps it quick;
FUZZ_CASES=500 for a deeper run (bench/api_robustness.py runs over 1,000 cases).

Every phase runs: the schema's examples, generated cases, and the coverage phase (each
boundary and each kind of wrong value the schema defines), except coverage for the two spec
bodies: their schema is the whole job spec, thousands of boundary cases that took three quarters of
this test's time. Those bodies get their generated cases here, the bench's, and the spec's
own tests of bounds, types and sizes (test_spec_bounds.py, test_spec_requests.py).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_TOKEN, _empty_tables, auth

CASES_PER_OPERATION = int(os.environ.get("FUZZ_CASES", "4"))

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
# Where a body valid by its JSON Schema may still be refused, and rightly: a spec may break a
# rule across fields (no JSON Schema says that heads divide the hidden size), and a trainer's
# report is read strictly, where a JSON Schema integer may be written `1.0`. Every other check
# holds there, and every check elsewhere.
# Runs valid one by one may still not make a fit (one budget, a group without a minimum), and a
# fit over finished jobs needs finished jobs.
LENIENT_SCHEMA = {
    "POST /v1/jobs", "POST /v1/plan", "POST /v1/jobs/{job_id}/metrics", "POST /v1/jobs/{job_id}/checkpoints",
    "POST /v1/scaling/fit", "GET /v1/scaling/fit",
}  # fmt: skip
CHECKS_BUT_POSITIVE_ACCEPTANCE = [check for check in ALL_CHECKS if check.__name__ != "positive_data_acceptance"]
SPEC_BODIES = ["POST /v1/jobs", "POST /v1/plan"]
CONFIG = SchemathesisConfig.from_dict(
    {"operations": [{"include-name": SPEC_BODIES, "phases": {"coverage": {"enabled": False}}}]}
)


@pytest.fixture
def api_schema(migrated_sqlite, tmp_path):
    _empty_tables(migrated_sqlite)
    # Generous rate: one principal sends every case, and a 429 would hide the handlers from it.
    app = create_app(
        Settings(
            database_url=migrated_sqlite,
            admin_token=ADMIN_TOKEN,
            state_dir=tmp_path,
            spec_rate_per_s=1e6,
            spec_rate_burst=1_000_000,
            spec_budget_s=120,  # wall-clock; a replayed case must meet the same answer on a busy machine
        )
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented_and_none_is_a_server_error(case):
    # The admin token opens every route, so generated inputs reach the handlers, not just auth.
    checks = CHECKS_BUT_POSITIVE_ACCEPTANCE if case.operation.label in LENIENT_SCHEMA else ALL_CHECKS
    response = case.call_and_validate(headers=auth(ADMIN_TOKEN), checks=checks)
    assert response.status_code < 500, response.text
