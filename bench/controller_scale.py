"""Controller scale: N jobs against the Kubernetes emulator, converge time and reconciles per job.

One `Controller` with a `KubernetesBackend` whose informer is running (`observe` answers from
its cache), over real HTTP to the test suite's emulator and a throwaway Postgres (or
TEST_DATABASE_URL). A driver thread runs the controller as `Controller.run` does: `run_once()`,
then wait `--poll-s` (the controller's POLL_S). Each run:

  1. submits N jobs (`service.jobs.submit_job`, the tiny CPU example with unique names);
  2. converge: starts the driver and times until every job has its PyTorchJob;
  3. running wave: marks every PyTorchJob Running and times until every job is `running`,
     then counts what the controller's own writes bring back through its DB poll ("echo");
  4. idle: counts reconciles over `--idle-s` seconds in which nothing changes;
  5. changes: marks 10 PyTorchJobs Succeeded and counts the reconciles until all 10 jobs are
     `succeeded` in the database, split into the ten jobs' own and every other job's.

Reconciles are counted by wrapping `controller.reconcile`; API requests by the emulator. The
baseline, measured in the same process, is the same run at N/10 jobs: per-job ratios near 1
mean O(1) work per job, and the ten changes' cost should not grow with N at all. `--runs`
runs at N (default 2) and `--baseline-runs` at N/10 (default 3); medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from harness import ROOT, record
from kubernetes import client
from sqlalchemy import func, select, text

from service import jobs
from service.controller.backends.kubernetes import KubernetesBackend
from service.controller.loop import POLL_S, Controller
from service.controller.manifests import workload_name
from service.controller.reconcile import REQUEUE_RUNNING_S
from service.db import migrate
from service.db.models import Base, Event, Job, Role
from service.db.session import get_engine, get_sessionmaker
from service.settings import Settings
from service.tokens import Principal
from tests.servers import provide_postgres
from tests.service.controller.k8s_emulator import EmulatorHandle, running_emulator

NAMESPACE = "training"
SUBMITTER = Principal(name="bench", role=Role.SUBMITTER)
CHANGES = 10
CHECK_S = 0.1  # how often the bench looks (a DB count) whether a phase is done
PHASE_TIMEOUT_S = 240.0

log = logging.getLogger("controller_scale")


@dataclass
class Run:
    jobs: int
    submit_s: float
    converge_s: float
    converge_reconciles: int
    converge_reconcile_s: float  # time spent inside reconcile()
    converge_requests: int
    wave_s: float
    wave_reconciles: int
    wave_reconcile_s: float
    echo_reconciles: int  # in the settle window after the wave
    echo_polled: int  # notifications the DB poll issued in that window
    idle_reconciles_per_s: float
    idle_busy: float  # share of the quiet window spent inside reconcile()
    change_s: float
    change_reconciles: int  # every reconcile while the 10 changes propagated
    change_reconciles_own: int  # the ten changed jobs' own, including any follow-up


@dataclass(frozen=True)
class Counts:
    reconciles: int
    reconcile_s: float
    polled: int
    per_job: collections.Counter[int]

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.reconciles - other.reconciles,
            self.reconcile_s - other.reconcile_s,
            self.polled - other.polled,
            self.per_job - other.per_job,
        )


class CountingDriver:
    """Runs the controller in a thread as `Controller.run` does, counting what it does.

    Counts reconcile calls (per job, and the time spent in them) and the notifications that
    `_poll_changes` issues (jobs whose row changed recently, by anyone: the controller too).
    """

    def __init__(self, controller: Controller, poll_s: float) -> None:
        self.controller = controller
        self.poll_s = poll_s
        self._per_job: collections.Counter[int] = collections.Counter()
        self._reconciles = 0
        self._reconcile_s = 0.0
        self._polled = 0
        self._polling = threading.local()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        reconcile, notify, poll = controller.reconcile, controller.notify, controller._poll_changes

        def counted_reconcile(job_id: int) -> float | None:
            started = time.perf_counter()
            try:
                return reconcile(job_id)
            finally:
                with self._lock:
                    self._reconciles += 1
                    self._reconcile_s += time.perf_counter() - started
                    self._per_job[job_id] += 1

        def counted_notify(job_id: int, delay: float = 0.0) -> None:
            if getattr(self._polling, "active", False):
                with self._lock:
                    self._polled += 1
            notify(job_id, delay)

        def counted_poll() -> None:
            self._polling.active = True
            try:
                poll()
            finally:
                self._polling.active = False

        controller.reconcile = counted_reconcile  # type: ignore[method-assign]
        controller.notify = counted_notify  # type: ignore[method-assign]
        controller._poll_changes = counted_poll  # type: ignore[method-assign]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def counts(self) -> Counts:
        with self._lock:
            return Counts(
                self._reconciles,
                self._reconcile_s,
                self._polled,
                collections.Counter(self._per_job),
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.controller.run_once()
            except Exception:  # as Controller.run: one bad pass must not stop the loop
                log.exception("reconcile pass failed")
            self._stop.wait(self.poll_s)


def wait_until(done: Callable[[], bool], what: str) -> float:
    """Seconds until `done()`; raises after PHASE_TIMEOUT_S."""
    started = time.perf_counter()
    while not done():
        if time.perf_counter() - started > PHASE_TIMEOUT_S:
            raise TimeoutError(f"{what}: not done after {PHASE_TIMEOUT_S:.0f}s")
        time.sleep(CHECK_S)
    return time.perf_counter() - started


def bound_request_log(k8s: EmulatorHandle, keep: int = 8) -> None:
    """Keep only kmock's last `keep` requests, so the emulator costs O(1) per request.

    kmock 0.8 logs every request and routes each new one by scanning that whole log
    (`RawHandler._handle`: `request in payload._source`, for each of its built-in reactions), so
    without this the emulator alone is O(requests) per request: converging 300 jobs took
    241 ms a job instead of 15. The log only feeds kmock's own DSL views, and at most a few
    requests are in flight at once; `EmulatorHandle.count` reads the emulator's own `calls`.
    """

    async def swap() -> None:
        emulator = k8s.emulator
        emulator._requests = collections.deque(emulator._requests, maxlen=keep)

    asyncio.run_coroutine_threadsafe(swap(), k8s.loop).result(10)


def empty_tables(url: str) -> None:
    with get_engine(url).begin() as connection:
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def running_status(name: str) -> dict:
    """What the Training Operator writes once the pods run (`EmulatorHandle.transition` shape).

    The wave writes it directly: `transition` reads the PyTorchJob through a snapshot of the
    whole namespace, which would make posting N transitions O(N^2) in the emulator alone.
    """
    stamp = "2026-01-01T00:00:01Z"
    condition = {
        "type": "Running",
        "status": "True",
        "reason": "PyTorchJobRunning",
        "message": f"PyTorchJob {name} is running.",
        "lastTransitionTime": stamp,
        "lastUpdateTime": stamp,
    }
    return {"conditions": [condition], "startTime": stamp}


def one_run(url: str, n: int, spec: dict, *, poll_s: float, idle_s: float, state_dir: Path) -> Run:
    empty_tables(url)
    settings = Settings(
        database_url=url,
        backend="kubernetes",
        namespace=NAMESPACE,
        state_dir=state_dir,
        ingest_url="http://pretrain-api:8000",
        max_pod_failure_retries=2,
    )
    sessions = get_sessionmaker(settings.resolved_database_url)

    def scalar(query) -> int:
        with sessions() as session:
            return int(session.scalar(query) or 0)

    with running_emulator(NAMESPACE) as (base_url, k8s):
        bound_request_log(k8s)
        backend = KubernetesBackend(settings, client.Configuration(host=base_url))
        controller = Controller(settings, backend, sessions)
        driver = CountingDriver(controller, poll_s)
        backend.start_watch(controller.notify)
        if not backend.wait_for_sync(30):
            raise RuntimeError("the informer did not sync")
        try:
            return _scenario(n, spec, k8s, driver, sessions, scalar, idle_s)
        finally:
            driver.stop()
            backend.close()


def _scenario(
    n: int,
    spec: dict,
    k8s: EmulatorHandle,
    driver: CountingDriver,
    sessions,
    scalar: Callable,
    idle_s: float,
) -> Run:
    # 1. submit, with the controller not yet running
    started = time.perf_counter()
    names: dict[int, str] = {}
    with sessions() as session:
        for i in range(n):
            body = copy.deepcopy(spec)
            body["name"] = f"scale-{i}"
            job = jobs.submit_job(session, raw=body, principal=SUBMITTER)
            names[job.id] = workload_name(job.name, job.id, 0)
    submit_s = time.perf_counter() - started

    # 2. converge: every job gets its PyTorchJob (the event commits with the reconcile)
    created = select(func.count(func.distinct(Event.job_id))).where(
        Event.kind == "workload.created"
    )
    requests_before = k8s.count()
    before = driver.counts()
    driver.start()
    converge_s = wait_until(lambda: scalar(created) >= n, "converge")
    converge = driver.counts() - before
    converge_requests = k8s.count() - requests_before
    missing = set(names.values()) - k8s.names("pytorchjobs")
    if missing:
        raise RuntimeError(f"{len(missing)} PyTorchJobs missing after converge")

    # 3. running wave, as the Training Operator would post it, while the controller runs
    running = select(func.count()).select_from(Job).where(Job.state == "running")
    before = driver.counts()
    started = time.perf_counter()
    for name in names.values():
        k8s.set_status("pytorchjobs", name, running_status(name))
    wait_until(lambda: scalar(running) >= n, "running wave")
    wave_s = time.perf_counter() - started  # from the first status posted
    wave = driver.counts() - before

    # the wave's echo: the controller's own writes come back through its DB poll
    before = driver.counts()
    time.sleep(2 * driver.poll_s + 2.0)
    echo = driver.counts() - before

    # 4. idle: one whole REQUEUE_RUNNING_S period (by default) in which nothing changes
    before = driver.counts()
    time.sleep(idle_s)
    idle = driver.counts() - before

    # 5. ten changes
    changed = list(names)[:: max(1, n // CHANGES)][:CHANGES]
    succeeded = (
        select(func.count()).select_from(Job).where(Job.id.in_(changed), Job.state == "succeeded")
    )
    before = driver.counts()
    started = time.perf_counter()
    for job_id in changed:
        k8s.transition(names[job_id], "Succeeded")
    wait_until(lambda: scalar(succeeded) >= len(changed), "ten changes")
    change_s = time.perf_counter() - started
    change = driver.counts() - before
    time.sleep(2 * driver.poll_s + 1.0)  # any follow-up on the ten jobs
    own = sum((driver.counts() - before).per_job[j] for j in changed)

    return Run(
        jobs=n,
        submit_s=submit_s,
        converge_s=converge_s,
        converge_reconciles=converge.reconciles,
        converge_reconcile_s=converge.reconcile_s,
        converge_requests=converge_requests,
        wave_s=wave_s,
        wave_reconciles=wave.reconciles,
        wave_reconcile_s=wave.reconcile_s,
        echo_reconciles=echo.reconciles,
        echo_polled=echo.polled,
        idle_reconciles_per_s=idle.reconciles / idle_s,
        idle_busy=idle.reconcile_s / idle_s,
        change_s=change_s,
        change_reconciles=change.reconciles,
        change_reconciles_own=own,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2, help="runs at --jobs")
    parser.add_argument("--baseline-runs", type=int, default=3, help="runs at --jobs / 10")
    parser.add_argument("--poll-s", type=float, default=POLL_S, help="wait between passes")
    parser.add_argument(
        "--idle-s", type=float, default=REQUEUE_RUNNING_S, help="quiet window to count"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    spec = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    small = max(1, args.jobs // 10)
    started = time.perf_counter()
    with provide_postgres() as url, tempfile.TemporaryDirectory() as tmp:
        migrate.upgrade(Settings(database_url=url))

        def measure(n: int) -> Run:
            run = one_run(url, n, spec, poll_s=args.poll_s, idle_s=args.idle_s, state_dir=Path(tmp))
            print(f"  {n} jobs: {run}", file=sys.stderr)
            return run

        measure(10)  # warm-up: imports, connection pool, the first emulator
        baselines = [measure(small) for _ in range(args.baseline_runs)]
        larges = [measure(args.jobs) for _ in range(args.runs)]
    elapsed = time.perf_counter() - started

    def med(runs: list[Run], figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(r) for r in runs)

    rows: list[tuple[str, Callable[[Run], float], str, str]] = [
        ("submit ms/job", lambda r: r.submit_s / r.jobs * 1000, ".2f", "ms/job"),
        ("converge s, all jobs", lambda r: r.converge_s, ".2f", "s"),
        ("converge ms/job", lambda r: r.converge_s / r.jobs * 1000, ".2f", "ms/job"),
        ("converge reconciles/job", lambda r: r.converge_reconciles / r.jobs, ".2f", "reconciles/job"),
        (
            "converge ms/reconcile",
            lambda r: r.converge_reconcile_s / r.converge_reconciles * 1000,
            ".2f",
            "ms/reconcile",
        ),
        ("converge API requests/job", lambda r: r.converge_requests / r.jobs, ".2f", "requests/job"),
        ("running wave s, all jobs", lambda r: r.wave_s, ".2f", "s"),
        ("running wave ms/job", lambda r: r.wave_s / r.jobs * 1000, ".2f", "ms/job"),
        ("running wave reconciles/job", lambda r: r.wave_reconciles / r.jobs, ".2f", "reconciles/job"),
        (
            "running wave ms/reconcile",
            lambda r: r.wave_reconcile_s / max(1, r.wave_reconciles) * 1000,
            ".2f",
            "ms/reconcile",
        ),
        ("after wave: DB-poll echo/job", lambda r: r.echo_polled / r.jobs, ".2f", "notifications/job"),
        ("after wave: reconciles/job", lambda r: r.echo_reconciles / r.jobs, ".2f", "reconciles/job"),
        ("idle reconciles/s, nothing changes", lambda r: r.idle_reconciles_per_s, ".1f", "reconciles/s"),
        ("idle % of time in reconcile", lambda r: r.idle_busy * 100, ".1f", "%"),
        (f"{CHANGES} changes: s until all seen", lambda r: r.change_s, ".2f", "s"),
        (f"{CHANGES} changes: reconciles, theirs", lambda r: r.change_reconciles_own, ".0f", "reconciles"),
        (f"{CHANGES} changes: reconciles, all", lambda r: r.change_reconciles, ".0f", "reconciles"),
    ]
    print(
        f"controller_scale: {args.jobs} jobs x {args.runs} run(s) vs {small} jobs x "
        f"{args.baseline_runs}; KubernetesBackend with its informer, the emulator over HTTP, "
        f"Postgres; a pass every {args.poll_s:g}s; {elapsed:.0f}s in all"
    )
    print(f"{'figure':<38}{'median':>10}{'baseline':>10}{'ratio':>8}")
    for label, figure, fmt, unit in rows:
        ours, base = med(larges, figure), med(baselines, figure)
        ratio = f"{ours / base:>8.2f}" if base else f"{'-':>8}"
        print(f"{label:<38}{ours:>10{fmt}}{base:>10{fmt}}{ratio}")
        record(
            "controller_scale",
            label,
            ours,
            base,
            ours / base if base else None,
            unit=unit,
            baseline_name=f"N/10 jobs ({small})",
            note=f"N = {args.jobs} jobs x {args.runs} run(s), baseline x {args.baseline_runs}",
        )
    print(
        f"baseline: the same run at {small} jobs in the same process "
        f"(median of {len(baselines)}); wave times include up to one {args.poll_s:g}s pass "
        "of latency, which dominates the baseline's"
    )

    def ratio(figure: Callable[[Run], float]) -> float:
        base = med(baselines, figure)
        return med(larges, figure) / base if base else float("inf")

    per_job = max(
        ratio(lambda r: r.converge_s / r.jobs),
        ratio(lambda r: r.converge_reconciles / r.jobs),
        ratio(lambda r: r.converge_reconcile_s / r.converge_reconciles),
        ratio(lambda r: r.wave_reconciles / r.jobs),
        ratio(lambda r: r.wave_reconcile_s / max(1, r.wave_reconciles)),
    )
    own = med(larges, lambda r: r.change_reconciles_own)
    idle = med(larges, lambda r: r.idle_reconciles_per_s)
    findings = [
        f"per-job work {'is O(1)' if per_job <= 1.5 else 'grows'} "
        f"({per_job:.2f}x per job from {small} to {args.jobs} jobs)",
        f"{CHANGES} changes cost {own:.0f} reconciles of their own "
        f"({'O(1)' if own <= 2 * CHANGES else 'more than 2 per change'})",
    ]
    if idle >= 1:
        findings.append(
            f"but with nothing changing it reconciles {idle:.0f}/s "
            f"(every running job each {REQUEUE_RUNNING_S:g}s): O(jobs), not O(changes)"
        )
    print("verdict: " + "; ".join(findings))


if __name__ == "__main__":
    main()
