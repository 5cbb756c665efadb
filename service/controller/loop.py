"""The controller: reconcile one job at a time, level-triggered, safe to kill at any instant.

`Controller.reconcile(job_id)` re-reads the job (locking its row with SKIP LOCKED, so a second
controller on the same Postgres skips a job this one holds), asks the backend what runs,
lets `reconcile.plan` decide and applies the actions idempotently. `Controller.run` keeps a
schedule of when to look at each job again and polls the database for jobs that changed.
A running pretraining attempt's progress (its newest step, how long ago) is part of the desired
state read each pass, so `plan` finds a stall as it finds everything else (`stall.py` says why
the check lives here).

Starting an attempt is two passes: the first mints the attempt's ingest token and commits it;
the second (at once) creates the workload holding it. The plaintext lives only in this
process's memory until the workload holds it; a controller restarted in between mints another
(and, once its workload is created, revokes the unused one). So wherever the controller is
killed, a workload only ever holds a token the database accepts, and the backends' create is
create-if-absent (a second call adopts what the first made).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import attempts, checkpoints, lifecycle, tokens
from service.checkpoints import CheckpointStorage, Rejection
from service.controller import reconcile as rc
from service.controller import stall
from service.controller.backends import Backend, PermanentBackendError, TemporaryBackendError
from service.controller.evaluations import Evaluator
from service.controller.trainer_config import termination_grace_s
from service.controller.workload import build_workload
from service.db import repo
from service.db.models import (
    ApiToken,
    Attempt,
    AttemptReason,
    AttemptState,
    Checkpoint,
    DesiredState,
    Job,
    JobState,
    Role,
)
from service.errors import Conflict
from service.settings import Settings
from service.spec import BATCH_KINDS, PRETRAIN_KIND
from service.tokens import mint_token
from service.watchdog.rollback import RollbackRequest, roll_back

log = logging.getLogger(__name__)

ACTOR = "controller"
MAX_BACKOFF_S = 60.0
POLL_S = 1.0
# How often every job's benchmark evaluations are looked at (they never hurry training).
EVALUATION_POLL_S = 2.0
# With a live informer every change in the cluster wakes its job, so a quiet job needs only
# an occasional safety look; without one, the plan's short requeue is the only way to learn.
WATCHED_REQUEUE_S = 60.0
# A pass that minted a token is followed by one that creates the workload; two is enough.
MAX_PASSES = 2
_PASS_AGAIN = object()


class _Next(enum.Enum):
    """What a reconcile pass does after applying an action."""

    GO_ON = "go on"  # apply the next action
    COMMIT_AND_PASS_AGAIN = "commit, then plan again"  # a token was minted: commit it first
    STOP = "stop"  # the job was settled otherwise (it failed); the rest of the plan is moot


class Controller:
    def __init__(
        self, settings: Settings, backend: Backend, sessions: sessionmaker[Session]
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = sessions
        # Where this process can check a checkpoint on disk before an attempt resumes from it.
        self.storage = CheckpointStorage.from_settings(settings)
        self._failures: dict[int, int] = {}
        self._schedule: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._last_poll = datetime.now(UTC) - timedelta(days=3650)
        # (job, attempt) -> (token id, plaintext): the only place an ingest token is in clear
        # before its workload holds it. A restarted controller lacks it and mints another.
        self._tokens: dict[tuple[int, int], tuple[int, str]] = {}
        # Benchmark evaluations of the jobs' checkpoints, in workloads of their own.
        self.evaluator = Evaluator(settings, backend, sessions)
        self._last_evaluation = -EVALUATION_POLL_S

    # --- one job -----------------------------------------------------------------------------------

    def reconcile(self, job_id: int) -> float | None:
        """Make job `job_id` what the database says it should be; when to look again.

        A pass that mints an attempt's token commits it before anything holds it, then the next
        pass (at once) creates the workload with it: no workload ever holds a token the database
        has not committed, wherever the controller is killed.
        """
        for _ in range(MAX_PASSES):
            requeue = self._reconcile_pass(job_id)
            if requeue is not _PASS_AGAIN:
                return requeue
        return rc.REQUEUE_SOON_S

    def _reconcile_pass(self, job_id: int) -> float | None | object:
        with self.sessions() as session:
            job = repo.lock_job_if_free(session, job_id=job_id)
            if job is None:
                return rc.REQUEUE_SOON_S  # another controller holds it (or it is gone)
            self._forget_tokens_of_other_attempts(job)
            try:
                desired = self._desired(session, job)
                observed = rc.Observed(self.backend.observe(job_id, kind=job.kind))
                actions, requeue = rc.plan(desired, observed)
                next_step = _Next.GO_ON
                for action in actions:
                    next_step = self._apply(session, job, action)
                    if next_step is not _Next.GO_ON:
                        break
                session.commit()
                if next_step is _Next.COMMIT_AND_PASS_AGAIN:
                    return _PASS_AGAIN
                if next_step is _Next.STOP:
                    return None
                # The informer watches PyTorchJobs: other kinds' workloads wake no one.
                watched = job.kind == PRETRAIN_KIND and getattr(self.backend, "watching", False)
                if not actions and requeue is not None and watched:
                    requeue = max(requeue, WATCHED_REQUEUE_S)
                if requeue is not None and desired.progress is not None:
                    # A stall changes nothing in the cluster, so no watch event wakes it: look
                    # again by the time the running attempt would have stalled.
                    left = desired.progress.timeout_s - desired.progress.idle_s
                    requeue = min(requeue, max(rc.REQUEUE_SOON_S, left))
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
                # A finished job (one whose workload could not be deleted) stays as it finished.
                if job is not None and not lifecycle.is_terminal(job.state):
                    self._fail(session, job, f"backend refused the workload: {exc}")
                    session.commit()
                return None
            self._failures.pop(job_id, None)
            return requeue

    def _desired(self, session: Session, job: Job) -> rc.Desired:
        current = job.attempts[-1]
        # Preemptions and stalls are the cluster's doing, not the run's: neither counts here.
        retries = sum(1 for a in job.attempts if a.reason == AttemptReason.POD_FAILURE)
        progress = None
        if job.kind == PRETRAIN_KIND and current.state == AttemptState.RUNNING:
            progress = stall.measure(
                session,
                job,
                current,
                floor_s=self.settings.stall_timeout_floor_s,
                startup_s=self.settings.stall_startup_s,
                grace_s=termination_grace_s(job),
            )
        return rc.Desired(
            job_id=job.id,
            state=job.state,
            desired_state=job.desired_state,
            attempt=current.number,
            attempt_state=current.state,
            pod_failure_retries=retries,
            max_pod_failure_retries=self.settings.max_pod_failure_retries,
            awaits_result=job.kind in BATCH_KINDS and job.result is None,
            queue_reason=job.state_reason if job.state == JobState.QUEUED else None,
            progress=progress,
            stall_restarts=sum(1 for a in job.attempts if a.reason == AttemptReason.STALL),
            max_stall_restarts=job.watchdog.max_stall_restarts,
        )

    def _apply(self, session: Session, job: Job, action: rc.Action) -> _Next:
        match action:
            case rc.CreateWorkload(attempt=number):
                return self._create_workload(session, job, _attempt(job, number))
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
            case rc.RecordAttempt(attempt=number, state=state, reason=reason, outcome=told):
                attempt = _attempt(job, number)
                if state == AttemptState.RUNNING:
                    if job.state in (JobState.PENDING, JobState.QUEUED):
                        lifecycle.move(session, job, lifecycle.START, actor=ACTOR)
                    lifecycle.move_attempt(
                        session, job, attempt, AttemptState.RUNNING, actor=ACTOR, reason=reason
                    )
                else:
                    attempts.end_attempt(
                        session,
                        job=job,
                        attempt=attempt,
                        state=AttemptState(state),
                        actor=ACTOR,
                        reason=reason,
                        outcome=told.outcome.value if told else None,
                        data={"outcome": told.as_event_data()} if told else None,
                    )
            case rc.RecordQueued(attempt=number, reason=reason):
                self._record_queued(session, job, number, reason)
            case rc.RecordStall():
                stall.record(session, job, action, self.backend, actor=ACTOR)
            case rc.OpenAttempt(reason=reason, why=why):
                self._open_attempt(session, job, AttemptReason(reason), why)
            case rc.RollBack(attempt=number, onset_step=onset, why=why):
                self._roll_back(session, job, number, onset, why)
            case rc.RefuseCheckpoint(attempt=number, path=path, why=why):
                return self._refuse_checkpoint(session, job, _attempt(job, number), path, why)
            case rc.FinishJob(state=state, reason=reason):
                self._finish(session, job, JobState(state), reason)
        return _Next.GO_ON

    # --- launching ---------------------------------------------------------------------------------

    def _create_workload(self, session: Session, job: Job, attempt: Attempt) -> _Next:
        if not self._resume_checkpoint_holds(session, job, attempt):
            return _Next.STOP
        resume_from = None
        if attempt.resume_from_checkpoint_id is not None:
            resume_from = session.get(Checkpoint, attempt.resume_from_checkpoint_id).path
        try:
            # No token yet: it is minted below, once the workload is known to render.
            workload = build_workload(job, attempt, self.settings, resume_from=resume_from)
        except ValueError as exc:  # permanent: the same job renders the same way next time
            raise PermanentBackendError(f"cannot render the workload: {exc}") from exc
        held = self._ingest_token(session, job, attempt)
        if held is None:
            return _Next.COMMIT_AND_PASS_AGAIN
        token_id, token = held
        created = self.backend.create(dataclasses.replace(workload, ingest_token=token))
        # A call that created the workload and then failed (a timeout on what came after, a
        # kill) never wrote its event; the call that finds it there writes it, once.
        recorded = any(
            event.attempt == attempt.number
            for event in repo.job_events(session, job_id=job.id, kind="workload.created")
        )
        if created or not recorded:
            repo.add_event(
                session,
                kind="workload.created",
                actor=ACTOR,
                job_id=job.id,
                attempt=attempt.number,
                data={} if created else {"adopted": True},
            )
        if created:
            # The workload holds this token; any other minted for the attempt (by a controller
            # killed before it could create, or one racing us) is of no use to anyone.
            tokens.revoke_attempt_tokens(
                session,
                job_id=job.id,
                attempt=attempt.number,
                actor=ACTOR,
                reason="superseded by the token the workload was created with",
                keep=token_id,
            )
        return _Next.GO_ON

    def _ingest_token(self, session: Session, job: Job, attempt: Attempt) -> tuple[int, str] | None:
        """The attempt's token if this controller minted it and it still counts; else mint one
        now (None: it must be committed before any workload may hold it)."""
        key = (job.id, attempt.number)
        held = self._tokens.get(key)
        if held is not None:
            stored = session.get(ApiToken, held[0])
            if stored is not None and stored.revoked_at is None:
                return held
        token, value = mint_token(
            session,
            name=f"job-{job.id}-a{attempt.number}",
            role=Role.VIEWER,
            created_by=ACTOR,
            job_id=job.id,
            attempt=attempt.number,
            commit=False,
        )
        self._tokens[key] = (token.id, value)
        return None

    def _forget_tokens_of_other_attempts(self, job: Job) -> None:
        current = job.attempts[-1].number if job.attempts else None
        for key in [k for k in self._tokens if k[0] == job.id and k[1] != current]:
            del self._tokens[key]

    def _resume_checkpoint_holds(self, session: Session, job: Job, attempt: Attempt) -> bool:
        """Check the attempt's resume checkpoint on disk (where this process can) before launch.

        One that is missing or does not match its manifest is marked unusable and the attempt
        resumes from the next older good one instead, keeping its skip ranges and LR scale; with
        none left, the attempt and the job fail. False when the job failed.
        """
        if self.storage is None or attempt.resume_from_checkpoint_id is None:
            return True
        checkpoint = session.get(Checkpoint, attempt.resume_from_checkpoint_id)
        problem = self.storage.problem(checkpoint)
        if problem is None:
            return True
        checkpoints.mark_unusable(checkpoint, problem)
        rejected = [Rejection(checkpoint.id, checkpoint.step, checkpoint.path, problem)]
        older = checkpoints.choose(
            session, job_id=job.id, before_step=checkpoint.step, storage=self.storage, rejected=rejected
        )
        if older is None:
            self._fail(
                session,
                job,
                f"attempt {attempt.number} cannot resume: its checkpoint at step {checkpoint.step} "
                f"is {problem}, and no intact checkpoint is left",
            )
            return False
        attempt.resume_from_checkpoint_id = older.id
        repo.add_event(
            session,
            kind="attempt.resume_changed",
            actor=ACTOR,
            job_id=job.id,
            attempt=attempt.number,
            reason=f"checkpoint at step {checkpoint.step} is {problem}: resuming from step "
            f"{older.step} instead",
            data={
                "from": {"checkpoint_id": checkpoint.id, "step": checkpoint.step, "path": checkpoint.path},
                "to": {"checkpoint_id": older.id, "step": older.step, "path": older.path},
                "passed_over": [r.as_event_data() for r in rejected],
            },
        )
        return True

    # --- while an attempt runs --------------------------------------------------------------------

    def _record_queued(self, session: Session, job: Job, number: int, reason: str | None) -> None:
        """The job waits in its queue: queued with the queue's reason (`attempt.queued`, once per
        attempt); a queued job whose reason changed keeps the newest."""
        if job.state == JobState.QUEUED:
            lifecycle.note_queue_reason(job, reason)
        elif job.state == JobState.PENDING:
            lifecycle.move(
                session, job, lifecycle.QUEUE, actor=ACTOR, reason=reason, attempt=number,
                data={"reason": reason},
            )  # fmt: skip

    # --- after an attempt ends ---------------------------------------------------------------------

    def _open_attempt(self, session: Session, job: Job, reason: AttemptReason, why: str) -> None:
        rejected: list[Rejection] = []
        resume = checkpoints.choose(session, job_id=job.id, storage=self.storage, rejected=rejected)
        if rejected:
            why += "; passed over " + "; ".join(f"step {r.step} ({r.reason})" for r in rejected)
        attempts.open_attempt(
            session, job=job, reason=reason, actor=ACTOR, why=why, resume_from=resume
        )
        lifecycle.move(session, job, lifecycle.RETRY, actor=ACTOR, reason=why)

    def _roll_back(
        self, session: Session, job: Job, number: int, onset: int | None, why: str
    ) -> None:
        """The trainer diverged: the rollback a watchdog divergence gets, by the same policy.

        Never a failed job: where no rollback is possible (policy alert_only, no checkpoint
        early enough), the job pauses for a person.
        """
        policy = job.watchdog
        if policy.rollback != "auto":
            self._pause_for_a_person(session, job, f"{why}; watchdog.rollback is {policy.rollback}")
            return
        if onset is None:
            onset = max((c.step for c in repo.list_checkpoints(session, job_id=job.id)), default=0)
        request = RollbackRequest(
            onset_step=onset,
            reason=AttemptReason.ROLLBACK,
            why=why,
            actor=ACTOR,
            expected_attempt=number,
            evidence={"trainer_outcome": "diverged", "onset": onset},
        )
        try:
            roll_back(session, job_id=job.id, request=request, storage=self.storage, commit=False)
        except Conflict as exc:
            self._pause_for_a_person(session, job, f"{why}; cannot roll back: {exc}")

    def _refuse_checkpoint(
        self, session: Session, job: Job, attempt: Attempt, path: str | None, why: str
    ) -> _Next:
        """The trainer refused its resume checkpoint: never offer it again; resume from an older
        good one with the same skip ranges and LR scale, or fail if none is left."""
        stored = repo.list_checkpoints(session, job_id=job.id)
        refused = [c for c in stored if path is not None and c.path == path]
        if not refused and attempt.resume_from_checkpoint_id is not None:
            refused = [c for c in stored if c.id == attempt.resume_from_checkpoint_id]
        for checkpoint in refused:
            checkpoints.mark_unusable(checkpoint, f"corrupt: refused by attempt {attempt.number}'s trainer")
        before = min((c.step for c in refused), default=None)
        rejected: list[Rejection] = []
        older = checkpoints.choose(
            session, job_id=job.id, before_step=before, storage=self.storage, rejected=rejected
        )
        if older is None and refused:
            self._finish(session, job, JobState.FAILED, f"{why}; no intact checkpoint is left to resume from")
            return _Next.STOP
        if rejected:
            why += "; passed over " + "; ".join(f"step {r.step} ({r.reason})" for r in rejected)
        attempts.open_attempt(
            session, job=job, reason=AttemptReason.BAD_CHECKPOINT, actor=ACTOR, why=why, resume_from=older
        )
        lifecycle.move(session, job, lifecycle.RETRY, actor=ACTOR, reason=why)
        return _Next.GO_ON

    def _pause_for_a_person(self, session: Session, job: Job, reason: str) -> None:
        job.desired_state = DesiredState.PAUSED
        repo.add_event(
            session,
            kind="job.needs_attention",
            actor=ACTOR,
            job_id=job.id,
            attempt=job.attempts[-1].number,
            reason=f"{reason}: paused for a person",
        )

    def _fail(self, session: Session, job: Job, reason: str) -> None:
        """The current attempt cannot run: it fails, and the job with it."""
        current = job.attempts[-1]
        if current.state not in lifecycle.TERMINAL_ATTEMPT_STATES:
            attempts.end_attempt(
                session, job=job, attempt=current, state=AttemptState.FAILED, actor=ACTOR, reason=reason
            )
        self._finish(session, job, JobState.FAILED, f"attempt {current.number}: {reason}")

    def _finish(self, session: Session, job: Job, state: JobState, reason: str) -> None:
        lifecycle.move(session, job, lifecycle.SETTLING[state], actor=ACTOR, reason=reason)

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
        """Poll for changed jobs, reconcile every job that is due, and look at evaluations when
        their turn comes; how many jobs were reconciled."""
        self._poll_changes()
        if time.monotonic() - self._last_evaluation >= EVALUATION_POLL_S:
            self._last_evaluation = time.monotonic()
            self.evaluator.run_once()
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
            try:
                requeue = self.reconcile(job_id)
            except Exception:  # the database busy, a bug: look again later, never forget the job
                failures = self._failures.get(job_id, 0) + 1
                self._failures[job_id] = failures
                requeue = min(MAX_BACKOFF_S, 2.0**failures)
                log.exception("job %d: reconcile failed; trying again in %.0fs", job_id, requeue)
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
        """Notify the active jobs changed since the last poll that succeeded. The mark moves only
        once a poll has read them: a poll that fails (Postgres restarting) is asked again, so a
        freshly started controller never loses the jobs it has not seen yet."""
        since = self._last_poll - timedelta(seconds=2)  # clock skew between writers
        polled_at = datetime.now(UTC)
        with self.sessions() as session:
            query = select(Job.id).where(Job.updated_at >= since, Job.state.in_(lifecycle.ACTIVE_JOB_STATES))
            changed = list(session.scalars(query))
        self._last_poll = polled_at
        for job_id in changed:
            self.notify(job_id)


def _attempt(job: Job, number: int) -> Attempt:
    return next(a for a in job.attempts if a.number == number)


def backend_for(settings: Settings) -> Backend:
    """The backend the settings name: local processes, or PyTorchJobs on Kubernetes."""
    if settings.backend == "kubernetes":
        from service.controller.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_environment(settings)
    from service.controller.backends.local import LocalBackend

    return LocalBackend(settings.state_dir.resolve() / "workloads", passthrough_env=settings.trainer_passthrough_env)

