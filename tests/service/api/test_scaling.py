"""The scaling fit over HTTP: posted runs and finished jobs, 422s naming the field or the group,
a saved law, and the plan's predictions from it — on Postgres and SQLite alike."""

from __future__ import annotations

import math

import pytest

from service.db import repo
from service.db.models import Evaluation, EvaluationState, JobState, LatestMetric, utcnow
from tests.conftest import auth
from tests.service.scaling.synthetic import SCORING_SEEDS, WIDE, sweep


def sweep_rows(seed: int = SCORING_SEEDS[0], *, benchmark: bool = True) -> list[dict]:
    _, runs = sweep(seed, WIDE, benchmark=benchmark)
    return [r.model_dump(exclude_none=True) for r in runs]


def test_a_fit_over_posted_runs_answers_the_law_with_intervals(app_client, tokens):
    response = app_client.post("/v1/scaling/fit", json={"runs": sweep_rows()}, headers=auth(tokens["viewer"]))

    assert response.status_code == 200, response.text
    body = response.json()
    law = body["optimal_tokens"]
    low, high = law["ci95"]["alpha"]
    assert low < law["alpha"] < high and law["ci95"]["A"][0] < law["A"] < law["ci95"]["A"][1]
    assert len(body["groups"]) >= 3 and body["benchmark"]["accuracy"]["slope"] > 0
    assert body["source"] == "runs" and body["saved"] is None


def test_a_bad_run_is_a_422_naming_its_index_and_field(app_client, tokens):
    rows = sweep_rows()
    rows[3]["loss"] = -1.0
    response = app_client.post("/v1/scaling/fit", json={"runs": rows}, headers=auth(tokens["viewer"]))

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "runs", 3, "loss"] and "greater than 0" in problem["msg"]


def test_a_group_that_cannot_be_fitted_is_a_422_naming_it(app_client, tokens):
    rows = sweep_rows(benchmark=False)
    smallest = min(r["flops"] for r in rows)
    rows = [r for r in rows if r["flops"] != smallest] + [r for r in rows if r["flops"] == smallest][:2]
    response = app_client.post("/v1/scaling/fit", json={"runs": rows}, headers=auth(tokens["viewer"]))

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "groups", 0] and "2 distinct token counts" in problem["msg"]


def test_a_viewer_may_fit_but_not_save(app_client, tokens):
    response = app_client.post("/v1/scaling/fit?save=true", json={"runs": sweep_rows()}, headers=auth(tokens["viewer"]))
    assert response.status_code == 403


def test_without_a_saved_law_the_plan_says_none_is_fitted(app_client, tokens, tiny_spec):
    assert app_client.get("/v1/scaling/fits/current", headers=auth(tokens["viewer"])).status_code == 404
    plan = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"])).json()
    assert plan["scaling"] is None and plan["compute"]["flops_6nd"] > 0


def test_a_saved_law_puts_its_predictions_in_the_plan(app_client, tokens, tiny_spec):
    # A law fitted around the tiny spec's own budget, so the plan's C lies inside it.
    planned = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"])).json()["compute"]
    flops, tokens_trained = planned["flops_6nd"], planned["tokens"]
    rows = [
        {"params": c / (6 * d), "tokens": d, "flops": c, "loss": 3 * c**-0.02 + 0.05 * math.log(d / (0.3 * c**0.5)) ** 2}
        for c in (flops / 10, flops, flops * 10)
        for d in (0.3 * c**0.5 * k for k in (0.25, 0.5, 1, 2, 4))
    ]
    saved = app_client.post("/v1/scaling/fit?save=true", json={"runs": rows}, headers=auth(tokens["alice"]))
    assert saved.status_code == 200, saved.text
    law_id = saved.json()["saved"]["id"]

    plan = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"])).json()

    scaling = plan["scaling"]
    assert scaling["fit_id"] == law_id and scaling["flops"] == flops and scaling["tokens"] == tokens_trained
    assert scaling["optimal_tokens"] == pytest.approx(0.3 * flops**0.5, rel=1e-6)
    assert scaling["tokens_vs_optimal"] == pytest.approx(tokens_trained / (0.3 * flops**0.5), rel=1e-6)
    off = math.log(tokens_trained / (0.3 * flops**0.5))
    assert scaling["expected_loss"] == pytest.approx(3 * flops**-0.02 + 0.05 * off**2, rel=1e-6)
    assert scaling["expected_accuracy"] is None and scaling["extrapolated"] is False
    current = app_client.get("/v1/scaling/fits/current", headers=auth(tokens["viewer"])).json()
    assert current["id"] == law_id and current["created_by"] == "alice"


def test_a_fit_over_finished_jobs_reads_their_held_out_loss(app_client, tokens, session, tiny_spec):
    # Finished jobs as ingest leaves them: a stored plan and a newest eval/loss with its tokens.
    plan = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"])).json()
    truth, runs = sweep(SCORING_SEEDS[4], WIDE, benchmark=False)
    for index, run in enumerate(runs):
        job = repo.add_job(
            session, name=f"sweep-{index}", kind="pretrain", owner="alice", spec=tiny_spec, spec_hash="x",
            derived={"total_train_iters": 10}, warnings=[], plan={**plan, "compute": {**plan["compute"], "n_params_6nd": round(run.params)}},
        )  # fmt: skip
        job.state = JobState.SUCCEEDED
        session.add(LatestMetric(job_id=job.id, name="eval/loss", attempt=0, step=9, value=run.loss, tokens=round(run.tokens), created_at=utcnow()))
    repo.add_job(session, name="running", kind="pretrain", owner="alice", spec=tiny_spec, spec_hash="y", derived={}, warnings=[], plan=plan)
    silent = repo.add_job(session, name="silent", kind="pretrain", owner="alice", spec=tiny_spec, spec_hash="z", derived={}, warnings=[], plan=plan)
    silent.state = JobState.SUCCEEDED
    session.commit()

    response = app_client.get("/v1/scaling/fit", headers=auth(tokens["viewer"]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "jobs" and body["skipped"] == [{"job_id": silent.id, "reason": body["skipped"][0]["reason"]}]
    assert "held-out loss" in body["skipped"][0]["reason"]
    assert len(body["runs"]) == len(runs) and all(r["job_id"] for r in body["runs"])
    assert body["optimal_tokens"]["alpha"] == pytest.approx(truth.alpha, rel=0.02)


def test_a_fit_over_finished_jobs_predicts_the_benchmark_from_their_newest_scores(app_client, tokens, session, tiny_spec):
    # Each job scored on "mc" twice (the newest step counts) and, all but one, on "other".
    plan = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"])).json()
    truth, runs = sweep(SCORING_SEEDS[5], WIDE, benchmark=True)
    accuracy_of = {}
    for index, run in enumerate(runs):
        job = repo.add_job(
            session, name=f"scored-{index}", kind="pretrain", owner="alice", spec=tiny_spec, spec_hash="x",
            derived={"total_train_iters": 10}, warnings=[], plan={**plan, "compute": {**plan["compute"], "n_params_6nd": round(run.params)}},
        )  # fmt: skip
        job.state = JobState.SUCCEEDED
        accuracy_of[job.id] = run.accuracy
        session.add(LatestMetric(job_id=job.id, name="eval/loss", attempt=0, step=9, value=run.loss, tokens=round(run.tokens), created_at=utcnow()))
        session.add(Evaluation(job_id=job.id, step=4, task="mc", state=EvaluationState.SUCCEEDED, nll=run.nll * 3, acc_norm=0.0, acc=0.0))
        session.add(Evaluation(job_id=job.id, step=9, task="mc", state=EvaluationState.SUCCEEDED, nll=run.nll, acc_norm=run.accuracy, acc=0.0))
        if index:
            session.add(Evaluation(job_id=job.id, step=9, task="other", state=EvaluationState.SUCCEEDED, nll=1.0, acc_norm=0.5, acc=0.5))
    session.commit()
    viewer = auth(tokens["viewer"])

    ambiguous = app_client.get("/v1/scaling/fit", headers=viewer).json()
    partial = app_client.post("/v1/scaling/fit", json={"jobs": "finished", "task": "other"}, headers=viewer).json()
    chosen = app_client.post("/v1/scaling/fit", json={"jobs": "finished", "task": "mc"}, headers=viewer).json()

    assert ambiguous["benchmark"] is None
    assert any("several benchmarks (mc, other)" in w for w in ambiguous["warnings"])
    assert partial["benchmark"] is None
    assert any("no score on 'other'" in w for w in partial["warnings"])
    assert {r["job_id"]: r["accuracy"] for r in chosen["runs"]} == pytest.approx(accuracy_of)
    assert chosen["benchmark"] is not None
    assert chosen["benchmark"]["accuracy"]["slope"] == pytest.approx(truth.slope, rel=0.05)
    refused = app_client.post("/v1/scaling/fit", json={"runs": sweep_rows(), "task": "mc"}, headers=viewer)
    assert refused.status_code == 422 and "give it with" in refused.text
