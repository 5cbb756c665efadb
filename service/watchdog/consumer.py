"""The watchdog: every metric record through the detector, every verdict an event, and a
rollback when the job's policy says `auto`.

Records reach it from the ingest route: in-process on the embedded default (one watchdog per
API app), or through one Redis stream that all jobs share (`pretrain:metrics`, consumer group
`watchdog`, see `stream.py`) in a cluster. Each record is judged once: the watchdog remembers,
per job, the newest (attempt, step) it judged and the phases judged at that step, and passes
over anything at or before it (a redelivered entry, a retried batch, a late arrival). That
mark, the job's detector state and the verdicts' events commit in one transaction, before the
stream entry is acknowledged; when the transaction fails, the detectors go back to what the
last commit saved and the records are taken again (the entry stays pending, or the ingest
request answers 503 and the trainer sends it again). One detector per job: a batch saves the
state of the jobs it touched, not of every job watched, and a job's state goes when it ends.

Postgres holds every point the API accepted, so whenever the stream may have lost records (at
start-up, an entry that was trimmed, a Redis restart, a process killed between storing and
feeding, and every `SWEEP_S` anyway) the watchdog catches up: it rebuilds the records past its
mark of every live job from the stored points, in step order, and judges them first.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis
from sqlalchemy import delete, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db import repo
from service.db.models import AttemptReason, Job, WatchdogState
from service.errors import Conflict, NotFound
from service.lifecycle import ACTIVE_JOB_STATES
from service.settings import Settings
from service.tasks import Notifier, notifier_for
from service.watchdog import history, stream
from service.watchdog.detector import Detector, Policy, Verdict
from service.watchdog.rollback import RollbackRequest, roll_back
from service.watchdog.stream import GROUP, STREAM

__all__ = ["GROUP", "STREAM", "Watchdog", "WatchdogUnavailable", "feed", "run"]

log = logging.getLogger(__name__)

STATE_NAME = "default"
ACTOR = "watchdog"
# Records judged per transaction while catching up from the database.
CATCH_UP_RECORDS = 5_000
# Even with nothing said to be lost, the cluster consumer checks the database this often: an API
# process killed between storing a batch and adding it to the stream leaves no other trace.
SWEEP_S = 30.0
# A job that ended (succeeded, failed, cancelled) reports no more: at most this long after its
# end, the next batch judged lets go of its detector, mark and row, so the watchdog's state is
# bounded by the live jobs, not by every job it ever watched.
FORGET_EVERY_S = SWEEP_S
# Stream entries (ingest batches) per read, and acknowledged entries between trims.
READ_COUNT = 64
TRIM_EVERY = 1_000

# The trainer's report of an optimizer step it skipped (1.0), why, and how many so far.
STEP_SKIPPED = "step/skipped"
STEP_SKIP_REASON = "step/skip_reason"
STEP_SKIPPED_TOTAL = "step/skipped_total"
SKIP_REASONS = {1: "nonfinite", 2: "grad_spike"}
SKIP_REASON_TEXT = {
    "nonfinite": "loss or gradients not finite",
    "grad_spike": "gradient norm spiked (z-score)",
    "unknown": "no reason given",
}


class WatchdogUnavailable(Exception):
    """The watchdog cannot take records now; they are stored, so sending them again is safe."""


class Watchdog:
    """Judges records with one detector per job, so saving what a batch changed costs what the
    batch touched, not every job watched: a job's detector state and mark are one row of
    `watchdog_state` (`<name>/job/<id>`); the watchdog's own row keeps the stream cursor."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        name: str = STATE_NAME,
        on_rollback: Callable[[int], None] | None = None,
        forget_every_s: float = FORGET_EVERY_S,
    ) -> None:
        self.sessions = sessions
        self.forget_every_s = forget_every_s
        self._next_forget = time.monotonic() + forget_every_s
        self.name = name
        self.on_rollback = on_rollback or (lambda _job_id: None)
        self._lock = threading.RLock()  # records arrive from several request threads
        self._prefix = f"{name}/job/"
        with self.sessions() as session:
            saved = session.get(WatchdogState, name)
            rows = session.scalars(select(WatchdogState).where(WatchdogState.name.startswith(self._prefix, autoescape=True)))
            # What each job's detector and mark were at their last commit: a failure goes back here.
            self._committed: dict[str, dict[str, Any]] = {row.name.removeprefix(self._prefix): row.state for row in rows}
            self.cursor = saved.cursor if saved else None
            # A whole-fleet detector state saved before per-job rows: its jobs are adopted silently.
            self._adopting = bool(saved and saved.state and not self._committed)
        self.detectors: dict[str, Detector] = {}
        self.seen: dict[str, list[Any]] = {}
        self._restore(set(self._committed))
        # Until it has caught up with the database, records may exist that it never received.
        self.behind = True

    @property
    def counts(self) -> dict[str, int]:
        """The detectors' counters, summed over jobs."""
        total: dict[str, int] = {}
        for detector in self.detectors.values():
            for key, value in detector.counts.items():
                total[key] = total.get(key, 0) + value
        return total

    def _policy(self, job: str) -> Policy:
        with self.sessions() as session:
            found = session.get(Job, int(job)) if job.isdigit() else None
            return Policy.from_spec(found.watchdog) if found else Policy()

    def _detector(self, job: str) -> Detector:
        detector = self.detectors.get(job)
        if detector is None:
            detector = self.detectors[job] = Detector(self._policy)
        return detector

    def _restore(self, jobs: set[str]) -> None:
        """`jobs` back to their last committed state: what was judged since is judged again."""
        for job in jobs:
            committed = self._committed.get(job)
            if committed is None:
                self.detectors.pop(job, None)
                self.seen.pop(job, None)
            else:
                self.detectors[job] = Detector.from_state(committed["detector"], self._policy)
                self.seen[job] = copy.deepcopy(committed["mark"])

    def process(self, records: Iterable[Mapping[str, Any]], cursor: str | None = None) -> list[Verdict]:
        """Judge the records not judged before, act on verdicts, and save the state (with the
        stream cursor) in one transaction. On any failure nothing of it counts: the detectors
        are back at the last commit, so the same records can be sent again."""
        with self._lock:
            touched: set[str] = set()
            try:
                verdicts, rolled_back = self._judge(records, cursor, touched)
            except BaseException:
                self._restore(touched)
                raise
        for job_id in rolled_back:  # the controller replaces the workload now, not at its next poll
            self.on_rollback(job_id)
        if time.monotonic() >= self._next_forget:
            self.forget_finished()
        return verdicts

    def forget_finished(self) -> set[str]:
        """Let go of the watched jobs that ended (or are gone): their detectors, marks and rows.

        A paused or rolled-back job is live and keeps its state. One primary-key query over the
        watched jobs; the catch-up does the same for every job it does not find live.
        """
        with self._lock:
            self._next_forget = time.monotonic() + self.forget_every_s
            watched = self.detectors.keys() | self.seen.keys()
            if not watched:
                return set()
            ids = [int(job) for job in watched if job.isdigit()]
            with self.sessions() as session:
                live = session.scalars(select(Job.id).where(Job.id.in_(ids), Job.state.in_(ACTIVE_JOB_STATES))).all()
            ended = watched - {str(job_id) for job_id in live}
            self._forget(ended)
        return ended

    def _judge(
        self, records: Iterable[Mapping[str, Any]], cursor: str | None, touched: set[str]
    ) -> tuple[list[Verdict], set[int]]:
        with self.sessions() as session:
            verdicts: list[Verdict] = []
            for record in records:
                if not self._first_sight(record, touched):
                    continue
                try:
                    verdicts += self._detector(record["job"]).observe(record)
                except ValueError as exc:  # not a record the detector can read; nothing to judge
                    log.warning("record skipped: %s", exc)
                    continue
                self._note_skipped_step(session, record)
            if not touched:
                return [], set()
            rolled_back = {job_id for verdict in verdicts if (job_id := self._act(session, verdict))}
            saved = self._save(session, touched, cursor)
            session.commit()
            self._committed.update(saved)
            self.cursor = cursor or self.cursor
        return verdicts, rolled_back

    def _save(self, session: Session, jobs: set[str], cursor: str | None) -> dict[str, dict[str, Any]]:
        """Write the state of `jobs` (and the cursor) blind, an UPDATE (an INSERT the first time):
        reading it back first would parse it all again. Returns what was written, by job."""
        saved = {job: self._state_of(job) for job in sorted(jobs)}
        rows: dict[str, dict[str, Any]] = {self._prefix + job: {"state": state} for job, state in saved.items()}
        if cursor is not None:
            rows[self.name] = {"cursor": cursor}
        for name, values in rows.items():
            if not session.execute(update(WatchdogState).where(WatchdogState.name == name).values(**values)).rowcount:
                session.add(WatchdogState(name=name, **values))
        return saved

    def _state_of(self, job: str) -> dict[str, Any]:
        return {"detector": self.detectors[job].state_dict(), "mark": copy.deepcopy(self.seen[job])}

    def _first_sight(self, record: Mapping[str, Any], touched: set[str]) -> bool:
        """True for a record past its job's mark, moving the mark; False if judged before."""
        if not self._is_new(record):
            return False
        job, attempt, step, phase = record["job"], int(record["attempt"]), int(record["step"]), record.get("phase")
        touched.add(job)
        mark = self.seen.get(job)
        if mark is not None and (mark[0], mark[1]) == (attempt, step):
            mark[2].append(phase)  # another phase of the same step (the eval after the training step)
        else:
            self.seen[job] = [attempt, step, [phase]]
        return True

    def _is_new(self, record: Mapping[str, Any]) -> bool:
        """Past its job's mark: a later (attempt, step), or a phase of the mark's step not yet seen."""
        try:
            job, at, phase = record["job"], (int(record["attempt"]), int(record["step"])), record.get("phase")
            mark = self.seen.get(job) if isinstance(job, str) else None
        except (KeyError, TypeError, ValueError):
            log.warning("record without job, attempt and step skipped: %.200s", record)
            return False
        if not isinstance(job, str):
            log.warning("record without a job id skipped: %.200s", record)
            return False
        if mark is None:
            return True
        last = (mark[0], mark[1])
        return at > last or (at == last and phase not in mark[2])

    def catch_up(self, *, thorough: bool = True) -> int:
        """Judge what the database holds past this watchdog's mark, for every live job, in step
        order; the number of records that were new.

        `thorough` also reads the mark's own step of each job (an eval record lost after its
        training record was judged); a sweep only reads jobs whose newest step is past the mark.
        """
        with self._lock:
            with self.sessions() as session:
                newest = history.newest_steps(session)
            if self._adopting:
                self._adopt(newest)
            judged, batch = 0, []
            for job_id, last in newest.items():
                mark = self.seen.get(str(job_id))
                since = (mark[0], mark[1]) if mark else None
                if last is None or (since is not None and (last < since or (last == since and not thorough))):
                    continue
                for records in self._stored(job_id, since):
                    batch += [record for record in records if self._is_new(record)]
                    if len(batch) >= CATCH_UP_RECORDS:
                        self.process(batch)
                        judged, batch = judged + len(batch), []
            if batch:
                self.process(batch)
                judged += len(batch)
            self._forget({job for job in self.detectors.keys() | self.seen.keys() if not job.isdigit() or int(job) not in newest})
            self.behind = False
        if judged:
            log.warning("caught up with %d record(s) the watchdog had not received", judged)
        return judged

    def _stored(self, job_id: int, since: tuple[int, int] | None) -> Iterator[list[dict[str, Any]]]:
        """The job's stored records from `since` on, page by page."""
        while True:
            with self.sessions() as session:
                records, since = history.stored_records(session, job_id=job_id, since=since)
            yield records
            if since is None:
                return

    def _forget(self, jobs: set[str]) -> None:
        """A finished job reports no more: its detector and mark go, and their rows."""
        if not jobs:
            return
        with self.sessions() as session:
            names = [self._prefix + job for job in jobs]
            session.execute(delete(WatchdogState).where(WatchdogState.name.in_(names)))
            session.commit()
        for job in jobs:
            self.detectors.pop(job, None)
            self.seen.pop(job, None)
            self._committed.pop(job, None)

    def _adopt(self, newest: dict[int, tuple[int, int] | None]) -> None:
        """After an upgrade from one whole-fleet detector state: each live job's detector is
        rebuilt by replaying what is stored, acting on nothing (its verdicts were events already),
        and marked at its newest record. The old state goes."""
        for job_id, last in newest.items():
            if last is None:
                continue
            touched: set[str] = set()
            for records in self._stored(job_id, None):
                for record in records:
                    if self._first_sight(record, touched):
                        with contextlib.suppress(ValueError):
                            self._detector(record["job"]).observe(record)
            with self.sessions() as session:
                self._committed.update(self._save(session, touched, None))
                session.commit()
        with self.sessions() as session:
            session.execute(update(WatchdogState).where(WatchdogState.name == self.name).values(state={}))
            session.commit()
        self._adopting = False
        log.warning("adopted %d live job(s) from the previous watchdog state", len(newest))

    def _note_skipped_step(self, session: Session, record: Mapping[str, Any]) -> None:
        """An optimizer step the trainer skipped becomes one `trainer.step_skipped` event."""
        metrics = record.get("metrics") or {}
        skipped = _finite(metrics.get(STEP_SKIPPED))
        if skipped is None or skipped < 0.5:
            return
        job = record["job"]
        if not (isinstance(job, str) and job.isdigit() and session.get(Job, int(job))):
            return  # a job that is gone: no event can point at it
        code = _finite(metrics.get(STEP_SKIP_REASON))
        reason = SKIP_REASONS.get(int(code), "unknown") if code is not None else "unknown"
        step = record["step"]
        repo.add_event(
            session,
            kind="trainer.step_skipped",
            actor=ACTOR,
            job_id=int(job),
            attempt=record["attempt"],
            reason=f"step {step} skipped: {SKIP_REASON_TEXT[reason]}",
            data={
                "step": step,
                "reason": reason,
                "skip_reason": code,
                "skipped_total": _finite(metrics.get(STEP_SKIPPED_TOTAL)),
                "stage": record.get("stage"),
            },
        )

    def _act(self, session: Session, verdict: Verdict) -> int | None:
        """Record the verdict; roll back when it asks and policy allows. The job id if rolled back."""
        from service.db.session import lock_for_write

        job_id = int(verdict.job)
        lock_for_write(session)  # SQLite: what the rollback decides on is read under the write lock
        try:
            job = repo.get_job(session, job_id=job_id)
        except NotFound:
            return None
        evidence = {"channel": verdict.channel, "step": verdict.step, **verdict.evidence}
        # One bad stretch diverges on several series (the mixture's loss and the channel's) in the
        # same batch: the first rolled the attempt back, the others are the same episode. So did
        # the trainer, if it exited diverged first. An attempt opened since for a pod failure or a
        # preemption is no rollback: the rollback goes ahead and supersedes it.
        rolled_back_by = next(
            (
                a
                for a in job.attempts
                if a.number > verdict.attempt and AttemptReason(a.reason).is_rollback
            ),
            None,
        )
        action = verdict.action
        if verdict.action == "rollback" and rolled_back_by is not None:
            action = (
                f"rollback already done (attempt {verdict.attempt} replaced by attempt "
                f"{rolled_back_by.number})"
            )
        repo.add_event(
            session,
            kind=f"verdict.{verdict.kind}",
            actor=ACTOR,
            job_id=job_id,
            attempt=verdict.attempt,
            reason=f"{verdict.kind} on {_series(verdict.channel)} at step {verdict.step}: {action}",
            data=evidence,
        )
        session.flush()
        if verdict.action != "rollback" or rolled_back_by is not None:
            return None
        if job.watchdog.rollback != "auto":
            return None  # alert_only: the event is the whole answer
        onset = int(verdict.evidence.get("onset", verdict.step))
        request = RollbackRequest(
            onset_step=onset,
            reason=AttemptReason.ROLLBACK,
            why=f"{verdict.kind} on {_series(verdict.channel)} from step {onset}",
            actor=ACTOR,
            expected_attempt=verdict.attempt,
            evidence=evidence,
        )
        try:
            # A savepoint: a refused rollback leaves the verdict's event (and our state) intact.
            # No checkpoint storage here: the controller verifies the resume checkpoint at launch.
            with session.begin_nested():
                outcome = roll_back(session, job_id=job_id, request=request, commit=False)
            if outcome.checkpoint is not None:
                log.warning("job %d rolled back to step %d", job_id, outcome.checkpoint.step)
            return job_id
        except Conflict as exc:
            repo.add_event(
                session,
                kind="rollback.skipped",
                actor=ACTOR,
                job_id=job_id,
                attempt=verdict.attempt,
                reason=str(exc),
                data=evidence,
            )
            return None


def _series(channel: str) -> str:
    return "loss" if channel == "all" else f"loss/{channel}"


def _finite(value: Any) -> float | None:
    """A metric's value if it is a finite number (the wire sends NaN and infinities as text)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- how records reach it ---------------------------------------------------------------------------


def feed(
    settings: Settings,
    records: list[dict[str, Any]],
    *,
    raw: bytes | None = None,
    local: InProcess | None = None,
) -> list[Verdict]:
    """Hand stored records to the watchdog: one stream entry in a cluster (`raw`, the batch's JSON
    as posted, when given), the app's in-process watchdog otherwise.

    WatchdogUnavailable when it cannot take them now: they are stored, so sending them again is
    safe, and whatever is never sent again is caught up from the database.
    """
    if not records:
        return []
    if settings.redis_url:
        try:
            stream.add(stream.client(settings.resolved_redis_url), raw if raw is not None else json.dumps(records))
        except redis.RedisError as exc:
            raise WatchdogUnavailable(f"the watchdog's stream is unavailable: {exc}") from exc
        return []
    return (local or InProcess(settings, notifier_for(settings))).feed(records)


class InProcess:
    """The embedded default's watchdog, one per API app: built on first use, or at start-up,
    where it first catches up with what the database holds."""

    def __init__(self, settings: Settings, notifier: Notifier) -> None:
        self.settings = settings
        self.notifier = notifier
        self._watchdog: Watchdog | None = None
        self._lock = threading.Lock()

    def get(self) -> Watchdog:
        with self._lock:
            if self._watchdog is None:
                from service.db.session import get_sessionmaker

                url = self.settings.resolved_database_url
                self._watchdog = Watchdog(get_sessionmaker(url), on_rollback=_on_rollback(self.notifier))
            return self._watchdog

    def start(self) -> None:
        """Catch up now (a process killed between storing and feeding left records unjudged)."""
        try:
            watchdog = self.get()
            watchdog.catch_up()
        except Exception as exc:  # the first ingest request tries again; the API must start regardless
            log.warning("the watchdog could not catch up at start-up: %s", exc)

    def feed(self, records: list[dict[str, Any]]) -> list[Verdict]:
        try:
            watchdog = self.get()
            if watchdog.behind:
                watchdog.catch_up()
            return watchdog.process(records)
        except Exception as exc:
            if self._watchdog is not None:
                self._watchdog.behind = True  # what failed is read back from the database
            log.exception("the watchdog could not judge %d record(s)", len(records))
            raise WatchdogUnavailable(f"the watchdog could not save its verdicts: {exc}") from exc


@asynccontextmanager
async def lifespan(app):
    """An API app on the embedded default gets its watchdog, caught up, before it serves."""
    from fastapi.concurrency import run_in_threadpool

    settings = app.state.settings
    if not settings.redis_url:
        await run_in_threadpool(in_process(app).start)
    yield


def in_process(app) -> InProcess:
    """The app's in-process watchdog (made here if its lifespan did not run, as in some tests)."""
    local = getattr(app.state, "watchdog", None)
    if local is None:
        local = app.state.watchdog = InProcess(app.state.settings, app.state.notifier)
    return local


def _on_rollback(notifier: Notifier) -> Callable[[int], None]:
    return lambda job_id: notifier.job_changed(job_id, f"watchdog-rollback-{time.time_ns()}")


def run(
    settings: Settings,
    stop: threading.Event,
    consumer: str = "watchdog-1",
    block_ms: int = 1000,
    sweep_s: float = SWEEP_S,
    notifier: Notifier | None = None,
) -> None:
    """Consume the shared stream until `stop`: read, judge, act, save, acknowledge, trim.

    Never a crash loop: a trimmed or unreadable entry is acknowledged and logged, a lost stream
    or group is made again, and a failing database or Redis is retried with backoff; in each
    case what may be missing is read back from the database first.
    """
    from service.db.session import get_sessionmaker

    connection = stream.client(settings.resolved_redis_url)
    on_rollback = _on_rollback(notifier or notifier_for(settings))
    watchdog = _start(get_sessionmaker(settings.resolved_database_url), on_rollback, stop)
    if watchdog is None:
        return
    grouped, pending, failures, unacknowledged_trim = False, True, 0, 0
    next_sweep = time.monotonic() + sweep_s
    while not stop.is_set():
        try:
            if not grouped:
                stream.ensure_group(connection)
                grouped = True
            if watchdog.behind or time.monotonic() >= next_sweep:
                watchdog.catch_up(thorough=watchdog.behind)
                next_sweep = time.monotonic() + sweep_s
            # First what this consumer was given but never acknowledged (a crash), then new records.
            batch = stream.read(connection, consumer, pending=pending, count=READ_COUNT, block_ms=block_ms)
            if batch.lost:  # before anything after them, the lost records come from the database
                watchdog.catch_up()
            if batch.records:
                watchdog.process(batch.records, cursor=batch.cursor)
            stream.acknowledge(connection, batch.ids)
            unacknowledged_trim += len(batch.ids)
            if unacknowledged_trim >= TRIM_EVERY or (unacknowledged_trim and not batch.ids):
                stream.trim_consumed(connection)
                unacknowledged_trim = 0
            if pending and not batch.ids:
                pending = False
            failures = 0
        except stream.StreamGone as exc:
            log.warning("the metrics stream lost its group (%s); catching up from the database", exc)
            grouped, pending, watchdog.behind = False, True, True
        except redis.RedisError as exc:
            failures += 1
            log.warning("Redis failed (%s); retrying and catching up from the database", exc)
            grouped, pending, watchdog.behind = False, True, True
            stop.wait(_backoff(failures))
        except Exception:
            failures += 1
            log.exception("the watchdog failed; the records stay pending and are read again")
            pending = True
            stop.wait(_backoff(failures))


def _start(sessions: sessionmaker[Session], on_rollback: Callable[[int], None], stop: threading.Event) -> Watchdog | None:
    """The watchdog with its saved state, waiting out a database that is not up yet (a
    restart of Postgres, or the pod starting first); None if stopped meanwhile."""
    failures = 0
    while not stop.is_set():
        try:
            return Watchdog(sessions, on_rollback=on_rollback)
        except (OperationalError, InterfaceError) as exc:
            failures += 1
            log.warning("the database is not reachable (%s); the watchdog starts once it is", exc)
            stop.wait(_backoff(failures))
    return None


def _backoff(failures: int) -> float:
    return min(30.0, 0.5 * 2 ** min(failures, 6))
