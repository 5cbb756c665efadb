"""/metrics from the database: per-job series for live jobs, counters that start at zero."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service import ingest, jobs
from service.db import repo
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.observability import VERDICT_KINDS, exposition
from service.tokens import Principal

ALICE = Principal(name="alice", role=Role.SUBMITTER)


def samples(sessions) -> dict[tuple[str, frozenset], float]:
    text = exposition(sessions).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def record(job_id: int, step: int, attempt: int = 0, **metrics) -> dict:
    return {"job": str(job_id), "attempt": attempt, "step": step, "tokens": step * 100, "metrics": metrics}


def test_per_job_series_are_labelled_by_id_and_name_and_leave_with_the_job(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        ingest.store_metrics(session, job_id=job.id, records=[
            record(job.id, 10, **{"loss": 3.0, "loss/zh": 3.5, "throughput/mfu": 0.4}),
            record(job.id, 10, **{"eval/ppl": 20.0, "eval/ppl/zh": 30.0, "eval/loss": 3.0}),
            record(job.id, 12, loss=2.9),
        ])  # fmt: skip
        repo.add_event(session, kind="verdict.spike", actor="watchdog", job_id=job.id, attempt=0)
        session.commit()
        this = {"job_id": str(job.id), "name": "tiny-cpu"}

        def key(**more: str) -> frozenset:
            return frozenset({**this, **more}.items())

        exported = samples(sessions)
        assert exported[("pretrain_loss", key(channel="all"))] == 2.9
        assert exported[("pretrain_eval_ppl", key(channel="all"))] == 20.0
        assert exported[("pretrain_eval_ppl", key(channel="zh"))] == 30.0
        assert exported[("pretrain_train_metric", key(metric="throughput/mfu"))] == 0.4
        assert ("pretrain_train_metric", key(metric="eval/loss")) not in exported
        assert exported[("pretrain_step", key())] == 12
        assert exported[("pretrain_tokens", key())] == 1200
        assert exported[("pretrain_verdicts_total", key(kind="spike"))] == 1
        assert all(exported[("pretrain_verdicts_total", key(kind=kind))] == 0 for kind in VERDICT_KINDS if kind != "spike")
        assert exported[("pretrain_rollbacks_total", key(trigger="watchdog"))] == 0
        assert exported[("pretrain_rollbacks_total", key(trigger="oncall"))] == 0

        jobs.cancel_job(session, job_id=job.id, principal=ALICE, reason="done here")
    after = samples(sessions)
    assert not [name for name, labels in after if ("job_id", str(job.id)) in labels]
    assert after[("pretrain_jobs", frozenset({"state": "cancelled"}.items()))] == 1
