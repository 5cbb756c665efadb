"""`python -m trainer.train --config FILE`, as the local backend runs it, without training.

It does what the real trainer does at its edges, as `FAKE_TRAINER_PLAN` (a JSON file) says for
the attempt in its config: notes that it started (with its pid, token and environment) in `runs.log` beside
the plan, reports that it runs (the metrics file), waits for a file if told to (ignoring SIGTERM meanwhile if `slow_to_stop`), appends outcome
lines to `job.result_path`, and exits with the given code. Without a plan entry: completed, 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    attempt = config["job"]["attempt"]
    plan_path = Path(os.environ["FAKE_TRAINER_PLAN"])
    plan = json.loads(plan_path.read_text()).get(str(attempt), {})
    if plan.get("slow_to_stop"):  # as the trainer saving a checkpoint after SIGTERM: still there
        # before it says it runs, so a test that waited for runs.log knows SIGTERM is ignored
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with (plan_path.parent / "runs.log").open("a") as runs:
        runs.write(json.dumps({"attempt": attempt, "pid": os.getpid(), "token": config["metrics"]["token"],
                               "resume_from": config["checkpoint"]["resume_from"],
                               "skip_ranges": config["data"]["skip_ranges"], "lr_scale": config["lr_scale"],
                               "environ": dict(os.environ)}) + "\n")
    Path(config["metrics"]["jsonl_path"]).touch()
    if plan.get("wait_for"):
        deadline = time.monotonic() + 120
        while not Path(plan["wait_for"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = plan.get("lines", [{"outcome": "completed", "rank": 0, "step": 10, "message": "", "checkpoint": None}])
    with open(config["job"]["result_path"], "a") as result:
        for line in lines:
            result.write(json.dumps(line) + "\n")
    sys.stdout.write(plan.get("log", ""))
    return int(plan.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
