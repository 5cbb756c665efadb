"""The watchdog with real parts: metrics through the API into Postgres and a Redis stream,
the consumer judging them, verdicts as events, and automatic rollback."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import ingest, jobs
from service.api.app import create_app
from service.db import repo
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tokens import Principal, mint_token
from service.watchdog import consumer
from tests.conftest import ADMIN_TOKEN, auth

ALICE = Principal(name="alice", role=Role.SUBMITTER)


def curve(job_id: int, *, steps: int, bad_from: int | None = None, bad_until: int | None = None, nan_at: int | None = None) -> list[dict]:
    """A gently falling loss with mild noise; `loss/zh` 60% higher over [bad_from, bad_until)."""
    records = []
    for step in range(steps):
        base = 3.0 - 0.002 * step + 0.02 * ((step * 7919) % 13 - 6) / 6
        zh = base * 1.2
        if bad_from is not None and bad_from <= step < (bad_until or steps):
            zh *= 1.6
        total = (2 * base + zh) / 3
        metrics = {"loss": total, "loss/code": base, "loss/en": base, "loss/zh": zh}
        if step == nan_at:
            metrics = {"loss": "NaN", "loss/code": "NaN", "loss/en": "NaN", "loss/zh": "NaN"}
        records.append({"job": str(job_id), "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable", "tokens": step * 2048, "metrics": metrics})
    return records


@pytest.fixture
def watched(pg_url, redis_url, tmp_path, tiny_spec):
    """A job with checkpoints every 20 steps, its token, and an API that streams to Redis."""
    import redis

    redis.Redis.from_url(redis_url).delete(consumer.STREAM)
    settings = Settings(database_url=pg_url, redis_url=redis_url, admin_token=ADMIN_TOKEN, state_dir=tmp_path)
    tiny_spec["checkpoint"]["keep_last"] = 20
    tiny_spec["watchdog"] = {"recover_window_steps": 10, "rollback_margin_steps": 5, "skip_steps_after": 15}
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        for step in range(20, 101, 20):
            ingest.record_checkpoint(session, job_id=job.id, attempt=0, step=step, tokens=step, path=f"/c/{step}", manifest_sha256=f"{step:064x}", actor="t")
        _, token = mint_token(session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job.id)
    with TestClient(create_app(settings)) as api:
        yield settings, sessions, job.id, token, api


def run_consumer(settings: Settings, until, timeout: float = 30.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(settings, stop), kwargs={"block_ms": 100})
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)


def kinds(sessions, job_id: int) -> list[str]:
    with sessions() as session:
        return [e.kind for e in repo.list_events(session, job_id=job_id, limit=1000).items]


def verdicts(sessions, job_id: int) -> list[tuple[str, str, int]]:
    """(kind, channel, step) of every verdict event."""
    with sessions() as session:
        events = repo.list_events(session, job_id=job_id, limit=1000).items
        return [(e.kind, e.data["channel"], e.data["step"]) for e in events if e.kind.startswith("verdict.")]


def post(api, job_id: int, token: str, records: list[dict]) -> None:
    for start in range(0, len(records), 25):
        response = api.post(f"/v1/jobs/{job_id}/metrics", json=records[start : start + 25], headers=auth(token))
        assert response.status_code == 202, response.text


def test_a_streamed_divergence_produces_exactly_one_rollback(watched):
    settings, sessions, job_id, token, api = watched
    post(api, job_id, token, curve(job_id, steps=110, bad_from=70))

    run_consumer(settings, until=lambda: "job.rolled_back" in kinds(sessions, job_id))

    events = kinds(sessions, job_id)
    assert events.count("verdict.divergence") >= 1
    assert events.count("job.rolled_back") == 1
    with sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        new = job.attempts[-1]
        checkpoint = session.get(type(repo.list_checkpoints(session, job_id=job_id)[0]), new.resume_from_checkpoint_id)
    assert new.reason == "rollback" and new.number == 1
    assert checkpoint.step == 60  # the newest at least 5 steps before the onset at 70
    assert new.skip_ranges == [[60, 70 + 15]]
    exported = exposed(api.get("/metrics").text)
    this = {"job_id": str(job_id), "name": "tiny-cpu"}
    assert exported[("pretrain_rollbacks_total", key(this, trigger="watchdog"))] == 1
    assert exported[("pretrain_rollbacks_total", key(this, trigger="oncall"))] == 0
    assert exported[("pretrain_verdicts_total", key(this, kind="divergence"))] >= 1
    assert exported[("pretrain_verdicts_total", key(this, kind="nonfinite"))] == 0
    assert ("pretrain_loss", key(this, channel="zh")) in exported
    assert exported[("pretrain_tokens", key(this))] == 109 * 2048  # the newest record's count
    assert ("pretrain_ingest_lag_seconds", key(this)) in exported
    assert exported[("pretrain_ingested_points_total", key({}))] >= 110 * 4


def key(labels: dict[str, str], **more: str) -> frozenset:
    return frozenset({**labels, **more}.items())


def exposed(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus exposition by (name, labels)."""
    return {
        (sample.name, key(sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_transient_spike_is_an_alert_and_no_rollback(watched):
    settings, sessions, job_id, token, api = watched
    post(api, job_id, token, curve(job_id, steps=110, bad_from=70, bad_until=73))
    run_consumer(settings, until=lambda: "verdict.spike" in kinds(sessions, job_id), timeout=15)
    time.sleep(0.5)
    events = kinds(sessions, job_id)
    assert "verdict.spike" in events
    assert "verdict.divergence" not in events and "job.rolled_back" not in events


def test_nan_rolls_back_at_once(watched):
    settings, sessions, job_id, token, api = watched
    post(api, job_id, token, curve(job_id, steps=90, nan_at=85))
    run_consumer(settings, until=lambda: "job.rolled_back" in kinds(sessions, job_id))
    events = kinds(sessions, job_id)
    assert "verdict.nonfinite" in events and events.count("job.rolled_back") == 1


def test_a_watchdog_restarted_mid_stream_emits_no_duplicate_and_misses_none(watched):
    settings, sessions, job_id, token, api = watched
    records = curve(job_id, steps=110, bad_from=70)
    post(api, job_id, token, records[:75])  # the spike has begun; the divergence is not due yet
    run_consumer(settings, until=lambda: "verdict.spike" in kinds(sessions, job_id), timeout=15)
    post(api, job_id, token, records[75:])
    run_consumer(settings, until=lambda: "job.rolled_back" in kinds(sessions, job_id))  # a new process, same state
    seen = verdicts(sessions, job_id)
    assert len(seen) == len(set(seen))  # nothing twice
    # The bad zh data lifts the total too: a spike and a divergence on each, as one clean run gives.
    assert sorted((kind, channel) for kind, channel, _ in seen) == [
        ("verdict.divergence", "all"), ("verdict.divergence", "zh"), ("verdict.spike", "all"), ("verdict.spike", "zh"),
    ]
    assert kinds(sessions, job_id).count("job.rolled_back") == 1


def test_duplicate_batches_change_nothing(watched):
    settings, sessions, job_id, token, api = watched
    records = curve(job_id, steps=110, bad_from=70)
    post(api, job_id, token, records)
    post(api, job_id, token, records)  # a trainer retrying every batch
    run_consumer(settings, until=lambda: "job.rolled_back" in kinds(sessions, job_id))
    time.sleep(0.5)
    seen = verdicts(sessions, job_id)
    assert len(seen) == len(set(seen)) == 4
    assert kinds(sessions, job_id).count("job.rolled_back") == 1


def test_without_redis_the_api_judges_records_in_process(pg_url, tmp_path, tiny_spec):
    settings = Settings(database_url=pg_url, admin_token=ADMIN_TOKEN, state_dir=tmp_path)
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
        _, token = mint_token(session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job.id)
    with TestClient(create_app(settings)) as api:
        post(api, job.id, token, curve(job.id, steps=40, nan_at=30))
    events = kinds(sessions, job.id)
    assert "verdict.nonfinite" in events


def test_a_stretch_diverging_on_several_series_is_one_rollback_and_no_refusal(watched):
    settings, sessions, job_id, token, api = watched
    post(api, job_id, token, curve(job_id, steps=110, bad_from=70))

    run_consumer(settings, until=lambda: kinds(sessions, job_id).count("verdict.divergence") >= 2)

    with sessions() as session:
        events = repo.list_events(session, job_id=job_id, limit=1000).items
        divergences = [e.reason for e in events if e.kind == "verdict.divergence"]
        assert [e.kind for e in events].count("job.rolled_back") == 1
        assert "rollback.skipped" not in [e.kind for e in events]
    assert divergences[0].endswith(": rollback")
    assert all("rollback already done (attempt 0 replaced by attempt 1)" in why for why in divergences[1:])
