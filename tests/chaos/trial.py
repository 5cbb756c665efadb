"""One chaos trial: tiny jobs through the real loop while its parts are killed, then the invariants.

`ChaosDeployment` is the service as a cluster runs it, on this machine and on the local backend:
the API, controller, Celery worker and watchdog as their own `pretrainctl` processes
(`tests/e2e/stack.py`), trainers as local processes under the launcher, a private Postgres it
can stop and start (`tests/servers.py`), and Redis. It lives across trials; each trial submits
its own jobs into it.

A trial (`run_trial`) is a pure function of its seed, up to timing: `plan_trial(seed)` picks
1–2 jobs (some with a stretch of garbage data, so the watchdog rolls them back) and 1–3 faults:
which part to kill — a service process (SIGKILL to its process group), a trainer (SIGKILL), or
Postgres (stopped immediately, mid-ingest) — when, counted from the first trainer's start, and
how long it stays down before it is started again. Then it waits for the jobs to end and
checks `invariants.INVARIANTS` against what the database, the trainers' own files and the
census say.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pretrainctl.client import ApiClient
from service.controller.backends import launcher
from service.db.models import Attempt, Event, Job, MetricPoint
from service.watchdog import history
from service.watchdog.detector import Detector, Policy
from service.watchdog.stream import GROUP, STREAM
from tests.chaos.census import TrainerCensus
from tests.chaos.invariants import EXPLAINED_STATES, INVARIANTS, JobSeen, check
from tests.e2e.jobs import demo_spec, submit
from tests.e2e.stack import ServiceStack, clean_environment, wait_until
from tests.servers import PostgresServer, free_port

SERVICE_PARTS = ("api", "controller", "worker", "watchdog")
TARGETS = (*SERVICE_PARTS, "trainer", "postgres")
STEPS = 40
GARBAGE = (24, 32)  # steps of `en` fed random tokens, in the jobs that get them
SEQ_LENGTH = 64
FAULT_WINDOW_S = 12.0  # faults fall within this long after the first trainer starts
DOWN_S = (0.2, 3.0)
FIRST_TRAINER_TIMEOUT_S = 90.0
FINISH_TIMEOUT_S = 240.0
SETTLE_TIMEOUT_S = 30.0
MAX_POD_FAILURE_RETRIES = 8


@dataclass(frozen=True)
class Fault:
    target: str
    at_s: float  # after the trial's first trainer started
    down_s: float


@dataclass(frozen=True)
class TrialPlan:
    seed: int
    garbage: tuple[bool, ...]  # one entry per job: does it get the garbage stretch
    faults: tuple[Fault, ...]


def plan_trial(seed: int) -> TrialPlan:
    rng = random.Random(seed)
    garbage = tuple(rng.random() < 0.5 for _ in range(rng.choice((1, 1, 2))))
    times = sorted(rng.uniform(0.5, FAULT_WINDOW_S) for _ in range(rng.randint(1, 3)))
    faults = tuple(Fault(rng.choice(TARGETS), round(t, 2), round(rng.uniform(*DOWN_S), 2)) for t in times)
    return TrialPlan(seed, garbage, faults)


@dataclass
class TrialRow:
    seed: int
    jobs: int
    garbage_jobs: int
    faults: list[str]  # "target@seconds" as applied; "trainer@3.1 (none running)" when moot
    outcome: str  # the jobs' final states
    rollbacks: int
    attempts: int
    seconds: float
    violations: dict[str, list[str]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)  # service parts that exited unasked
    # Rollbacks a verdict asked for and the service refused (`rollback.skipped`, with its reason):
    # no invariant is broken, but the job trained on through its garbage.
    rollbacks_skipped: list[str] = field(default_factory=list)

    @property
    def violation_count(self) -> int:
        return sum(len(v) for v in self.violations.values())


class ChaosDeployment:
    """See the module docstring. Use as a context manager."""

    def __init__(self, root: Path, postgres: PostgresServer, redis_url: str) -> None:
        self.root = Path(root)
        self.postgres = postgres
        self.redis_url = redis_url
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        admin_token = secrets.token_urlsafe(24)
        state_dir = self.root / "state"
        self.workloads = state_dir / "workloads"
        env = clean_environment(
            {
                "PRETRAIN_DATABASE_URL": postgres.url,
                "PRETRAIN_REDIS_URL": redis_url,
                "PRETRAIN_BACKEND": "local",
                "PRETRAIN_ADMIN_TOKEN": admin_token,
                "PRETRAIN_STATE_DIR": str(state_dir),
                "PRETRAIN_API_HOST": "127.0.0.1",
                "PRETRAIN_API_PORT": str(port),
                "PRETRAIN_API_URL": self.url,
                "PRETRAIN_INGEST_URL": self.url,
                "PRETRAIN_MAX_POD_FAILURE_RETRIES": str(MAX_POD_FAILURE_RETRIES),
                "PRETRAIN_LOG_LEVEL": "info",
            }
        )
        self.stack = ServiceStack(env, self.root / "logs")
        self.api = ApiClient(self.url, admin_token, timeout=30)
        self.census = TrainerCensus(self.workloads)
        self.engine = sqlalchemy.create_engine(postgres.url, pool_pre_ping=True)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.killed: set[str] = set()  # parts down on purpose right now

    def __enter__(self) -> ChaosDeployment:
        self.stack.pretrainctl("db", "upgrade")
        self.workloads.mkdir(parents=True, exist_ok=True)
        self.stack.start_all(self.url)
        self.census.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.census.stop()
        self.stack.stop()
        for folder in self.workloads.glob("*"):  # trainers outlive the controller by design
            with contextlib.suppress(ProcessLookupError, ValueError, OSError):
                os.killpg(int((folder / launcher.PID_FILE).read_text()), signal.SIGKILL)
        self.api.close()
        self.engine.dispose()

    # --- faults ------------------------------------------------------------------------------------

    def inject(self, fault: Fault, job_ids: set[int], rng: random.Random, at_s: float) -> str:
        """Apply one fault and undo it after its down time; what was done, for the table."""
        label = f"{fault.target}@{at_s:.1f}"
        if fault.target == "trainer":
            alive = sorted(self.census.alive(job_ids), key=lambda s: s.pid)
            if not alive:
                return f"{label} (none running)"
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(alive).pid, signal.SIGKILL)
            return label
        if fault.target == "postgres":
            self.postgres.stop()
            time.sleep(fault.down_s)
            self.postgres.start()
            return label
        self.killed.add(fault.target)
        self.stack.kill(fault.target, signal.SIGKILL)
        time.sleep(fault.down_s)
        self.stack.start(fault.target)
        self.killed.discard(fault.target)
        if fault.target == "api":
            self.stack.wait_ready(self.url)
        return label

    def revive(self) -> list[str]:
        """Start again every service part that exited without being killed; which ones did."""
        crashed = []
        for name, code in sorted(self.stack.exited().items()):
            if name in SERVICE_PARTS and name not in self.killed:
                crashed.append(f"{name} exited {code}")
                self.stack.start(name)
                if name == "api":
                    self.stack.wait_ready(self.url)
        return crashed

    # --- reading back ------------------------------------------------------------------------------

    def job_states(self, job_ids: set[int]) -> dict[int, str] | None:
        try:
            with self.sessions() as session:
                rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids)))
                return dict(rows.all())
        except SQLAlchemyError:
            return None  # Postgres is restarting

    def stream_settled(self) -> bool:
        """The watchdog has read and acknowledged everything the API put on the stream."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            groups = client.xinfo_groups(STREAM)
        except redis.ResponseError:
            return True  # no stream yet: nothing was sent
        finally:
            client.close()
        ours = [g for g in groups if g["name"] in (GROUP, GROUP.encode())]
        return bool(ours) and ours[0]["pending"] == 0 and not ours[0].get("lag")

    def seen(self, job_id: int) -> JobSeen:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            attempts = session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
            events = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))
            points = session.execute(
                select(MetricPoint.attempt, MetricPoint.step, MetricPoint.name, MetricPoint.value, MetricPoint.nonfinite)
                .where(MetricPoint.job_id == job_id)
            )
            seen = JobSeen(
                id=job_id,
                state=job.state,
                state_reason=job.state_reason,
                attempts=[
                    {"number": a.number, "state": a.state, "reason": a.reason, "outcome": a.outcome}
                    for a in attempts
                ],
                events=[
                    {"kind": e.kind, "attempt": e.attempt, "actor": e.actor, "reason": e.reason, "data": e.data}
                    for e in events
                ],
                points={(a, s, n): (nf if nf is not None else v) for a, s, n, v, nf in points},
                replayed_verdicts=replay_verdicts(session, job),
            )
        for folder in self._folders(job_id):
            attempt = json.loads((folder / "meta.json").read_text())["attempt"]
            if (folder / launcher.PID_FILE).exists() or (folder / launcher.EXIT_CODE_FILE).exists():
                seen.launches[attempt] = seen.launches.get(attempt, 0) + 1
            seen.trainer_records.setdefault(attempt, []).extend(_read_jsonl(folder / "metrics.jsonl"))
        return seen

    def _folders(self, job_id: int) -> list[Path]:
        """The job's workload folders, live and deleted (`.deleted/<name>-<ms>`)."""
        found = []
        for folder in [*self.workloads.glob("*"), *self.workloads.glob(".deleted/*")]:
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            if meta.get("job_id") == job_id:
                found.append(folder)
        return found


def replay_verdicts(session: Session, job: Job) -> list[tuple[int, str, str, int]]:
    """The verdicts a fresh detector gives on the job's stored records, in (attempt, step) order."""
    policy = Policy.from_spec(job.watchdog)
    detector = Detector(lambda _job: policy)
    records, _ = history.stored_records(session, job_id=job.id, since=None, limit=10**9)
    return [(v.attempt, v.kind, v.channel, v.step) for r in records for v in detector.observe(r)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records a trainer wrote; a torn last line (a trainer killed mid-write) is skipped."""
    records = []
    with contextlib.suppress(FileNotFoundError), path.open() as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def run_trial(deployment: ChaosDeployment, seed: int) -> TrialRow:
    plan = plan_trial(seed)
    rng = random.Random(seed ^ 0x5EED)
    started = time.monotonic()
    crashes = deployment.revive()
    job_ids = {
        submit(deployment.api, demo_spec(f"chaos-{seed}-{i}", **_job_shape(bad)))["id"]
        for i, bad in enumerate(plan.garbage)
    }
    wait_until(
        lambda: deployment.census.alive(job_ids),
        timeout=FIRST_TRAINER_TIMEOUT_S,
        what=f"a trainer of jobs {sorted(job_ids)}",
        interval=0.1,
        diagnostics=deployment.stack.tails,
    )
    first_trainer = time.monotonic()
    applied = []
    for fault in plan.faults:
        due = first_trainer + fault.at_s
        time.sleep(max(0.0, due - time.monotonic()))
        applied.append(deployment.inject(fault, job_ids, rng, time.monotonic() - first_trainer))
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    states: dict[int, str] = {}
    while time.monotonic() < deadline:
        crashes += deployment.revive()
        states = deployment.job_states(job_ids) or states
        if len(states) == len(job_ids) and set(states.values()) <= EXPLAINED_STATES:
            break
        time.sleep(0.5)
    with contextlib.suppress(AssertionError):
        wait_until(deployment.stream_settled, timeout=SETTLE_TIMEOUT_S, what="the watchdog to settle")
    jobs = [deployment.seen(job_id) for job_id in sorted(job_ids)]
    with deployment.census.lock:
        violations = check(jobs, deployment.census.census)
    return TrialRow(
        seed=seed,
        jobs=len(jobs),
        garbage_jobs=sum(plan.garbage),
        faults=applied,
        outcome=",".join(job.state for job in jobs),
        rollbacks=sum(1 for job in jobs for e in job.events if e["kind"] == "job.rolled_back"),
        attempts=sum(len(job.attempts) for job in jobs),
        seconds=round(time.monotonic() - started, 1),
        violations=violations,
        crashes=crashes,
        rollbacks_skipped=[
            f"job {job.id}: {e['reason']}" for job in jobs for e in job.events if e["kind"] == "rollback.skipped"
        ],
    )


def _job_shape(garbage: bool) -> dict[str, Any]:
    return {
        "steps": STEPS,
        "garbage": GARBAGE if garbage else None,
        "seq_length": SEQ_LENGTH,
        "checkpoint_every": 4,
        "rollback_margin_steps": 4,
        "skip_steps_after": 10,
    }


# --- the table ---------------------------------------------------------------------------------


def table(rows: list[TrialRow], *, violations: bool = True) -> str:
    """The trial table, one line a trial, then (unless told not to) the violations spelt out."""
    header = f"{'seed':>6} {'jobs':>4} {'bad':>3} {'s':>6} {'att':>3} {'rb':>2}  {'outcome':<20} {'viol':>4}  faults"
    lines = [header, "-" * len(header)]
    for row in rows:
        faults = " ".join(row.faults) + (f"  [crashed: {'; '.join(row.crashes)}]" if row.crashes else "")
        faults += f"  [rollback skipped: {'; '.join(row.rollbacks_skipped)}]" if row.rollbacks_skipped else ""
        lines.append(
            f"{row.seed:>6} {row.jobs:>4} {row.garbage_jobs:>3} {row.seconds:>6.1f} {row.attempts:>3} "
            f"{row.rollbacks:>2}  {row.outcome:<20} {row.violation_count:>4}  {faults}"
        )
    for row in rows if violations else []:
        for name, found in row.violations.items():
            lines += [f"seed {row.seed}: {name}: {v}" for v in found]
    return "\n".join(lines)


def summary(rows: list[TrialRow]) -> dict[str, Any]:
    """Trials, faults applied by kind, violations by invariant, the trials' median seconds."""
    faults = Counter(f.split("@")[0] for row in rows for f in row.faults if "none running" not in f)
    return {
        "trials": len(rows),
        "jobs": sum(row.jobs for row in rows),
        "faults": {target: faults.get(target, 0) for target in TARGETS},
        "violations": {name: sum(len(row.violations.get(name, [])) for row in rows) for name in INVARIANTS},
        "crashes": sum(len(row.crashes) for row in rows),
        "rollbacks": sum(row.rollbacks for row in rows),
        "rollbacks_skipped": sum(len(row.rollbacks_skipped) for row in rows),
        "outcomes": dict(Counter(state for row in rows for state in row.outcome.split(","))),
        "median_trial_s": statistics.median(row.seconds for row in rows) if rows else 0.0,
    }
