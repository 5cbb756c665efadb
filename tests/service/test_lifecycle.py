"""The lifecycle's tables walked whole, on each database: every allowed move moves and writes its
event; every other raises and leaves the row as it was."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
from sqlalchemy import select

from service import lifecycle, tokens
from service.db import repo
from service.db.models import (
    LIVE_NAME_STATES,
    ApiToken,
    AttemptReason,
    AttemptState,
    Event,
    Job,
    JobState,
    Role,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = itertools.count()

def job_in(session, state: JobState, attempt_state: AttemptState = AttemptState.RUNNING) -> Job:
    """A job set up in `state` (directly, as a fixture), its attempt 0 holding an ingest token."""
    job = repo.add_job(
        session,
        name=f"walk-{next(NAMES)}",  # live jobs may not share a name
        kind="pretrain",
        owner="alice",
        spec={},
        spec_hash="0" * 64,
        derived={},
        warnings=[],
    )
    attempt = repo.add_attempt(session, job=job, number=0, reason=AttemptReason.LAUNCH)
    job.state, attempt.state = state, attempt_state
    tokens.mint_token(
        session, name="ingest", role=Role.VIEWER, created_by="test", job_id=job.id, attempt=0, commit=False
    )
    session.commit()
    return job


def events_of(session, job: Job) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.job_id == job.id).order_by(Event.id)))


def token_revoked(session, job: Job) -> bool:
    return session.scalars(select(ApiToken).where(ApiToken.job_id == job.id)).one().revoked_at is not None


# One test per transition (per attempt state), each walking every state it might start from:
# a fresh job per state, on one database, is all a move needs.


@pytest.mark.parametrize("transition", lifecycle.JOB_TRANSITIONS, ids=lambda t: t.name)
def test_a_job_transition_moves_from_its_sources_and_from_no_other_state(session, transition):
    for source in JobState:
        job = job_in(session, source)
        before = len(events_of(session, job))
        if source in transition.sources:
            lifecycle.move(session, job, transition, actor="alice", reason="because", attempt=0, data={"n": 1})
        else:
            with pytest.raises(lifecycle.IllegalTransition, match=f"job {job.id} cannot .*: it is {source}"):
                lifecycle.move(session, job, transition, actor="alice", reason="because")
        session.commit()
        session.expire_all()
        job = session.get(Job, job.id)
        written = events_of(session, job)[before:]
        if source not in transition.sources:
            assert (job.state, job.state_reason, job.finished_at, written) == (source, None, None, []), source
            assert not token_revoked(session, job), source
            continue
        finished = transition.target in lifecycle.TERMINAL_JOB_STATES
        rests = transition.target in lifecycle.REASONED_JOB_STATES
        assert (job.state, job.state_reason) == (transition.target, "because" if rests else None), source
        assert (job.finished_at is not None, token_revoked(session, job)) == (finished, finished), source
        revoked = [("token.revoked", f"job {job.id} {transition.target}")] if finished else []
        assert [(e.kind, e.reason) for e in written if e.kind == "token.revoked"] == revoked, source
        told = [(e.kind, e.actor, e.attempt, e.reason, e.data) for e in written if e.kind != "token.revoked"]
        assert told == ([(transition.event, "alice", 0, "because", {"n": 1})] if transition.event else []), source


@pytest.mark.parametrize("source", list(AttemptState))
def test_an_attempt_moves_to_the_states_its_table_allows_and_to_no_other(session, source):
    for to in AttemptState:
        job = job_in(session, JobState.RUNNING, attempt_state=source)
        before = len(events_of(session, job))
        allowed = to in lifecycle.ATTEMPT_TRANSITIONS[source]
        if allowed:
            lifecycle.move_attempt(session, job, job.attempts[0], to, actor="controller", reason="because", data={"n": 1})
        else:
            with pytest.raises(lifecycle.IllegalTransition, match=f"attempt 0 of job {job.id} cannot become {to}"):
                lifecycle.move_attempt(session, job, job.attempts[0], to, actor="controller", reason="because")
        session.commit()
        session.expire_all()
        attempt = session.get(Job, job.id).attempts[0]
        written = [(e.kind, e.actor, e.attempt, e.reason, e.data) for e in events_of(session, job)[before:]]
        if not allowed:
            assert (attempt.state, attempt.state_reason, attempt.finished_at, written) == (source, None, None, []), to
            assert not token_revoked(session, job), to
            continue
        ended = to in lifecycle.TERMINAL_ATTEMPT_STATES
        assert (attempt.state, attempt.state_reason) == (to, "because"), to
        assert (attempt.started_at is not None, attempt.finished_at is not None) == (not ended, ended), to
        assert token_revoked(session, job) == ended, to
        assert written[0] == (f"attempt.{to}", "controller", 0, "because", {"n": 1}), to
        assert [kind for kind, *_ in written[1:]] == (["token.revoked"] if ended else []), to


def test_an_attempt_move_told_by_the_callers_event_writes_none_of_its_own(session):
    job = job_in(session, JobState.PENDING, attempt_state=AttemptState.PENDING)
    before = len(events_of(session, job))

    lifecycle.move_attempt(session, job, job.attempts[0], AttemptState.CANCELLED, actor="alice", event=False)
    session.commit()

    assert [e.kind for e in events_of(session, job)[before:]] == ["token.revoked"]


def test_every_job_state_is_reachable_and_only_the_terminal_ones_are_dead_ends():
    reachable, frontier = {lifecycle.INITIAL_JOB_STATE}, [lifecycle.INITIAL_JOB_STATE]
    while frontier:
        state = frontier.pop()
        for source, target, _ in lifecycle.job_edges():
            if source == state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(JobState)
    leaving = {source for source, _, _ in lifecycle.job_edges()}
    assert leaving == set(JobState) - lifecycle.TERMINAL_JOB_STATES


def test_the_controllers_finish_action_names_a_transition_for_every_state_it_can_name():
    # reconcile.FinishJob(state) names succeeded, failed, cancelled or paused.
    assert {t.value for t in lifecycle.SETTLING} == {"succeeded", "failed", "cancelled", "paused"}
    assert all(t.target == state for state, t in lifecycle.SETTLING.items())


def test_the_live_name_index_covers_exactly_the_active_states():
    # The schema spells the states out; a change to the active set needs a migration for it.
    assert f"state IN {lifecycle.ACTIVE_JOB_STATES}" == LIVE_NAME_STATES


def test_the_committed_lifecycle_doc_is_what_the_script_generates():
    spec = importlib.util.spec_from_file_location("lifecycle_diagram", ROOT / "scripts" / "lifecycle_diagram.py")
    diagram = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagram)
    assert (ROOT / "docs" / "job-lifecycle.md").read_text() == diagram.render(), (
        "docs/job-lifecycle.md is out of date: run python scripts/lifecycle_diagram.py"
    )


def test_a_queued_job_keeps_its_queues_newest_reason_and_no_other_state_takes_one(session):
    job = job_in(session, JobState.PENDING)
    lifecycle.move(session, job, lifecycle.QUEUE, actor="controller", reason="no quota", attempt=0, data={"reason": "no quota"})
    lifecycle.note_queue_reason(job, "waiting for a preemption")
    session.commit()
    assert (job.state, job.state_reason) == ("queued", "waiting for a preemption")
    assert [e.kind for e in events_of(session, job)].count("attempt.queued") == 1
    running = job_in(session, JobState.RUNNING)
    with pytest.raises(lifecycle.IllegalTransition, match="not queued"):
        lifecycle.note_queue_reason(running, "no quota")
