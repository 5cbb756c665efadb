"""/metrics from the database: per-job series for live jobs, counters that start at zero."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlalchemy.engine import Engine

from service import ingest, jobs
from service.db import repo
from service.db.models import AttemptReason, Role
from service.db.session import get_sessionmaker
from service.observability import VERDICT_KINDS, exposition
from service.tokens import Principal
from service.watchdog.rollback import RollbackRequest, roll_back

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


def scrape_statements(sessions) -> tuple[list[str], dict[tuple[str, frozenset], float]]:
    """The SQL one scrape runs (in this thread; background threads are not counted), and its samples."""
    statements: list[str] = []
    me = threading.get_ident()

    def note(_conn, _cursor, statement, *_args) -> None:
        if threading.get_ident() == me:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", note)
    try:
        exported = samples(sessions)
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    return statements, exported


def only_goodput_lookups(statements: list[str]) -> bool:
    """Points are read only by goodput's lookups: index seeks for an attempt's first and last step
    (LIMIT 1), and the job's checkpoint save and load timings by name (a few per checkpoint)."""
    reads = [statement for statement in statements if "metric_points" in statement]
    return all("LIMIT" in statement or "metric_points.name IN" in statement for statement in reads)


def test_a_scrape_reads_no_series_of_metric_points_and_its_queries_do_not_grow_with_them(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    tiny_spec["stages"][0]["tokens"] *= 40  # room for 6,400 steps
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        ingest.store_metrics(session, job_id=job.id, records=[record(job.id, s, loss=3.0, **{"loss/zh": 3.5}) for s in range(5)])
    few, before = scrape_statements(sessions)
    with sessions() as session:
        for start in range(5, 3005, 500):
            batch = [record(job.id, s, loss=3.0 - s / 10_000, **{"loss/zh": 3.5}) for s in range(start, start + 500)]
            ingest.store_metrics(session, job_id=job.id, records=batch)
    many, after = scrape_statements(sessions)

    assert few and many == few  # the same queries, whether 10 points are stored or 6,010
    assert only_goodput_lookups(many)
    this = frozenset({"job_id": str(job.id), "name": "tiny-cpu"}.items())
    assert before[("pretrain_step", this)] == 4 and after[("pretrain_step", this)] == 3004
    assert after[("pretrain_loss", this | {("channel", "all")})] == 3.0 - 3004 / 10_000
    assert after[("pretrain_tokens", this)] == 300_400


def test_after_a_rollback_the_new_attempt_is_the_newest_even_at_an_earlier_step(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=20, tokens=2000, path="/c/20", manifest_sha256="0" * 64, actor="t")
        ingest.store_metrics(session, job_id=job.id, records=[record(job.id, s, loss=9.0, **{"eval/ppl": 90.0}) for s in range(30, 41)])
        request = RollbackRequest(onset_step=35, reason=AttemptReason.ONCALL, why="test", actor="carol")
        assert roll_back(session, job_id=job.id, request=request).attempt == 1
        ingest.store_metrics(session, job_id=job.id, records=[record(job.id, s, attempt=1, loss=2.0) for s in range(21, 26)])
        # A retried attempt-0 batch cannot arrive now (superseded); an older attempt-1 one changes nothing.
        ingest.store_metrics(session, job_id=job.id, records=[record(job.id, 21, attempt=1, loss=2.0)])

    exported = samples(sessions)
    this = frozenset({"job_id": str(job.id), "name": "tiny-cpu"}.items())
    assert exported[("pretrain_loss", this | {("channel", "all")})] == 2.0
    assert exported[("pretrain_tokens", this)] == 2500  # the new attempt's, though its step is earlier
    # eval/ppl has no attempt-1 point yet: its newest is attempt 0's, as before the summary table.
    assert exported[("pretrain_eval_ppl", this | {("channel", "all")})] == 90.0


def test_tokens_consumed_per_channel_and_what_the_plan_expected_by_then(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        other = jobs.submit_job(session, raw={**tiny_spec, "name": "quiet"}, principal=ALICE)  # reports nothing
        ingest.store_metrics(session, job_id=job.id, records=[
            record(job.id, 8, loss=3.0, **{"data/tokens/code": 7000.0, "data/tokens/en": 7400.0}),
            record(job.id, 9, loss=3.0, **{"data/tokens/code": 8000.0, "data/tokens/en": 8500.0, "data/tokens/zh": 4000.0}),
        ])  # fmt: skip
    statements, exported = scrape_statements(sessions)

    assert only_goodput_lookups(statements)
    this = {"job_id": str(job.id), "name": "tiny-cpu"}
    consumed = {labels: value for (name, labels), value in exported.items() if name == "pretrain_data_tokens"}
    assert consumed == {frozenset({**this, "channel": c}.items()): v for c, v in (("code", 8000), ("en", 8500), ("zh", 4000))}
    planned = {dict(labels)["channel"]: value for (name, labels), value in exported.items() if name == "pretrain_data_tokens_planned"}
    assert planned == {"code": 10 * 2048 * 0.4, "en": 10 * 2048 * 0.4, "zh": 10 * 2048 * 0.2}  # steps 0..9
    assert not [labels for (name, labels), _ in exported.items() if ("job_id", str(other.id)) in labels and "data" in name]


def test_a_live_job_exports_its_progress_eta_and_goodput(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        total, began = job.derived["total_train_iters"], job.created_at.timestamp()
        ingest.store_metrics(session, job_id=job.id, records=[
            record(job.id, step, loss=3.0, **{"throughput/step_time_s": 0.001, "time/step_end_s": began + 0.001 * (step + 1)})
            for step in range(10)
        ])  # fmt: skip
    time.sleep(max(0.0, began + 0.02 - time.time()))  # the steps are over when /metrics is read

    exported = samples(sessions)

    this = frozenset({"job_id": str(job.id), "name": "tiny-cpu"}.items())
    assert exported[("pretrain_progress_ratio", this)] == 10 / total
    assert exported[("pretrain_eta_seconds", this)] == pytest.approx((total - 10) * 0.001)
    split = {dict(labels)["category"]: value for (name, labels), value in exported.items() if name == "pretrain_goodput_seconds"}
    assert set(split) == {"productive", "lost", "checkpoint", "stalled", "queued", "startup", "other"}
    # Instants near 1.7e9 s are exact to about 2e-7 s in a float.
    assert split["productive"] == pytest.approx(0.010, abs=1e-6)
    assert exported[("pretrain_goodput_ratio", this)] == pytest.approx(split["productive"] / sum(split.values()), rel=1e-4)
