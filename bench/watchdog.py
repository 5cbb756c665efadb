"""Watchdog service: metric ingest through the API against a raw COPY, and verdict latency.

It runs the watchdog's real parts: a `pretrainctl serve` process on a throwaway Postgres (or
TEST_DATABASE_URL) with PRETRAIN_REDIS_URL set (a throwaway Redis, or TEST_REDIS_URL). Ingest
throughput is metric points/s through POST /v1/jobs/{id}/metrics: 8 concurrent clients, one job
and its job token each, 500 records a request, 5 metrics a record, each point stored in
`metric_points` and each batch added to the `pretrain:metrics` stream (no consumer reads it
meanwhile). The baseline, in the same run against the same Postgres, is one psycopg
`COPY metric_points (...) FROM STDIN` of the very rows the API stored, the table truncated
before every round on both sides. Verdict latency is, with `consumer.run` in a thread, the time
from the POST carrying a NaN returning to its `verdict.nonfinite` event being visible in the
events table, polled every 5 ms; p50 and p99 over the trials.

The detector's own precision, recall and throughput are `bench/detector.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import httpx
import psycopg
import redis
import yaml
from harness import ROOT, percentile, record, running_api
from sqlalchemy.engine import make_url

from service import ingest, jobs
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.tokens import Principal, mint_token
from service.watchdog import consumer
from tests.servers import provide_postgres, provide_redis

BENCH = Principal(name="bench", role=Role.SUBMITTER)
METRICS_PER_RECORD = 5  # loss, loss/code, loss/en, loss/zh, lr
COPY_COLUMNS = ingest.METRIC_COLUMNS
POLL_S = 0.005  # how often the latency trials look for the verdict
TOKENS_PER_STEP = 2048  # examples/tiny-cpu.yaml: 16 sequences of 128 tokens
STEPS = 1_000_000  # the ingest rounds report thousands of steps; a record past the last is refused


def service_records(job_id: int, steps: range, nan_at: int | None = None) -> list[dict]:
    """A gently falling loss with mild noise, per channel, and the learning rate."""
    records = []
    for step in steps:
        base = 3.0 - 1e-5 * step + 0.02 * ((step * 7919) % 13 - 6) / 6
        metrics: dict[str, float | str] = {
            "loss": base * 1.05,
            "loss/code": base * 0.9,
            "loss/en": base,
            "loss/zh": base * 1.2,
            "lr": 1e-3 * (1 - step / 1e7),
        }
        if step == nan_at:
            metrics.update({"loss": "NaN", "loss/code": "NaN", "loss/en": "NaN", "loss/zh": "NaN"})
        records.append({"job": str(job_id), "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable", "tokens": step * 2048, "metrics": metrics})
    return records


def new_job(sessions, name: str, *, checkpoints: tuple[int, ...] = ()) -> tuple[int, str]:
    """Submit the tiny example (a million steps long) as `name`, register `checkpoints`; return
    its id and the token of its attempt 0, as the controller gives its trainer."""
    spec = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    spec["name"] = name
    spec["stages"][0]["tokens"] = STEPS * TOKENS_PER_STEP
    spec["watchdog"] = {"rollback_margin_steps": 5}
    with sessions() as session:
        job = jobs.submit_job(session, raw=copy.deepcopy(spec), principal=BENCH)
        for step in checkpoints:
            ingest.record_checkpoint(
                session, job_id=job.id, attempt=0, step=step, tokens=step * 2048,
                path=f"/c/{job.id}/{step}", manifest_sha256=f"{step:064x}", actor="bench",
            )  # fmt: skip
        _, token = mint_token(session, name=f"{name}-a0", role=Role.VIEWER, created_by="bench", job_id=job.id, attempt=0)
        return job.id, token


@contextmanager
def api_streaming_to(database_url: str, redis_url: str) -> Iterator[str]:
    """`harness.running_api` with PRETRAIN_REDIS_URL in the server's environment."""
    with ExitStack() as stack:
        saved = os.environ.get("PRETRAIN_REDIS_URL")
        os.environ["PRETRAIN_REDIS_URL"] = redis_url
        try:
            url = stack.enter_context(running_api(database_url))  # the server copies the env here
        finally:
            if saved is None:
                os.environ.pop("PRETRAIN_REDIS_URL")
            else:
                os.environ["PRETRAIN_REDIS_URL"] = saved
        yield url


async def post_batches(url: str, clients: list[tuple[int, str, list[bytes]]]) -> int:
    """Each (job, token, bodies) is one client posting its bodies in turn; points stored, in all."""

    async def client_loop(job_id: int, token: str, bodies: list[bytes]) -> int:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        stored = 0
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for body in bodies:
                response = await http.post(f"/v1/jobs/{job_id}/metrics", content=body)
                if response.status_code != 202:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                stored += response.json()["stored"]
        return stored

    return sum(await asyncio.gather(*(client_loop(*c) for c in clients)))


def ingest_throughput(
    url: str, dsn: str, redis_url: str, sessions, *, clients: int, requests: int, batch: int, rounds: int
) -> tuple[list[float], list[float], int]:
    """(API points/s per round, COPY points/s per round, points a round)."""
    plan, rows = [], []
    created_at = datetime.now(UTC)
    for c in range(clients):
        job_id, token = new_job(sessions, f"bench-ingest-{time.monotonic_ns()}-{c}")
        bodies = []
        for r in range(requests):
            records = service_records(job_id, range(r * batch, (r + 1) * batch))
            bodies.append(json.dumps(records).encode())
            rows += ingest.metric_rows(job_id, records, created_at)
        plan.append((job_id, token, bodies))
    stream = redis.Redis.from_url(redis_url)

    def fresh(conn: psycopg.Connection) -> None:
        conn.execute("TRUNCATE metric_points")
        conn.commit()
        stream.delete(consumer.STREAM)

    api, copied = [], []
    with psycopg.connect(dsn) as conn:
        fresh(conn)
        asyncio.run(post_batches(url, [(j, t, b[:1]) for j, t, b in plan]))  # warm-up
        for _ in range(rounds):
            fresh(conn)
            started = time.perf_counter()
            stored = asyncio.run(post_batches(url, plan))
            api.append(stored / (time.perf_counter() - started))
            if stored != len(rows):
                raise RuntimeError(f"the API stored {stored:,} points, not {len(rows):,}")

            fresh(conn)
            started = time.perf_counter()
            with conn.cursor() as cursor, cursor.copy(f"COPY metric_points ({', '.join(COPY_COLUMNS)}) FROM STDIN") as out:
                for row in rows:
                    out.write_row(row)
            conn.commit()
            copied.append(len(rows) / (time.perf_counter() - started))
        fresh(conn)
    return api, copied, len(rows)


def verdict_latency(url: str, dsn: str, settings: Settings, sessions, *, trials: int) -> tuple[list[float], int]:
    """Seconds from the NaN-carrying POST returning to its verdict.nonfinite event, per trial,
    and how many of the trials' jobs were rolled back (in the verdict's own transaction)."""
    stream = redis.Redis.from_url(settings.resolved_redis_url)
    stream.delete(consumer.STREAM)  # nothing left over from the throughput rounds
    stop = threading.Event()
    watcher = threading.Thread(target=consumer.run, args=(settings, stop), kwargs={"block_ms": 100}, daemon=True)
    watcher.start()

    def caught_up() -> bool:
        groups = stream.xinfo_groups(consumer.STREAM) if stream.exists(consumer.STREAM) else []
        if not groups:
            return False
        last = stream.xinfo_stream(consumer.STREAM)["last-generated-id"]
        return groups[0]["last-delivered-id"] == last and groups[0]["pending"] == 0

    samples, rolled_back = [], 0
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, httpx.Client(base_url=url, timeout=60) as http:
            for trial in range(trials):
                job_id, token = new_job(sessions, f"bench-nan-{time.monotonic_ns()}-{trial}", checkpoints=(20, 40))
                headers = {"Authorization": f"Bearer {token}"}
                records = service_records(job_id, range(60), nan_at=59)
                response = http.post(f"/v1/jobs/{job_id}/metrics", json=records[:50], headers=headers)
                response.raise_for_status()
                deadline = time.monotonic() + 30
                while not caught_up():  # the clean prefix judged: the NaN batch is all that is new
                    if time.monotonic() > deadline or not watcher.is_alive():
                        raise RuntimeError("the watchdog consumer did not catch up")
                    time.sleep(0.01)
                response = http.post(f"/v1/jobs/{job_id}/metrics", json=records[50:], headers=headers)
                returned = time.perf_counter()
                response.raise_for_status()
                deadline = time.monotonic() + 30
                while not conn.execute(
                    "SELECT 1 FROM events WHERE job_id = %s AND kind = 'verdict.nonfinite' LIMIT 1", (job_id,)
                ).fetchone():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no verdict.nonfinite for job {job_id}")
                    time.sleep(POLL_S)
                samples.append(time.perf_counter() - returned)
                rolled_back += conn.execute(
                    "SELECT count(*) FROM events WHERE job_id = %s AND kind = 'job.rolled_back'", (job_id,)
                ).fetchone()[0] == 1
    finally:
        stop.set()
        watcher.join(timeout=10)
    return samples, rolled_back


def service_section(args: argparse.Namespace) -> None:
    with provide_postgres() as database_url, provide_redis() as redis_url, api_streaming_to(database_url, redis_url) as url:
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        sessions = get_sessionmaker(database_url)
        api, copied, points = ingest_throughput(
            url, dsn, redis_url, sessions,
            clients=args.clients, requests=args.requests, batch=args.batch, rounds=args.rounds,
        )  # fmt: skip
        settings = Settings(database_url=database_url, redis_url=redis_url)
        latency, rolled_back = verdict_latency(url, dsn, settings, sessions, trials=args.trials)

    ours, base = statistics.median(api), statistics.median(copied)
    records = points // METRICS_PER_RECORD
    print()
    print(
        f"watchdog service on {os.cpu_count()} CPUs: pretrainctl serve (one uvicorn worker) -> "
        f"Postgres + Redis stream (not consumed meanwhile), {args.clients} clients x {args.requests} "
        f"requests x {args.batch} records ({records:,} records, {points:,} points) a round, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'figure':<34}{'median':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'ingest points/s':<34}{ours:>12,.0f}{base:>12,.0f}{ours / base:>8.3f}")
    print(
        f"{'ingest records/s (5 points each)':<34}{ours / METRICS_PER_RECORD:>12,.0f}"
        f"{base / METRICS_PER_RECORD:>12,.0f}{ours / base:>8.3f}"
    )
    shape = (
        f"{args.clients} clients x {args.requests} requests x {args.batch} records a round, "
        f"median of {args.rounds} rounds; Postgres + Redis stream"
    )
    for label, unit, scale in [
        ("ingest points/s", "points/s", 1),
        ("ingest records/s (5 points each)", "records/s", METRICS_PER_RECORD),
    ]:
        record(
            "watchdog", label, ours / scale, base / scale, ours / base, unit=unit,
            baseline_name="COPY into the same table", note=shape,
        )  # fmt: skip
    print(
        "baseline: one psycopg COPY metric_points (...) FROM STDIN of the same rows, one connection, "
        "one commit; ratio = API points/s / COPY points/s"
    )
    print(
        "rounds, points/s: API " + " / ".join(f"{v:,.0f}" for v in api)
        + "; COPY " + " / ".join(f"{v:,.0f}" for v in copied)
    )
    ms = [s * 1000 for s in latency]
    p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
    spread = f"min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} trials, {rolled_back} rolled back"
    print(f"{'verdict latency ms p50 (NaN -> event)':<38}{p50:>8.1f}   {spread}")
    print(f"{'verdict latency ms p99 (NaN -> event)':<38}{p99:>8.1f}")
    for label, value in [("p50", p50), ("p99", p99)]:
        record(
            "watchdog", f"verdict latency ms {label} (NaN -> event)", value, None, None,
            unit="ms", note=spread,
        )  # fmt: skip
    print(
        f"latency: the NaN-carrying POST returning -> verdict.nonfinite visible in events (polled every "
        f"{POLL_S * 1000:.0f} ms), consumer.run in a thread; each trial a fresh job, its 50-record clean "
        "prefix already judged, then a 10-record batch whose last record is NaN; the verdict commits "
        "with its rollback"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent ingest clients, a job each")
    parser.add_argument("--requests", type=int, default=6, help="ingest requests per client per round")
    parser.add_argument("--batch", type=int, default=500, help="records per ingest request")
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds; the median counts")
    parser.add_argument("--trials", type=int, default=100, help="verdict-latency trials; p50 and p99 count")
    args = parser.parse_args()
    logging.getLogger("service.watchdog.consumer").setLevel(logging.ERROR)  # no "rolled back" lines
    service_section(args)


if __name__ == "__main__":
    main()
