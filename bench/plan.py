"""Latency of POST /v1/plan for a Qwen2-72B spec, over real HTTP, and of the planner alone.

Baseline, measured in the same run on the same server: GET /healthz (the HTTP stack alone).
Prints medians and p99 over many sequential requests.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile

import httpx
import yaml
from harness import ADMIN_TOKEN, ROOT, percentile, record, running_api, timed

from service.planner import plan_job
from service.spec import validate_spec


def qwen2_72b_spec() -> dict:
    """The 7B example re-laid for 72B on 512 H100s: TP 8, PP 4 (20 layers a stage), DP 16."""
    spec = yaml.safe_load((ROOT / "examples" / "qwen2-7b-pretrain.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec["name"] = "qwen2-72b-base"
    spec["model"] = {"preset": "qwen2-72b"}
    spec["parallelism"].update(tensor=8, pipeline=4)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    spec = qwen2_72b_spec()

    validated = validate_spec(spec)
    planner_ms = [s * 1000 for s in timed(lambda: plan_job(validated), args.requests)]

    with tempfile.TemporaryDirectory() as state, running_api(f"sqlite:///{state}/bench.db") as url:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            response = http.post("/v1/plan", json=spec)
            response.raise_for_status()
            for _ in range(20):  # warm-up
                http.post("/v1/plan", json=spec)
            plan_ms = [s * 1000 for s in timed(lambda: http.post("/v1/plan", json=spec), args.requests)]
            health_ms = [s * 1000 for s in timed(lambda: http.get("/healthz"), args.requests)]

    plan = response.json()
    print(f"plan: Qwen2-72B ({plan['params']['total']:,} params), {args.requests} sequential requests, one uvicorn worker")
    print(f"{'figure':<34}{'median':>10}{'p99':>10}{'baseline':>10}{'ratio':>8}")
    rows = [
        ("POST /v1/plan ms", plan_ms, health_ms),
        ("plan_job() in-process ms", planner_ms, None),
    ]
    for label, samples, baseline in rows:
        median = statistics.median(samples)
        base = statistics.median(baseline) if baseline else float("nan")
        ratio = median / base if baseline else float("nan")
        print(f"{label:<34}{median:>10.2f}{percentile(samples, 0.99):>10.2f}{base:>10.2f}{ratio:>8.2f}")
        record(
            "plan",
            label,
            median,
            base if baseline else None,
            ratio if baseline else None,
            unit="ms",
            baseline_name="GET /healthz same server" if baseline else "",
            note=f"p99 {percentile(samples, 0.99):.2f} ms; Qwen2-72B, {args.requests} requests",
        )
    print("baseline: GET /healthz on the same server in the same run; target: well under 50 ms")


if __name__ == "__main__":
    main()
