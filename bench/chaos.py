"""Chaos: seeded trials of the real loop with its parts killed; the trial table and the invariants.

Starts one `tests/chaos` deployment (API, controller, Celery worker, watchdog, local-backend
trainers, a private Postgres, Redis) and runs `--trials` seeded trials in it, one after another
(`tests/chaos/trial.py`): tiny jobs, some rolled back by the watchdog, while service processes
and trainers are SIGKILLed and Postgres is stopped mid-ingest. Prints the trial table and a
summary (faults per kind, violations per invariant, median trial seconds) and records the
headline figures for bench/RESULTS.md (`make chaos`, or `make bench` through run_all.py).
Exit status 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import ROOT, record

sys.path.insert(0, str(ROOT))

from tests.chaos.trial import ChaosDeployment, TrialRow, run_trial, summary, table  # noqa: E402
from tests.e2e.stack import own_redis_database  # noqa: E402
from tests.servers import provide_redis, throwaway_postgres_server  # noqa: E402

BENCH = "chaos"
BEGIN, END = "<!-- chaos: written by bench/chaos.py -->", "<!-- /chaos -->"
REDIS_DB = 9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="how many trials (default 100)")
    parser.add_argument("--seed", type=int, default=1000, help="the first trial's seed; then +1 each")
    parser.add_argument("--keep", type=Path, help="keep the deployment's logs and state here")
    parser.add_argument("--rows", type=Path, help="also append every trial's row to this JSON-lines file")
    parser.add_argument(
        "--results-md", type=Path, help="write the summary and trial table into this file's chaos section"
    )
    parser.add_argument(
        "--max-minutes", type=float, help="start no trial after this long (the table says how many ran)"
    )
    parser.add_argument(
        "--summarize", type=Path, metavar="ROWS", help="run nothing: summarize a --rows file of an earlier run"
    )
    args = parser.parse_args(argv)

    rows: list[TrialRow] = []
    started = time.monotonic()
    if args.summarize:
        rows = [TrialRow(**json.loads(line)) for line in args.summarize.read_text().splitlines() if line]
        args.seed = rows[0].seed if rows else args.seed
        return report(rows, args, started)
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        throwaway_postgres_server("chaos", survives_crash=True) as postgres,
        provide_redis() as redis_url,
    ):
        root = args.keep or Path(tmp)
        with ChaosDeployment(root, postgres, own_redis_database(redis_url, REDIS_DB)) as deployment:
            for seed in range(args.seed, args.seed + args.trials):
                if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
                    print(f"time budget spent: {len(rows)} of {args.trials} trials ran", flush=True)
                    break
                row = run_trial(deployment, seed)
                rows.append(row)
                print(table([row]).splitlines()[2], flush=True)
                if args.rows:
                    with args.rows.open("a") as out:
                        out.write(json.dumps(dataclasses.asdict(row)) + "\n")
    return report(rows, args, started)


def report(rows: list[TrialRow], args: argparse.Namespace, started: float) -> int:
    """Print the table and summary, write the RESULTS.md section, record the figures."""
    print()
    print(table(rows))
    figures = summary(rows)
    print(json.dumps(figures, indent=1))
    if not args.summarize:
        print(f"{len(rows)} trials in {time.monotonic() - started:.0f} s")

    if args.results_md:
        write_section(args.results_md, section(rows, figures, args))
    faults = ", ".join(f"{kind} {count}" for kind, count in figures["faults"].items())
    note = f"{figures['trials']} trials, {figures['jobs']} jobs; faults: {faults}"
    record(BENCH, "trials", figures["trials"], None, None, unit="trials", note=note)
    record(BENCH, "faults injected", sum(figures["faults"].values()), None, None, unit="faults")
    record(BENCH, "rollbacks", figures["rollbacks"], None, None, unit="rollbacks")
    record(BENCH, "rollbacks skipped", figures["rollbacks_skipped"], None, None, unit="rollbacks")
    for name, count in figures["violations"].items():
        record(BENCH, f"violations: {name}", count, None, None, unit="violations")
    record(BENCH, "unplanned process exits", figures["crashes"], None, None, unit="exits")
    record(BENCH, "median trial s", figures["median_trial_s"], None, None, unit="s")
    return 1 if any(figures["violations"].values()) else 0


def seed_ranges(seeds: list[int]) -> str:
    """`1–15, 1000–1036`: the seeds that ran (a summary may join rows of several runs)."""
    spans: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in spans)


def section(rows: list, figures: dict, args: argparse.Namespace) -> str:
    """The chaos section of bench/RESULTS.md: what ran, the summary, every violation, the table."""
    when = datetime.now(UTC)
    lines = [
        BEGIN,
        "## Chaos (`make chaos`)",
        "",
        f"- date: {when:%Y-%m-%d %H:%M} UTC; {len(rows)} of {args.trials} trials ran "
        f"(seeds {seed_ranges([row.seed for row in rows])})"
        + (f", time budget {args.max_minutes:g} min" if args.max_minutes is not None else ""),
        f"- jobs {figures['jobs']}, rollbacks {figures['rollbacks']} (and {figures['rollbacks_skipped']} "
        "a verdict asked for that the service refused, `rollback.skipped`), outcomes "
        + ", ".join(f"{state} {count}" for state, count in sorted(figures["outcomes"].items())),
        f"- median trial {figures['median_trial_s']:.1f} s; service processes that exited unasked: "
        f"{figures['crashes']}",
        "",
        "| faults injected | count |",
        "| --- | ---: |",
        *[f"| {kind} | {count} |" for kind, count in figures["faults"].items()],
        "",
        "| invariant | violations |",
        "| --- | ---: |",
        *[f"| {name} | {count} |" for name, count in figures["violations"].items()],
        "",
    ]
    found = [f"- seed {row.seed}: {name}: {v}" for row in rows for name, vs in row.violations.items() for v in vs]
    lines += (["Violations:", "", *found, ""] if found else [])
    lines += ["<details><summary>trial table</summary>", "", "```", table(rows, violations=False), "```", "</details>", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the chaos section of `path` (or add it at the end); the rest is run_all.py's."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
