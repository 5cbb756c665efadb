"""A short seeded chaos run in the test suite: the whole loop with its parts killed, no violation.

`make chaos` runs a hundred trials (`bench/chaos.py`); here one fixed seed stands for them, picked
for what it does: a job with garbage data (so the watchdog rolls it back), Postgres stopped
mid-ingest and restarted, and the trainer SIGKILLed (so the controller opens a new attempt).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.trial import ChaosDeployment, Fault, TrialPlan, plan_trial, run_trial, table
from tests.e2e.stack import own_redis_database
from tests.servers import throwaway_postgres_server

REDIS_DB = 8  # the e2e tests use 7
SEED = 1011


@pytest.fixture(scope="module")
def chaos(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosDeployment]:
    # A Postgres of its own: the trial stops and starts it, which the suite's shared one must not see.
    with throwaway_postgres_server("chaos", survives_crash=True) as postgres:
        root = tmp_path_factory.mktemp("chaos")
        with ChaosDeployment(root, postgres, own_redis_database(redis_url, REDIS_DB)) as deployment:
            yield deployment


def test_the_seed_plans_a_rollback_a_postgres_restart_and_a_trainer_kill():
    assert plan_trial(SEED) == TrialPlan(
        SEED, garbage=(True,), faults=(Fault("postgres", 2.54, 1.44), Fault("trainer", 5.58, 0.92))
    )


def test_plans_are_a_function_of_the_seed():
    assert plan_trial(7) == plan_trial(7)
    assert len({plan_trial(seed) for seed in range(20)}) == 20


@pytest.mark.slow
def test_a_seeded_trial_violates_no_invariant(chaos: ChaosDeployment):
    row = run_trial(chaos, SEED)

    print(table([row]))
    assert row.violation_count == 0, table([row]) + "\n" + chaos.stack.tails()
    assert row.outcome == "succeeded"
    assert [f.split("@")[0] for f in row.faults] == ["postgres", "trainer"]
    assert not row.crashes, row.crashes


def test_logs_of_the_deployment_are_kept(chaos: ChaosDeployment):
    assert Path(chaos.stack.log_path("api")).exists()
