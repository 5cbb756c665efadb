"""The watchdog: every metric record through the detector, every verdict an event, and a
rollback when the job's policy says `auto`.

Records reach it from the ingest route: in-process on the embedded default, or through one
Redis stream that all jobs share (`pretrain:metrics`, consumer group `watchdog`) in a
cluster. Its detector state is saved in the database with every batch before the batch is
acknowledged, so a restarted watchdog resumes where it was: redelivered records are
duplicates the detector ignores, and nothing is missed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import repo
from service.db.models import AttemptReason, Job, WatchdogState
from service.errors import Conflict, NotFound
from service.settings import Settings
from service.watchdog.detector import Detector, Policy, Verdict
from service.watchdog.rollback import RollbackRequest, roll_back

log = logging.getLogger(__name__)

STREAM = "pretrain:metrics"
GROUP = "watchdog"
STATE_NAME = "default"
ACTOR = "watchdog"


class Watchdog:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        name: str = STATE_NAME,
        on_rollback: Callable[[int], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.name = name
        self.on_rollback = on_rollback or (lambda _job_id: None)
        self._lock = threading.Lock()  # records arrive from several request threads
        with self.sessions() as session:
            saved = session.get(WatchdogState, name)
            self.cursor = saved.cursor if saved else None
            state = saved.state if saved and saved.state else None
        self.detector = Detector.from_state(state, self._policy) if state else Detector(self._policy)

    def _policy(self, job: str) -> Policy:
        with self.sessions() as session:
            found = session.get(Job, int(job)) if job.isdigit() else None
            return Policy.from_spec(found.spec.get("watchdog") if found else None)

    def process(self, records: Iterable[dict[str, Any]], cursor: str | None = None) -> list[Verdict]:
        """Judge records, act on verdicts, save state (with the stream cursor) in one transaction."""
        with self._lock, self.sessions() as session:
            verdicts = [v for record in records for v in self.detector.observe(record)]
            rolled_back = {job_id for verdict in verdicts if (job_id := self._act(session, verdict))}
            saved = session.get(WatchdogState, self.name) or WatchdogState(name=self.name)
            saved.state = self.detector.state_dict()
            saved.cursor = cursor or saved.cursor
            session.add(saved)
            session.commit()
            self.cursor = saved.cursor
        for job_id in rolled_back:  # the controller replaces the workload now, not at its next poll
            self.on_rollback(job_id)
        return verdicts

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
        if job.spec.get("watchdog", {}).get("rollback", "auto") != "auto":
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


# --- how records reach it ---------------------------------------------------------------------------

_in_process: dict[str, Watchdog] = {}


def feed(settings: Settings, records: list[dict[str, Any]]) -> list[Verdict]:
    """Hand stored records to the watchdog: the Redis stream in a cluster, in-process otherwise."""
    if settings.redis_url:
        client = _redis(settings.redis_url)
        pipeline = client.pipeline(transaction=False)
        for record in records:
            pipeline.xadd(STREAM, {"record": json.dumps(record)}, maxlen=1_000_000, approximate=True)
        pipeline.execute()
        return []
    url = settings.resolved_database_url
    if url not in _in_process:
        from service.db.session import get_sessionmaker

        _in_process[url] = Watchdog(get_sessionmaker(url), on_rollback=_notifier(settings))
    return _in_process[url].process(records)


def _notifier(settings: Settings) -> Callable[[int], None]:
    from service import tasks

    return lambda job_id: tasks.job_changed(settings, job_id, f"watchdog-rollback-{time.time_ns()}")


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def run(settings: Settings, stop: threading.Event, consumer: str = "watchdog-1", block_ms: int = 1000) -> None:
    """Consume the shared stream until `stop`: read, judge, act, save, acknowledge."""
    from service.db.session import get_sessionmaker

    client = _redis(settings.redis_url)
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except Exception as exc:  # BUSYGROUP: it exists already
        if "BUSYGROUP" not in str(exc):
            raise
    watchdog = Watchdog(get_sessionmaker(settings.resolved_database_url), on_rollback=_notifier(settings))
    pending_first = True
    while not stop.is_set():
        # First what this consumer was given but never acknowledged (a crash), then new records.
        start = "0" if pending_first else ">"
        answer = client.xreadgroup(GROUP, consumer, {STREAM: start}, count=500, block=None if pending_first else block_ms)
        entries = answer[0][1] if answer else []
        if pending_first and not entries:
            pending_first = False
            continue
        if not entries:
            continue
        records = [json.loads(fields[b"record"]) for _, fields in entries]
        watchdog.process(records, cursor=entries[-1][0].decode())
        client.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
