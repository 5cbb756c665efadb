"""What every API benchmark needs: a real `pretrainctl serve` process and a timing helper.

Also `record`, with which every benchmark hands its headline figures to `bench/run_all.py`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


@contextmanager
def running_api(database_url: str) -> Iterator[str]:
    """Migrate `database_url`, serve the API on a free port, yield its base URL, then stop it."""
    env = {
        **os.environ,
        "PRETRAIN_ENVIRONMENT": "development",  # a throwaway server, on SQLite for some benchmarks
        "PRETRAIN_DATABASE_URL": database_url,
        "PRETRAIN_ADMIN_TOKEN": ADMIN_TOKEN,
        "PRETRAIN_LOG_LEVEL": "warning",
        # One principal drives each benchmark, far past the per-principal rate of spec routes.
        "PRETRAIN_SPEC_RATE_PER_S": "1000000",
        "PRETRAIN_SPEC_RATE_BURST": "1000000",
    }
    cli = [sys.executable, "-m", "pretrainctl"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the API did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    """Seconds each of `repeat` calls took."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def record(
    bench: str,
    figure: str,
    median: float,
    baseline: float | None,
    ratio: float | None,
    *,
    unit: str = "",
    baseline_name: str = "",
    note: str = "",
) -> None:
    """Append one headline figure as a JSON line to the file `BENCH_RESULTS` names, if set.

    `bench/run_all.py` sets it and turns the lines into the table in bench/RESULTS.md; run on
    its own, a benchmark only prints. Non-finite numbers (no baseline, a zero one) become null.
    """
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    row = {
        "bench": bench,
        "figure": figure,
        "median": _finite(median),
        "unit": unit,
        "baseline": _finite(baseline),
        "baseline_name": baseline_name,
        "ratio": _finite(ratio),
        "note": note,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
