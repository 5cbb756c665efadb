"""GET /metrics's database work with 10k and with 1M stored metric points.

A scrape reads `latest_metrics` (each live job's newest point per metric, kept by ingest), so its
time should not move with the points stored. Against a throwaway Postgres (or TEST_DATABASE_URL):
4 live jobs reporting 5 metrics a step; the points are COPYed in, and each job's last record goes
through `ingest.store_metrics`, as the API stores it, which keeps `latest_metrics`. The figure is
`observability.exposition()` (the whole /metrics body, without HTTP) in ms, median of the runs.
The baseline, in the same run on the same rows, is the GROUP BY over the live jobs' points that
/metrics ran before `latest_metrics` (newest point per job and metric, and the ingest lag).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import psycopg
import yaml
from harness import ROOT, record, timed
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from service import ingest, jobs, observability
from service.db import migrate
from service.db.models import Job, MetricPoint, Role
from service.db.session import get_sessionmaker
from service.lifecycle import ACTIVE_JOB_STATES
from service.settings import Settings
from service.tokens import Principal
from tests.servers import provide_postgres

BENCH = Principal(name="bench", role=Role.SUBMITTER)
JOBS = 4
NAMES = ("loss", "loss/code", "loss/en", "loss/zh", "lr")
TOKENS_PER_STEP = 2048  # examples/tiny-cpu.yaml: 16 sequences of 128 tokens


def new_jobs(sessions, steps: int) -> list[int]:
    """JOBS live copies of the tiny example, each long enough for `steps` steps."""
    spec = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    spec["stages"][0]["tokens"] = steps * TOKENS_PER_STEP
    ids = []
    with sessions() as session:
        for index in range(JOBS):
            job = jobs.submit_job(session, raw={**copy.deepcopy(spec), "name": f"scrape-{index}"}, principal=BENCH)
            ids.append(job.id)
    return ids


def fill(dsn: str, sessions, job_ids: list[int], points: int) -> None:
    """`points` points over the jobs: all but each job's last step COPYed, the last one ingested."""
    steps = points // (JOBS * len(NAMES))
    with psycopg.connect(dsn) as connection:
        connection.execute("TRUNCATE metric_points, latest_metrics")
        with connection.cursor() as cursor, cursor.copy(
            "COPY metric_points (job_id, attempt, step, name, value, tokens, created_at) FROM STDIN"
        ) as copy_in:
            for job_id in job_ids:
                for step in range(steps - 1):
                    for name in NAMES:
                        copy_in.write_row((job_id, 0, step, name, 3.0 - step * 1e-6, step * TOKENS_PER_STEP, "now"))
    last = steps - 1
    with sessions() as session:
        for job_id in job_ids:
            metrics = {name: 2.5 for name in NAMES}
            record_ = {"job": str(job_id), "attempt": 0, "step": last, "tokens": last * TOKENS_PER_STEP, "metrics": metrics}
            ingest.store_metrics(session, job_id=job_id, records=[record_])
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE metric_points")  # no autovacuum mid-measurement
        connection.execute("ANALYZE latest_metrics")


def grouped_over_points(sessions) -> None:
    """What /metrics asked of the points before `latest_metrics`: the same two GROUP BYs."""
    with sessions() as session:
        newest = (
            select(MetricPoint.job_id, MetricPoint.name, func.max(MetricPoint.id).label("id"))
            .join(Job, Job.id == MetricPoint.job_id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(MetricPoint.job_id, MetricPoint.name)
            .subquery()
        )
        session.execute(
            select(Job.id, Job.name, MetricPoint.value, MetricPoint.step, MetricPoint.tokens)
            .join(newest, MetricPoint.id == newest.c.id)
            .join(Job, Job.id == MetricPoint.job_id)
        ).all()
        session.execute(
            select(Job.id, func.max(MetricPoint.created_at))
            .join(MetricPoint, MetricPoint.job_id == Job.id)
            .where(Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(Job.id)
        ).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="points stored in the small round")
    parser.add_argument("--large", type=int, default=1_000_000, help="points stored in the large round")
    parser.add_argument("--runs", type=int, default=20, help="scrapes timed per round; the median counts")
    args = parser.parse_args()

    rows = []
    with provide_postgres() as database_url:
        migrate.upgrade(Settings(database_url=database_url))
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        sessions = get_sessionmaker(database_url)
        job_ids = new_jobs(sessions, args.large // (JOBS * len(NAMES)) + 1)
        for points in (args.small, args.large):
            fill(dsn, sessions, job_ids, points)
            with sessions() as session:
                stored = session.scalar(text("SELECT count(*) FROM metric_points"))
            observability.exposition(sessions), grouped_over_points(sessions)  # warm-up
            scrape = statistics.median(timed(lambda: observability.exposition(sessions), args.runs)) * 1000
            before = statistics.median(timed(lambda: grouped_over_points(sessions), args.runs)) * 1000
            rows.append((stored, scrape, before))

    print(f"GET /metrics body on Postgres, {JOBS} live jobs x {len(NAMES)} metrics, median of {args.runs} scrapes")
    print(f"{'points stored':>14}{'scrape ms':>12}{'GROUP BY ms':>14}{'ratio':>8}")
    for stored, scrape, before in rows:
        print(f"{stored:>14,}{scrape:>12.2f}{before:>14.2f}{scrape / before:>8.3f}")
        record(
            "scrape",
            f"/metrics body ms, {stored:,} points",
            scrape,
            before,
            scrape / before,
            unit="ms",
            baseline_name="the GROUP BY over points it ran before",
            note=f"{JOBS} live jobs x {len(NAMES)} metrics; median of {args.runs}",
        )
    (small, small_ms, _), (large, large_ms, _) = rows
    print(f"scrape time at {large:,} points / at {small:,} points: {large_ms / small_ms:.2f}")
    record(
        "scrape",
        f"/metrics body, {large:,} vs {small:,} points",
        large_ms / small_ms,
        None,
        None,
        unit="x",
        note="1.0 = independent of the points stored",
    )


if __name__ == "__main__":
    main()
