"""Races on real Postgres: two submissions of one name, two cancels of one job; exactly one wins."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from service import jobs
from service.db.models import Event, Job, Role
from service.db.session import get_sessionmaker
from service.errors import Conflict
from service.tokens import Principal

ALICE = Principal(name="alice", role=Role.SUBMITTER)
ONCALL = Principal(name="oncall", role=Role.ONCALL)


def race(url: str, action, contenders: int = 4) -> list[object]:
    """Run `action(session)` from several threads released at once; collect results or errors."""
    barrier = threading.Barrier(contenders)
    outcomes: list[object] = []

    def run() -> None:
        with get_sessionmaker(url)() as session:
            barrier.wait()
            try:
                outcomes.append(action(session))
            except Conflict as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_concurrent_submissions_of_one_name_store_exactly_one(pg_url, tiny_spec):
    outcomes = race(pg_url, lambda s: jobs.submit_job(s, raw=tiny_spec, principal=ALICE))

    winners = [o for o in outcomes if isinstance(o, Job)]
    losers = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(winners) == 1 and len(losers) == 3
    assert all(f"job {winners[0].id}" in str(exc) for exc in losers)
    with get_sessionmaker(pg_url)() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Event)) == 1


@pytest.mark.parametrize("contenders", [2, 4])
def test_concurrent_cancels_cancel_once(pg_url, tiny_spec, contenders):
    with get_sessionmaker(pg_url)() as session:
        job_id = jobs.submit_job(session, raw=tiny_spec, principal=ALICE).id

    outcomes = race(pg_url, lambda s: jobs.cancel_job(s, job_id=job_id, principal=ONCALL, reason=None), contenders)

    assert sum(isinstance(o, Job) for o in outcomes) == 1
    assert sum(isinstance(o, Conflict) for o in outcomes) == contenders - 1
    with get_sessionmaker(pg_url)() as session:
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)).all()
    assert kinds == ["job.submitted", "job.cancelled"]
