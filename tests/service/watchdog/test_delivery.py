"""Records reach the watchdog once, whatever happens on the way: a stream trimmed under it, Redis
restarted, a commit that fails, a process killed between storing and feeding. Postgres holds
every accepted point, and the watchdog catches up from it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from service import ingest, jobs
from service.api.app import create_app
from service.db import migrate, repo
from service.db.models import Event, Role, WatchdogState
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tokens import mint_token
from service.watchdog import consumer, history, stream
from service.watchdog.consumer import GROUP, STREAM, Watchdog
from service.watchdog.detector import Detector, Policy
from tests.conftest import ADMIN_TOKEN, auth
from tests.servers import throwaway_postgres_server
from tests.service.watchdog.test_consumer import ALICE, curve, kinds, post, verdicts


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


class Consumer:
    """`consumer.run` in a thread, as `pretrainctl watchdog run` runs it."""

    def __init__(self, settings: Settings, **options) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=consumer.run, args=(settings, self.stop), kwargs={"block_ms": 100, **options})

    def __enter__(self) -> Consumer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def saved(sessions) -> Watchdog:
    """The watchdog as a restart would find it: its committed detector and marks."""
    return Watchdog(sessions)


def judged_records(sessions) -> int:
    return saved(sessions).counts.get("records", 0)


def marked_step(sessions, job_id: int) -> int | None:
    mark = saved(sessions).seen.get(str(job_id))
    return mark[1] if mark else None


def nonfinite_at(step: int) -> list[tuple[str, str, int]]:
    """The verdicts of one NaN record: one per loss series."""
    return [("verdict.nonfinite", channel, step) for channel in ("all", "code", "en", "zh")]


def expected_verdicts(job_id: int, records: list[dict], watchdog_spec: dict) -> list[tuple[str, str, int]]:
    """What one detector, seeing the job's records once and in order, says."""
    detector = Detector(Policy.from_spec(watchdog_spec))
    return [(f"verdict.{v.kind}", v.channel, v.step) for record in records for v in detector.observe(record)]


class FailingCommits:
    """A sessionmaker whose sessions fail their next `failures` commits, as a busy SQLite or a
    restarting Postgres makes them."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self.failures = 0

    def __call__(self):
        session = self.sessions()
        commit = session.commit

        def failing_commit() -> None:
            if self.failures:
                self.failures -= 1
                session.rollback()
                raise OperationalError("COMMIT", {}, Exception("database is locked"))
            commit()

        session.commit = failing_commit
        return session


@pytest.fixture
def cluster(pg_url, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = Settings(database_url=pg_url, redis_url=redis_url, admin_token=ADMIN_TOKEN, state_dir=tmp_path)
    yield settings, get_sessionmaker(pg_url), client
    client.flushdb()


def submit(sessions, spec: dict, name: str) -> tuple[int, str]:
    """A job and its attempt-0 token, as the controller hands it to the trainer."""
    with sessions() as session:
        job = jobs.submit_job(session, raw={**spec, "name": name}, principal=ALICE)
        _, token = mint_token(session, name=f"{name}-a0", role=Role.VIEWER, created_by="test", job_id=job.id, attempt=0)
    return job.id, token


def with_checkpoints(sessions, job_id: int) -> None:
    with sessions() as session:
        for step in range(20, 101, 20):
            ingest.record_checkpoint(
                session, job_id=job_id, attempt=0, step=step, tokens=step, path=f"/c/{step}",
                manifest_sha256=f"{step:064x}", actor="t",
            )  # fmt: skip


# --- the stream and the database: nothing lost, nothing twice ---------------------------------------


def test_a_hundred_jobs_reporting_while_the_watchdog_is_down_are_each_judged_once(cluster, tiny_spec):
    settings, sessions, client = cluster
    tiny_spec["watchdog"] = {"rollback": "alert_only", "recover_window_steps": 10}
    shapes = [{}, {"nan_at": 45}, {"bad_from": 30, "bad_until": 33}, {"bad_from": 35}]
    fleet = []
    for n in range(100):
        job_id, token = submit(sessions, tiny_spec, f"fleet-{n}")
        fleet.append((job_id, token, curve(job_id, steps=60, **shapes[n % len(shapes)])))

    with TestClient(create_app(settings)) as api:  # no consumer runs meanwhile
        for job_id, token, records in fleet:
            post(api, job_id, token, records[:30])
        client.flushdb()  # Redis restarted (it keeps nothing on disk): the first half is gone
        for job_id, token, records in fleet:
            post(api, job_id, token, records[30:])
        client.xtrim(STREAM, maxlen=7)  # and the stream trimmed to its newest entries

    with Consumer(settings):
        wait_for(lambda: judged_records(sessions) == 100 * 60, "every record judged")
        wait_for(lambda: client.xinfo_groups(STREAM)[0]["lag"] == 0, "the stream read to its end")

    assert judged_records(sessions) == 100 * 60  # the stream's leftovers were not judged again
    for job_id, _, records in fleet:
        seen = verdicts(sessions, job_id)
        assert seen == expected_verdicts(job_id, records, tiny_spec["watchdog"])  # in order, none twice
    assert sum(bool(verdicts(sessions, job_id)) for job_id, _, _ in fleet) == 75


def test_a_pending_entry_trimmed_away_is_acknowledged_and_read_back_from_the_database(cluster, tiny_spec):
    settings, sessions, client = cluster
    tiny_spec["checkpoint"]["keep_last"] = 20
    job_id, token = submit(sessions, tiny_spec, "trimmed")
    with_checkpoints(sessions, job_id)
    with TestClient(create_app(settings)) as api:
        post(api, job_id, token, curve(job_id, steps=90, nan_at=85))
    stream.ensure_group(client)
    client.xreadgroup(GROUP, "watchdog-1", {STREAM: ">"}, count=2)  # handed out, then the consumer died
    client.xtrim(STREAM, maxlen=0)  # and what it was handed is gone
    client.xadd(STREAM, {"records": b"{not json"})  # and something unreadable follows

    with Consumer(settings):
        wait_for(lambda: "job.rolled_back" in kinds(sessions, job_id), "the rollback")
        wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] == 0, "nothing pending")

    assert verdicts(sessions, job_id) == nonfinite_at(85)
    assert kinds(sessions, job_id).count("job.rolled_back") == 1
    assert judged_records(sessions) == 90


def test_a_redis_restart_under_a_running_consumer_loses_no_record(cluster, tiny_spec):
    settings, sessions, client = cluster
    tiny_spec["checkpoint"]["keep_last"] = 20
    job_id, token = submit(sessions, tiny_spec, "restarted")
    with_checkpoints(sessions, job_id)
    records = curve(job_id, steps=110, nan_at=109)
    with TestClient(create_app(settings)) as api, Consumer(settings, sweep_s=3600) as running:
        post(api, job_id, token, records[:50])
        wait_for(lambda: marked_step(sessions, job_id) == 49, "the first records judged")
        with sessions() as session:  # stored, but their stream entry went down with Redis
            ingest.store_metrics(session, job_id=job_id, records=records[50:80])
        client.flushdb()
        post(api, job_id, token, records[80:])
        wait_for(lambda: "job.rolled_back" in kinds(sessions, job_id), "the rollback")
        assert running.thread.is_alive()

    assert judged_records(sessions) == 110
    assert verdicts(sessions, job_id) == nonfinite_at(109)
    assert kinds(sessions, job_id).count("job.rolled_back") == 1


def test_the_consumer_trims_only_what_every_group_consumed(cluster):
    _, _, client = cluster
    stream.ensure_group(client)
    ids = [client.xadd(STREAM, {"records": b"[]"}) for _ in range(10)]
    client.xreadgroup(GROUP, "watchdog-1", {STREAM: ">"}, count=6)
    client.xack(STREAM, GROUP, *ids[:2], ids[3])  # ids[2], ids[4], ids[5] still pending

    stream.trim_consumed(client)
    assert [entry_id for entry_id, _ in client.xrange(STREAM)] == ids[2:]

    client.xgroup_create(STREAM, "audit", id=ids[6])  # a second group, behind: it holds the rest
    client.xack(STREAM, GROUP, *ids[2:6])
    client.xreadgroup(GROUP, "watchdog-1", {STREAM: ">"})
    client.xack(STREAM, GROUP, *ids[6:])
    stream.trim_consumed(client)
    assert [entry_id for entry_id, _ in client.xrange(STREAM)] == ids[7:]

    client.xgroup_destroy(STREAM, "audit")
    stream.trim_consumed(client)
    assert client.xlen(STREAM) == 0


def test_a_batch_is_one_stream_entry_and_adding_it_trims_nothing(cluster, tiny_spec):
    settings, sessions, client = cluster
    job_id, token = submit(sessions, tiny_spec, "untrimmed")
    records = curve(job_id, steps=100)
    for start in range(0, 100, 2):
        consumer.feed(settings, records[start : start + 2])
    entries = client.xrange(STREAM)
    assert len(entries) == 50
    assert [r["step"] for _, fields in entries for r in stream._records(b"0-0", fields)] == list(range(100))


def test_a_failing_commit_leaves_the_entry_pending_and_it_is_judged_once(cluster, tiny_spec, monkeypatch):
    settings, sessions, client = cluster
    tiny_spec["checkpoint"]["keep_last"] = 20
    job_id, token = submit(sessions, tiny_spec, "failing")
    with_checkpoints(sessions, job_id)
    failing = FailingCommits(sessions)
    monkeypatch.setattr("service.db.session.get_sessionmaker", lambda _url: failing)
    with TestClient(create_app(settings)) as api, Consumer(settings, sweep_s=3600):
        wait_for(lambda: client.exists(STREAM) and client.xinfo_consumers(STREAM, GROUP), "the consumer reading")
        failing.failures = 1  # the first batch's verdicts cannot be saved
        post(api, job_id, token, curve(job_id, steps=90, nan_at=85))
        wait_for(lambda: "job.rolled_back" in kinds(sessions, job_id), "the rollback")
        wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] == 0, "nothing pending")

    assert failing.failures == 0
    assert judged_records(sessions) == 90
    assert verdicts(sessions, job_id) == nonfinite_at(85)


def test_records_stored_but_never_streamed_are_found_by_the_sweep(cluster, tiny_spec):
    settings, sessions, _ = cluster
    job_id, _ = submit(sessions, tiny_spec, "unstreamed")
    with Consumer(settings, sweep_s=0.2):
        with sessions() as session:  # the API stored them and died before adding them to the stream
            ingest.store_metrics(session, job_id=job_id, records=curve(job_id, steps=40, nan_at=35))
        wait_for(lambda: "verdict.nonfinite" in kinds(sessions, job_id), "the verdict")
    assert judged_records(sessions) == 40


# --- the embedded default: state and verdicts commit together ---------------------------------------


@pytest.fixture
def embedded(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    tiny_spec["checkpoint"]["keep_last"] = 20
    job_id, token = submit(sessions, tiny_spec, "embedded")
    with_checkpoints(sessions, job_id)
    return settings, sessions, job_id, token


def test_a_failing_commit_is_a_503_and_the_batch_sent_again_is_judged_once(embedded):
    settings, sessions, job_id, token = embedded
    records = curve(job_id, steps=40, nan_at=35)
    with TestClient(create_app(settings)) as api:
        post(api, job_id, token, records[:25])
        watchdog = consumer.in_process(api.app).get()
        watchdog.sessions = failing = FailingCommits(watchdog.sessions)
        failing.failures = 1

        refused = api.post(f"/v1/jobs/{job_id}/metrics", json=records[25:], headers=auth(token))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert watchdog.counts["records"] == 25  # back where the last commit left it
        assert "verdict.nonfinite" not in kinds(sessions, job_id)

        again = api.post(f"/v1/jobs/{job_id}/metrics", json=records[25:], headers=auth(token))  # the trainer retries
        assert again.status_code == 202 and again.json()["stored"] == 0

    assert verdicts(sessions, job_id) == nonfinite_at(35)
    assert kinds(sessions, job_id).count("job.rolled_back") == 1
    assert judged_records(sessions) == 40


def test_a_failing_commit_restores_the_detector_to_its_last_committed_state(embedded):
    _, sessions, job_id, _ = embedded
    records = curve(job_id, steps=40, nan_at=35)
    failing = FailingCommits(sessions)
    watchdog = Watchdog(failing)
    watchdog.process(records[:30])
    committed = watchdog.detectors[str(job_id)].state_dict()

    failing.failures = 1
    with pytest.raises(OperationalError):
        watchdog.process(records[30:])
    assert watchdog.detectors[str(job_id)].state_dict() == committed
    assert watchdog.seen[str(job_id)] == [0, 29, ["stable"]]

    assert {v.kind for v in watchdog.process(records[30:])} == {"nonfinite"}  # sent again: judged
    assert verdicts(sessions, job_id) == nonfinite_at(35)


def test_records_stored_by_a_process_killed_before_it_fed_the_watchdog_are_judged_at_start(embedded):
    settings, sessions, job_id, _ = embedded
    records = curve(job_id, steps=40, nan_at=35)
    with sessions() as session:  # stored; the process died before the watchdog saw them
        ingest.store_metrics(session, job_id=job_id, records=records)

    with TestClient(create_app(settings)):  # the API starts again
        pass

    assert verdicts(sessions, job_id) == nonfinite_at(35)
    assert judged_records(sessions) == 40


# --- the trainer's skipped steps -----------------------------------------------------------------------


def skipping(job_id: int) -> list[dict]:
    """Ten steps; 4 skipped for a non-finite loss, 7 for a grad-norm spike, 8 for no reason given."""
    records = curve(job_id, steps=10)
    reasons = {4: 1.0, 7: 2.0, 8: None}
    total = 0
    for record in records:
        skipped = record["step"] in reasons
        total += skipped
        record["metrics"].update({"step/skipped": float(skipped), "step/skipped_total": float(total)})
        if reasons.get(record["step"]) is not None:
            record["metrics"]["step/skip_reason"] = reasons[record["step"]]
    return records


def test_each_skipped_step_is_one_event_and_prometheus_counts_them_by_reason(embedded):
    settings, sessions, job_id, token = embedded
    with TestClient(create_app(settings)) as api:
        post(api, job_id, token, skipping(job_id))
        post(api, job_id, token, skipping(job_id))  # the trainer retried the batch
        exported = api.get("/metrics").text

    with sessions() as session:
        events = repo.job_events(session, job_id=job_id, kind="trainer.step_skipped")
        assert [e.reason for e in events] == [
            "step 4 skipped: loss or gradients not finite",
            "step 7 skipped: gradient norm spiked (z-score)",
            "step 8 skipped: no reason given",
        ]
        assert events[1].data == {"step": 7, "reason": "grad_spike", "skip_reason": 2.0, "skipped_total": 2.0, "stage": "pretrain"}
        assert {e.actor for e in events} == {"watchdog"} and {e.attempt for e in events} == {0}
    counted = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(exported)
        for sample in family.samples
        if sample.name == "pretrain_steps_skipped_total" and sample.labels["job_id"] == str(job_id)
    }
    assert counted == {"nonfinite": 1, "grad_spike": 1, "unknown": 1}


def test_a_redelivered_skip_is_still_one_event(embedded):
    _, sessions, job_id, _ = embedded
    records = skipping(job_id)
    Watchdog(sessions).process(records)
    Watchdog(sessions).process(records)  # a restarted consumer given the same entry again
    with sessions() as session:
        assert len(repo.job_events(session, job_id=job_id, kind="trainer.step_skipped")) == 3
        assert session.query(Event).filter(Event.kind.like("verdict.%")).count() == 0


# --- records back from the database ---------------------------------------------------------------------


def test_stored_records_come_back_whole_and_in_step_order_page_by_page(embedded):
    _, sessions, job_id, _ = embedded
    records = curve(job_id, steps=12, nan_at=5)
    records.insert(4, {**records[3], "phase": "eval", "metrics": {"eval/ppl": 20.0, "eval/ppl/zh": "Infinity"}})
    with sessions() as session:  # the later steps stored first: order comes from the steps
        ingest.store_metrics(session, job_id=job_id, records=records[7:])
        ingest.store_metrics(session, job_id=job_id, records=records[:7])

    pages, since = [], None
    with sessions() as session:
        while True:
            page, since = history.stored_records(session, job_id=job_id, since=since, limit=10)
            pages.append(page)
            if since is None:
                break
    assert len(pages) > 3
    assert [r for page in pages for r in page] == records  # the eval after its step's training record


def test_an_upgrade_from_one_fleet_wide_state_adopts_each_job_without_judging_it_again(embedded):
    # An upgrade guard (the code before kept one detector state for the whole fleet): what it had
    # judged is replayed silently into each job's own detector, and judging goes on from there.
    settings, sessions, job_id, token = embedded
    records = curve(job_id, steps=60, nan_at=30)
    fleet_wide = Detector()
    for record in records[:40]:
        fleet_wide.observe(record)
    with sessions() as session:
        ingest.store_metrics(session, job_id=job_id, records=records[:40])
        session.add(WatchdogState(name=consumer.STATE_NAME, state=fleet_wide.state_dict(), cursor="1-0"))
        session.commit()

    with TestClient(create_app(settings)) as api:
        assert verdicts(sessions, job_id) == []  # step 30 was judged before the upgrade
        post(api, job_id, token, [{**r, "metrics": {**r["metrics"], "loss/zh": "NaN"}} if r["step"] == 50 else r for r in records[40:]])

    assert verdicts(sessions, job_id) == [("verdict.nonfinite", "zh", 50)]
    assert judged_records(sessions) == 60
    assert marked_step(sessions, job_id) == 59


def test_a_watchdog_started_while_postgres_is_down_waits_for_it_and_judges_what_comes(redis_url, tmp_path, tiny_spec):
    with throwaway_postgres_server("watchdog_start", survives_crash=True) as postgres:
        migrate.upgrade(Settings(database_url=postgres.url))
        settings = Settings(database_url=postgres.url, redis_url=redis_url, admin_token=ADMIN_TOKEN, state_dir=tmp_path)
        sessions = get_sessionmaker(settings.resolved_database_url)
        redis.Redis.from_url(redis_url).flushdb()
        job_id, token = submit(sessions, tiny_spec, "waits")
        with_checkpoints(sessions, job_id)
        postgres.stop()
        with Consumer(settings, sweep_s=3600) as running:
            time.sleep(1.5)  # it tried, and failed, to read its state meanwhile
            assert running.thread.is_alive()
            postgres.start()
            with TestClient(create_app(settings)) as api:
                post(api, job_id, token, curve(job_id, steps=40, nan_at=39))
                wait_for(lambda: "verdict.nonfinite" in kinds(sessions, job_id), "the verdict", timeout=20)
        assert verdicts(sessions, job_id) == nonfinite_at(39)
        redis.Redis.from_url(redis_url).flushdb()
