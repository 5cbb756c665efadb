"""The watchdog's state is bounded by the live jobs: a job that ends takes its detector, mark and
saved row with it; a paused or rolled-back job keeps them."""

from __future__ import annotations

from service import jobs
from service.attempts import pause_job
from service.db.models import Role, WatchdogState
from service.db.session import get_sessionmaker
from service.tokens import Principal
from service.watchdog.consumer import STATE_NAME, Watchdog
from tests.service.watchdog.test_consumer import ALICE, curve, kinds
from tests.service.watchdog.test_delivery import submit, with_checkpoints

ONCALL = Principal(name="carol", role=Role.ONCALL)


def saved_jobs(sessions) -> set[str]:
    """The jobs whose detector state and mark are saved."""
    prefix = f"{STATE_NAME}/job/"
    with sessions() as session:
        names = (
            session.query(WatchdogState.name).filter(WatchdogState.name.startswith(prefix)).all()
        )
    return {name.removeprefix(prefix) for (name,) in names}


def watched(watchdog: Watchdog) -> set[str]:
    return watchdog.detectors.keys() | watchdog.seen.keys()


def test_a_job_that_ends_leaves_no_state_and_live_ones_keep_theirs(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    tiny_spec["checkpoint"]["keep_last"] = 20
    ended, _ = submit(sessions, tiny_spec, "ends")
    paused, _ = submit(sessions, tiny_spec, "pauses")
    rolled_back, _ = submit(sessions, tiny_spec, "rolls-back")
    with_checkpoints(sessions, rolled_back)
    watchdog = Watchdog(sessions, forget_every_s=0)
    watchdog.process([r for job in (ended, paused) for r in curve(job, steps=30)])
    watchdog.process(curve(rolled_back, steps=40, nan_at=35))  # a NaN: rolled back to attempt 1
    assert "job.rolled_back" in kinds(sessions, rolled_back)
    everyone = {str(ended), str(paused), str(rolled_back)}
    assert watched(watchdog) == saved_jobs(sessions) == everyone

    with sessions() as session:
        jobs.cancel_job(session, job_id=ended, principal=ALICE, reason="done with it")
        pause_job(session, job_id=paused, principal=ONCALL, reason="bad shard")
    resumed = [{**record, "attempt": 1} for record in curve(rolled_back, steps=25)[20:]]
    watchdog.process(resumed)

    live = {str(paused), str(rolled_back)}
    assert watched(watchdog) == saved_jobs(sessions) == live
    assert watchdog.seen[str(rolled_back)][:2] == [1, 24]  # the resumed attempt's mark, kept
    assert (
        watchdog.detectors[str(paused)].state_dict()
        == Watchdog(sessions).detectors[str(paused)].state_dict()
    )
    assert watched(Watchdog(sessions)) == live  # a restart does not bring the ended job back


def test_forgetting_waits_for_its_interval(settings, tiny_spec):
    sessions = get_sessionmaker(settings.resolved_database_url)
    ended, _ = submit(sessions, tiny_spec, "ends-later")
    watchdog = Watchdog(sessions, forget_every_s=3600)
    watchdog.process(curve(ended, steps=5))
    with sessions() as session:
        jobs.cancel_job(session, job_id=ended, principal=ALICE, reason="done")

    other, _ = submit(sessions, tiny_spec, "other")
    watchdog.process(curve(other, steps=5))
    assert str(ended) in watched(watchdog)  # not yet: one query per interval, not per batch

    assert watchdog.forget_finished() == {str(ended)}
    assert watched(watchdog) == saved_jobs(sessions) == {str(other)}
