"""Watchdog detector: precision, recall and latency over labelled curves, and its throughput.

The curves are `tests/service/watchdog/curves.py`'s, in held-out-like variations: three noise
levels, spikes and drops just above and just below their thresholds (those below are labelled
"nothing"), messy delivery. Latency is steps from the anomaly's onset to the verdict: a
divergence is due a recover window (20) after its spike, a PPL rise at its third rising eval. Throughput is records/s through `json.loads` and
`Detector.observe`, one stream of interleaved jobs; the baseline is `json.loads` alone.

The second section runs the watchdog's real parts: a `pretrainctl serve` process on a throwaway
Postgres (or TEST_DATABASE_URL) with PRETRAIN_REDIS_URL set (a throwaway Redis, or
TEST_REDIS_URL). Ingest throughput is metric points/s through POST /v1/jobs/{id}/metrics: 8
concurrent clients, one job and its job token each, 500 records a request, 5 metrics a record,
each point stored in `metric_points` and each record added to the `pretrain:metrics` stream (no
consumer reads it meanwhile). The baseline, in the same run against the same Postgres, is one
psycopg `COPY metric_points (...) FROM STDIN` of the very rows the API stored, the table
truncated before every round on both sides. Verdict latency is, with `consumer.run` in a thread,
the time from the POST carrying a NaN returning to its `verdict.nonfinite` event being visible
in the events table, polled every 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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
from service.watchdog import Detector, consumer
from tests.servers import provide_postgres, provide_redis
from tests.service.watchdog import curves

KINDS = ("spike", "divergence", "nonfinite", "drop", "ppl_rise")


def labelled_curves(per_scenario: int) -> list[curves.Curve]:
    """Every scenario at each noise level, `per_scenario` seeds each."""
    scenarios: dict[str, Callable[..., curves.Curve]] = {
        "clean": curves.clean,
        "clean channels": curves.clean_channels,
        "stage change": curves.stage_change,
        "spike": curves.transient_spike,
        "spike just above (+18..25%)": lambda seed, **kw: curves.transient_spike(
            seed, size=0.18 + 0.07 * (seed % 8) / 7, **kw
        ),
        "spike just below (+8..12%)": lambda seed, **kw: _unlabelled(
            curves.transient_spike(seed, size=0.08 + 0.04 * (seed % 8) / 7, **kw)
        ),
        "divergence": curves.lasting_spike,
        "divergence just above (+20%)": lambda seed, **kw: curves.lasting_spike(
            seed, size=0.2, **kw
        ),
        "nonfinite": curves.nonfinite,
        "drop": curves.drop,
        "drop just above (-30%)": lambda seed, **kw: curves.drop(seed, size=0.3, **kw),
        "drop just below (-15%)": lambda seed, **kw: _unlabelled(
            curves.drop(seed, size=0.15, **kw)
        ),
        "channel spike": curves.channel_spike,
        "channel divergence": lambda seed, **kw: curves.channel_spike(seed, lasting=True, **kw),
        "ppl rise": curves.ppl_rise,
        "rollback": curves.rollback,
        "messy spike": lambda seed, **kw: curves.deliver(curves.transient_spike(seed, **kw), seed),
        "messy divergence": lambda seed, **kw: curves.deliver(
            curves.lasting_spike(seed, **kw), seed
        ),
    }
    out = []
    for noise in (0.01, 0.02, 0.03):
        for build in scenarios.values():
            for seed in range(per_scenario):
                out.append(build(50_000 + seed, noise=noise))
    return out


def _unlabelled(curve: curves.Curve) -> curves.Curve:
    return curves.Curve(curve.name + " (below threshold)", curve.job, curve.records, [])


def judge(all_curves: list[curves.Curve]) -> dict[str, dict[str, list]]:
    """Per verdict kind: expected, hits (latencies), misses, false alarms."""
    tally: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for curve in all_curves:
        detector = Detector()
        verdicts = [v for record in curve.records for v in detector.observe(record)]
        matched, missed, unexpected = curves.match(curve.expected, verdicts)
        for want, verdict in matched:
            onset = want.step if want.onset is None else want.onset
            tally[want.kind]["latency"].append(verdict.step - onset)
        for want in missed:
            tally[want.kind]["missed"].append(curve.job)
        for verdict in unexpected:
            tally[verdict.kind]["false"].append((curve.name, curve.job, verdict.step))
    return tally


def throughput(all_curves: list[curves.Curve], repeat: int) -> tuple[float, float, int]:
    """(detector records/s, json.loads-only records/s, records) over one interleaved stream."""
    lines = [json.dumps(r) for r in curves.interleave(all_curves, seed=0)]

    def parse_only() -> None:
        for line in lines:
            json.loads(line)

    def detect() -> None:
        detector = Detector()
        for line in lines:
            detector.observe(json.loads(line))

    def best(call: Callable[[], None]) -> float:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return len(lines) / min(samples)

    return best(detect), best(parse_only), len(lines)


# --- the service: ingest throughput and verdict latency ------------------------------------------

BENCH = Principal(name="bench", role=Role.SUBMITTER)
METRICS_PER_RECORD = 5  # loss, loss/code, loss/en, loss/zh, lr
COPY_COLUMNS = ("job_id", "attempt", "step", "name", "value", "nonfinite", "stage", "phase", "tokens", "created_at")


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
    """Submit the tiny example as `name`, register `checkpoints`; return its id and job token."""
    spec = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    spec["name"] = name
    spec["watchdog"] = {"rollback_margin_steps": 5}
    with sessions() as session:
        job = jobs.submit_job(session, raw=copy.deepcopy(spec), principal=BENCH)
        for step in checkpoints:
            ingest.record_checkpoint(
                session, job_id=job.id, attempt=0, step=step, tokens=step * 2048,
                path=f"/c/{job.id}/{step}", manifest_sha256=f"{step:064x}", actor="bench",
            )  # fmt: skip
        _, token = mint_token(session, name=f"{name}-a0", role=Role.VIEWER, created_by="bench", job_id=job.id)
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
            rows += [tuple({**row, "created_at": created_at}[k] for k in COPY_COLUMNS) for row in ingest.metric_rows(job_id, records)]
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
    stream = redis.Redis.from_url(settings.redis_url)
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
                    time.sleep(0.01)
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
    print(
        f"{'verdict latency ms (NaN -> event)':<34}{statistics.median(ms):>12.1f}"
        f"   min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} trials, {rolled_back} rolled back"
    )
    record(
        "watchdog", "verdict latency ms (NaN -> event)", statistics.median(ms), None, None,
        unit="ms",
        note=f"min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} trials, {rolled_back} rolled back",
    )  # fmt: skip
    print(
        "latency: the NaN-carrying POST returning -> verdict.nonfinite visible in events (polled every "
        "10 ms), consumer.run in a thread; each trial a fresh job, its 50-record clean prefix already "
        "judged, then a 10-record batch whose last record is NaN; the verdict commits with its rollback"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scenario", type=int, default=8, help="seeds per scenario and noise")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs; the best counts")
    parser.add_argument("--clients", type=int, default=8, help="concurrent ingest clients, a job each")
    parser.add_argument("--requests", type=int, default=6, help="ingest requests per client per round")
    parser.add_argument("--batch", type=int, default=500, help="records per ingest request")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds; the median counts")
    parser.add_argument("--trials", type=int, default=5, help="verdict-latency trials; the median counts")
    parser.add_argument("--detector-only", action="store_true", help="skip the API/Postgres/Redis section")
    args = parser.parse_args()

    all_curves = labelled_curves(args.per_scenario)
    tally = judge(all_curves)
    print(f"watchdog: {len(all_curves)} labelled curves, noise std 1/2/3% (clipped at ±8%)")
    print(
        f"{'verdict':<12}{'expected':>10}{'hits':>7}{'false':>7}{'precision':>11}{'recall':>8}"
        f"{'latency median':>16}{'p90':>6}"
    )
    failed = False
    for kind in KINDS:
        counts = tally[kind]
        hits, missed, false = len(counts["latency"]), len(counts["missed"]), len(counts["false"])
        precision = hits / (hits + false) if hits + false else float("nan")
        recall = hits / (hits + missed) if hits + missed else float("nan")
        latency = counts["latency"] or [float("nan")]
        print(
            f"{kind:<12}{hits + missed:>10}{hits:>7}{false:>7}{precision:>11.3f}{recall:>8.3f}"
            f"{statistics.median(latency):>16.1f}{percentile(latency, 0.9):>6.0f}"
        )
        failed |= bool(false)
    for kind, counts in tally.items():
        for name, job, step in counts["false"][:5]:
            print(f"  false {kind}: {name} {job} step {step}", file=sys.stderr)

    figure, baseline, records = throughput(
        all_curves[:: max(1, len(all_curves) // 40)], args.repeat
    )
    print(f"{'figure':<34}{'value':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'detector records/s':<34}{figure:>12,.0f}{baseline:>12,.0f}{figure / baseline:>8.2f}")
    record(
        "watchdog", "detector records/s", figure, baseline, figure / baseline, unit="records/s",
        baseline_name="json.loads parse only",
        note=(
            f"best of {args.repeat} over {records:,} interleaved records; verdicts over "
            f"{len(all_curves)} labelled curves: {sum(len(tally[k]['latency']) for k in KINDS)} hits "
            f"of {sum(len(tally[k]['latency']) + len(tally[k]['missed']) for k in KINDS)} expected, "
            f"{sum(len(tally[k]['false']) for k in KINDS)} false alarms"
        ),
    )  # fmt: skip
    print(
        f"baseline: json.loads alone over the same {records:,} interleaved records; "
        "ratio = detector / parse-only throughput"
    )
    if failed:
        print("false alarms above: see stderr", file=sys.stderr)
    if not args.detector_only:
        sys.stdout.flush()
        logging.getLogger("service.watchdog.consumer").setLevel(logging.ERROR)  # no "rolled back" lines
        service_section(args)


if __name__ == "__main__":
    main()
