"""Submissions per second and p50/p99 latency of POST /v1/jobs against real Postgres.

Starts `pretrainctl serve` on a throwaway Postgres (or TEST_DATABASE_URL), then drives it with
16 concurrent HTTP clients. The baseline, measured in the same run on the same server, is
GET /healthz: the cost of the HTTP stack alone, so the ratio shows what validation and the
transactional insert add. Prints the median of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import time

import httpx
import yaml
from harness import ADMIN_TOKEN, ROOT, percentile, record, running_api

from tests.servers import provide_postgres


async def drive(url: str, make_request, *, clients: int, requests: int) -> list[float]:
    """Send `requests` requests from `clients` concurrent clients; return each latency in seconds."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client_loop(http: httpx.AsyncClient) -> None:
        for i in counter:
            started = time.perf_counter()
            response = await make_request(http, i)
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 300:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
    return latencies


def measure(url: str, make_request, *, clients: int, requests: int) -> dict[str, float]:
    started = time.perf_counter()
    latencies = asyncio.run(drive(url, make_request, clients=clients, requests=requests))
    elapsed = time.perf_counter() - started
    return {
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    spec = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())

    async def submit(http: httpx.AsyncClient, i: int) -> httpx.Response:
        body = copy.deepcopy(spec)
        body["name"] = f"bench-{time.monotonic_ns()}-{i}"
        return await http.post("/v1/jobs", json=body)

    async def healthz(http: httpx.AsyncClient, i: int) -> httpx.Response:
        return await http.get("/healthz")

    with provide_postgres() as database_url, running_api(database_url) as url:
        measure(url, submit, clients=args.clients, requests=50)  # warm-up
        submits, baselines = [], []
        for _ in range(args.rounds):
            submits.append(measure(url, submit, clients=args.clients, requests=args.requests))
            baselines.append(measure(url, healthz, clients=args.clients, requests=args.requests))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"api_submit: {args.clients} clients, {args.requests} requests x {args.rounds} rounds, Postgres, one uvicorn worker")
    print(f"{'figure':<34}{'median':>12}{'baseline':>12}{'ratio':>8}")
    units = {"per_second": "req/s", "p50_ms": "ms", "p99_ms": "ms"}
    for key, label in [("per_second", "submissions/s"), ("p50_ms", "p50 latency ms"), ("p99_ms", "p99 latency ms")]:
        ours, base = median(submits, key), median(baselines, key)
        print(f"{label:<34}{ours:>12.1f}{base:>12.1f}{ours / base:>8.2f}")
        record(
            "api_submit", label, ours, base, ours / base, unit=units[key],
            baseline_name="GET /healthz same server",
            note=f"{args.clients} clients, {args.requests} requests x {args.rounds} rounds, Postgres",
        )  # fmt: skip
    print("baseline: GET /healthz on the same server in the same run")


if __name__ == "__main__":
    main()
