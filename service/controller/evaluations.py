"""Benchmark evaluations of a job's checkpoints, beside (never inside) its training.

Level-triggered like the job's own reconcile: each pass re-reads the job's evaluation rows (the
desired state: `service.evaluations.schedule` adds rows for newly chosen checkpoints) and the
backend's evaluation workloads (`kind="evaluation"`, filed by step), lets `plan` decide, and
applies the actions. One evaluation runs at a time per job, oldest step first. Everything it
writes is evaluation rows, their tokens and events: an evaluation that fails or vanishes marks
its rows failed with the reason and never moves the job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from service import evaluations, lifecycle, tokens
from service.controller.backends import Backend, PermanentBackendError, TemporaryBackendError
from service.controller.manifests import EVALUATION_WORKLOAD_KIND
from service.controller.reconcile import Phase, WorkloadStatus
from service.controller.workload import build_evaluation_workload
from service.db import repo
from service.db.models import Evaluation, EvaluationState, Job, utcnow
from service.settings import Settings
from service.spec import PRETRAIN_KIND

log = logging.getLogger(__name__)

ACTOR = "controller"
# A finished job is looked at this long after it ended: its final checkpoint is chosen then.
FINISHED_WINDOW = timedelta(days=1)
_ENDED = (Phase.SUCCEEDED, Phase.FAILED)


@dataclass(frozen=True)
class Start:
    step: int


@dataclass(frozen=True)
class Fail:
    step: int
    why: str


@dataclass(frozen=True)
class Remove:
    step: int


Action = Start | Fail | Remove


def plan(states: Mapping[int, set[str]], observed: Mapping[int, WorkloadStatus]) -> list[Action]:
    """What to do about a job's evaluations: `states` are the row states of each step, `observed`
    its evaluation workloads by step.

    A step whose workload ended without its scores (they arrive through the API before the
    workload exits) or whose running workload vanished fails; an ended workload is removed; with none running or
    starting, the oldest pending step starts.
    """
    actions: list[Action] = []
    for step, found in sorted(observed.items()):
        if found.phase not in _ENDED:
            continue
        if states.get(step, set()) & set(evaluations.OPEN_STATES):
            why = found.reason if found.phase == Phase.FAILED else None
            actions.append(Fail(step, why or "the evaluation ended without reporting its scores"))
        actions.append(Remove(step))
    for step, found_states in sorted(states.items()):
        if EvaluationState.RUNNING in found_states and step not in observed:
            actions.append(Fail(step, "the evaluation workload is gone"))
    busy = any(found.phase not in _ENDED for found in observed.values())
    pending = [
        step
        for step, found in sorted(states.items())
        if EvaluationState.PENDING in found and step not in observed  # one ended there: failed
    ]
    if not busy and pending:
        actions.append(Start(pending[0]))
    return actions


class Evaluator:
    """Schedules, runs and watches every job's evaluations; `run_once` is one pass over them."""

    def __init__(
        self, settings: Settings, backend: Backend, sessions: sessionmaker[Session]
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = sessions

    def run_once(self) -> None:
        for job_id in self._jobs():
            try:
                self.reconcile(job_id)
            except TemporaryBackendError as exc:
                log.warning("job %d: evaluations wait for the backend (%s)", job_id, exc)
            except Exception:  # one job's evaluations must not stop the others, nor training
                log.exception("job %d: evaluation pass failed", job_id)

    def _jobs(self) -> list[int]:
        """Pretraining jobs that are active, finished lately, or have evaluations under way."""
        since = utcnow() - FINISHED_WINDOW
        with self.sessions() as session:
            open_jobs = select(Evaluation.job_id).where(
                Evaluation.state.in_(evaluations.OPEN_STATES)
            )
            query = select(Job).where(
                Job.kind == PRETRAIN_KIND,
                or_(
                    Job.state.in_(lifecycle.ACTIVE_JOB_STATES),
                    Job.finished_at >= since,
                    Job.id.in_(open_jobs),
                ),
            )
            return [job.id for job in session.scalars(query) if evaluations.wants_evaluation(job)]

    def reconcile(self, job_id: int) -> None:
        with self.sessions() as session:
            job = repo.lock_job_if_free(session, job_id=job_id)
            if job is None:
                return  # the job's own reconcile holds it: next pass
            evaluations.schedule(session, job)
            rows = evaluations.list_evaluations(session, job_id=job.id)
            states: dict[int, set[str]] = {}
            for row in rows:
                states.setdefault(row.step, set()).add(row.state)
            observed = self.backend.observe(job.id, kind=EVALUATION_WORKLOAD_KIND)
            for action in plan(states, observed):
                self._apply(session, job, action)
            session.commit()

    def _apply(self, session: Session, job: Job, action: Action) -> None:
        match action:
            case Fail(step=step, why=why):
                self._fail(session, job, step, why)
            case Remove(step=step):
                self.backend.delete(job.id, step, kind=EVALUATION_WORKLOAD_KIND)
                tokens.revoke_evaluation_tokens(
                    session, job_id=job.id, step=step, actor=ACTOR, reason="evaluation ended"
                )
            case Start(step=step):
                self._start(session, job, step)

    def _start(self, session: Session, job: Job, step: int) -> None:
        rows = evaluations.step_rows(session, job_id=job.id, step=step)
        checkpoint = evaluations.checkpoint_of(session, rows)
        if checkpoint is None or checkpoint.pruned_at is not None:
            self._fail(session, job, step, f"the checkpoint of step {step} is gone")
            return
        token = tokens.mint_evaluation_token(session, job_id=job.id, step=step, actor=ACTOR)
        session.commit()  # no workload holds a token the database has not committed
        try:
            workload = build_evaluation_workload(
                job,
                step=step,
                checkpoint=checkpoint.path,
                settings=self.settings,
                ingest_token=token,
            )
            self.backend.create(workload)
        except (ValueError, PermanentBackendError) as exc:
            self._fail(session, job, step, f"cannot start the evaluation: {exc}")
            return
        evaluations.mark_running(rows)
        repo.add_event(
            session,
            kind="evaluation.started",
            actor=ACTOR,
            job_id=job.id,
            data={"step": step, "tasks": [row.task for row in rows], "checkpoint": checkpoint.path},
        )

    def _fail(self, session: Session, job: Job, step: int, why: str) -> None:
        rows = evaluations.step_rows(session, job_id=job.id, step=step)
        evaluations.mark_failed(rows, why)
        tokens.revoke_evaluation_tokens(session, job_id=job.id, step=step, actor=ACTOR, reason=why)
        repo.add_event(
            session,
            kind="evaluation.failed",
            actor=ACTOR,
            job_id=job.id,
            reason=why,
            data={"step": step},
        )
