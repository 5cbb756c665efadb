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
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, provide_postgres  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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

    with provide_postgres() as database_url:
        env = {**os.environ, "PRETRAIN_DATABASE_URL": database_url, "PRETRAIN_ADMIN_TOKEN": ADMIN_TOKEN, "PRETRAIN_LOG_LEVEL": "warning"}
        subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            measure(url, submit, clients=args.clients, requests=50)  # warm-up
            submits, baselines = [], []
            for _ in range(args.rounds):
                submits.append(measure(url, submit, clients=args.clients, requests=args.requests))
                baselines.append(measure(url, healthz, clients=args.clients, requests=args.requests))
        finally:
            server.terminate()
            server.wait(timeout=10)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"api_submit: {args.clients} clients, {args.requests} requests x {args.rounds} rounds, Postgres, one uvicorn worker")
    print(f"{'figure':<34}{'median':>12}{'baseline':>12}{'ratio':>8}")
    for key, label in [("per_second", "submissions/s"), ("p50_ms", "p50 latency ms"), ("p99_ms", "p99 latency ms")]:
        ours, base = median(submits, key), median(baselines, key)
        print(f"{label:<34}{ours:>12.1f}{base:>12.1f}{ours / base:>8.2f}")
    print("baseline: GET /healthz on the same server in the same run")


if __name__ == "__main__":
    main()
