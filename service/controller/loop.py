"""The controller: reconcile one job at a time, level-triggered, safe to kill at any instant.

`Controller.reconcile(job_id)` re-reads the job (locking its row with SKIP LOCKED, so a second
controller on the same Postgres skips a job this one holds), asks the backend what runs,
lets `reconcile.plan` decide and applies the actions idempotently. `Controller.run` keeps a
schedule of when to look at each job again and polls the database for jobs that changed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import attempts
from service.controller import reconcile as rc
from service.controller.backends import Backend, PermanentBackendError, TemporaryBackendError
from service.controller.manifests import TokenizerWorkload, Workload
from service.controller.tokenizer_config import render_tokenizer_config
from service.controller.trainer_config import render_trainer_config
from service.db import repo
from service.db.models import (
    ACTIVE_JOB_STATES,
    AttemptReason,
    AttemptState,
    Checkpoint,
    Job,
    JobState,
    Role,
    utcnow,
)
from service.settings import Settings
from service.spec import PRETRAIN_KIND, TOKENIZER_KIND
from service.tokens import mint_token

log = logging.getLogger(__name__)

ACTOR = "controller"
MAX_BACKOFF_S = 60.0
POLL_S = 1.0
# With a live informer every change in the cluster wakes its job, so a quiet job needs only
# an occasional safety look; without one, the plan's short requeue is the only way to learn.
WATCHED_REQUEUE_S = 60.0


class Controller:
    def __init__(
        self, settings: Settings, backend: Backend, sessions: sessionmaker[Session]
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = sessions
        self._failures: dict[int, int] = {}
        self._schedule: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._last_poll = datetime.now(UTC) - timedelta(days=3650)

    # --- one job -----------------------------------------------------------------------------------

    def reconcile(self, job_id: int) -> float | None:
        """Make job `job_id` what the database says it should be; when to look again."""
        with self.sessions() as session:
            job = repo.lock_job_if_free(session, job_id=job_id)
            if job is None:
                return rc.REQUEUE_SOON_S  # another controller holds it (or it is gone)
            try:
                desired = self._desired(session, job)
                observed = rc.Observed(self.backend.observe(job_id, kind=job.kind))
                actions, requeue = rc.plan(desired, observed)
                for action in actions:
                    self._apply(session, job, action)
                session.commit()
                # The informer watches PyTorchJobs: other kinds' workloads wake no one.
                watched = job.kind == PRETRAIN_KIND and getattr(self.backend, "watching", False)
                if not actions and requeue is not None and watched:
                    requeue = max(requeue, WATCHED_REQUEUE_S)
            except TemporaryBackendError as exc:
                session.rollback()
                failures = self._failures.get(job_id, 0) + 1
                self._failures[job_id] = failures
                delay = min(MAX_BACKOFF_S, 2.0**failures)
                log.warning(
                    "job %d: backend unavailable (%s); retrying in %.0fs", job_id, exc, delay
                )
                return delay
            except PermanentBackendError as exc:
                session.rollback()
                job = repo.lock_job_if_free(session, job_id=job_id)
                if job is not None:
                    self._finish(
                        session, job, JobState.FAILED, f"backend refused the workload: {exc}"
                    )
                    session.commit()
                return None
            self._failures.pop(job_id, None)
            return requeue

    def _desired(self, session: Session, job: Job) -> rc.Desired:
        current = job.attempts[-1]
        retries = sum(1 for a in job.attempts if a.reason == AttemptReason.POD_FAILURE)
        return rc.Desired(
            job_id=job.id,
            state=job.state,
            desired_state=job.desired_state,
            attempt=current.number,
            attempt_state=current.state,
            pod_failure_retries=retries,
            max_pod_failure_retries=self.settings.max_pod_failure_retries,
            awaits_result=job.kind == TOKENIZER_KIND and job.result is None,
        )

    def _apply(self, session: Session, job: Job, action: rc.Action) -> None:
        match action:
            case rc.CreateWorkload(attempt=number):
                workload = self._workload(session, job, number)
                if self.backend.create(workload):
                    repo.add_event(
                        session, kind="workload.created", actor=ACTOR, job_id=job.id, attempt=number
                    )
            case rc.DeleteWorkload(attempt=number, why=why):
                if self.backend.delete(job.id, number, kind=job.kind):
                    repo.add_event(
                        session,
                        kind="workload.deleted",
                        actor=ACTOR,
                        job_id=job.id,
                        attempt=number,
                        reason=why,
                    )
            case rc.RecordAttempt(attempt=number, state=state, reason=reason):
                attempt = next(a for a in job.attempts if a.number == number)
                attempt.state = state
                attempt.state_reason = reason
                if state == AttemptState.RUNNING:
                    attempt.started_at = attempt.started_at or utcnow()
                    if job.state in (JobState.PENDING, JobState.RUNNING):
                        job.state = JobState.RUNNING
                else:
                    attempt.finished_at = utcnow()
                repo.add_event(
                    session,
                    kind=f"attempt.{state}",
                    actor=ACTOR,
                    job_id=job.id,
                    attempt=number,
                    reason=reason,
                )
            case rc.OpenAttempt(reason=reason, why=why):
                resume = repo.newest_good_checkpoint(session, job_id=job.id)
                attempts.open_attempt(
                    session,
                    job=job,
                    reason=AttemptReason(reason),
                    actor=ACTOR,
                    why=why,
                    resume_from=resume,
                )
                job.state = JobState.PENDING
            case rc.FinishJob(state=state, reason=reason):
                self._finish(session, job, JobState(state), reason)

    def _finish(self, session: Session, job: Job, state: JobState, reason: str) -> None:
        job.state = state
        job.state_reason = reason
        if state.is_terminal:
            job.finished_at = utcnow()
        repo.add_event(
            session, kind=f"job.{state.value}", actor=ACTOR, job_id=job.id, reason=reason
        )

    def _workload(self, session: Session, job: Job, number: int) -> Workload | TokenizerWorkload:
        attempt = next(a for a in job.attempts if a.number == number)
        resume_from = None
        if attempt.resume_from_checkpoint_id is not None:
            resume_from = session.get(Checkpoint, attempt.resume_from_checkpoint_id).path
        # A fresh token per attempt: the workload's Secret is the only place it exists in clear.
        _, token = mint_token(
            session,
            name=f"job-{job.id}-a{number}",
            role=Role.VIEWER,
            created_by=ACTOR,
            job_id=job.id,
            attempt=number,
            commit=False,
        )
        resources = job.spec["resources"]
        if job.kind == TOKENIZER_KIND:
            return TokenizerWorkload(
                job_id=job.id,
                job_name=job.name,
                attempt=number,
                tokenizer_config=render_tokenizer_config(
                    job_id=job.id, job_name=job.name, spec=job.spec, settings=self.settings
                ),
                ingest_token=token,
                ingest_url=self.settings.ingest_url,
                cpu=resources["cpu"],
                memory_gib=resources["memory_gib"],
            )
        return Workload(
            job_id=job.id,
            job_name=job.name,
            attempt=number,
            trainer_config=render_trainer_config(
                job_id=job.id,
                job_name=job.name,
                spec=job.spec,
                derived=job.derived,
                plan=job.plan,
                attempt=number,
                resume_from=resume_from,
                skip_ranges=attempt.skip_ranges,
                lr_scale=attempt.lr_scale,
                ingest_token=token,
                settings=self.settings,
            ),
            ingest_token=token,
            nodes=resources["nodes"],
            gpus_per_node=resources["gpus_per_node"],
            gpu_type=resources["gpu_type"],
        )

    # --- the loop ----------------------------------------------------------------------------------

    def notify(self, job_id: int, delay: float = 0.0) -> None:
        """Look at `job_id` within `delay` seconds (sooner if it is already due sooner)."""
        when = time.monotonic() + delay
        with self._lock:
            if self._due.get(job_id, float("inf")) <= when:
                return
            self._due[job_id] = when
            heapq.heappush(self._schedule, (when, job_id))
        if delay <= 0:
            self._wake.set()

    def run_once(self) -> int:
        """Poll for changed jobs, reconcile every job that is due; how many were reconciled."""
        self._poll_changes()
        done = 0
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._schedule or self._schedule[0][0] > now:
                    break
                when, job_id = heapq.heappop(self._schedule)
                if self._due.get(job_id) != when:
                    continue  # superseded by an earlier or later notify
                del self._due[job_id]
            requeue = self.reconcile(job_id)
            done += 1
            if requeue is not None:
                self.notify(job_id, requeue)
        return done

    def run(self, stop: threading.Event) -> None:
        """Reconcile until `stop` is set."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # one bad job must not stop the controller
                log.exception("reconcile pass failed")
            # A notify for "now" (an API change, a watch event) ends the pause early.
            self._wake.wait(self._next_pause())
            self._wake.clear()

    def _next_pause(self) -> float:
        with self._lock:
            soonest = self._schedule[0][0] - time.monotonic() if self._schedule else POLL_S
        return max(0.0, min(POLL_S, soonest))

    def _poll_changes(self) -> None:
        since = self._last_poll - timedelta(seconds=2)  # clock skew between writers
        self._last_poll = datetime.now(UTC)
        with self.sessions() as session:
            query = select(Job.id).where(Job.updated_at >= since, Job.state.in_(ACTIVE_JOB_STATES))
            for job_id in session.scalars(query):
                self.notify(job_id)


def backend_for(settings: Settings) -> Backend:
    """The backend the settings name: local processes, or PyTorchJobs on Kubernetes."""
    if settings.backend == "kubernetes":
        from service.controller.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_environment(settings)
    from service.controller.backends.local import LocalBackend

    return LocalBackend(settings.state_dir.resolve() / "workloads")


def start_in_background(settings: Settings) -> tuple[Controller, threading.Event, threading.Thread]:
    """The embedded default's controller: a daemon thread beside the API."""
    from service.db.session import get_sessionmaker

    controller = Controller(
        settings, backend_for(settings), get_sessionmaker(settings.resolved_database_url)
    )
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), name="controller", daemon=True)
    thread.start()
    return controller, stop, thread
