"""What must hold after every chaos trial, each a function of what the trial saw: violations as
sentences, none when it holds.

`JobSeen` is one job as the trial found it afterwards: its rows in the database, what its
trainers wrote to their own metrics files, what the detector says when its stored records are
replayed, and how many times each attempt's workload was launched. The census (`census.py`)
adds what was seen while it ran. The checkers read only these, so the tests can fabricate them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.census import Census

# (attempt, kind, channel, step): one verdict.
VerdictKey = tuple[int, str, str, int]
# (attempt, step, name): one metric point.
PointKey = tuple[int, int, str]

EXPLAINED_STATES = {"succeeded", "failed", "cancelled", "paused"}


@dataclass
class JobSeen:
    id: int
    state: str
    state_reason: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # number, state, reason, outcome
    events: list[dict[str, Any]] = field(default_factory=list)  # kind, attempt, actor, reason, data
    points: dict[PointKey, float | str | None] = field(default_factory=dict)
    trainer_records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by attempt
    replayed_verdicts: list[VerdictKey] = field(default_factory=list)
    launches: dict[int, int] = field(default_factory=dict)  # attempt -> workload folders that ran


def duplicate_workloads(job: JobSeen, census: Census) -> list[str]:
    """At most one launch and one trainer process per attempt; two attempts' trainers alive at
    once only while the older one is being stopped (it saves on SIGTERM)."""
    found = [
        f"job {job.id} attempt {attempt}: its workload was launched {count} times"
        for attempt, count in sorted(job.launches.items())
        if count > 1
    ]
    pids = Counter((s.attempt) for s in census.sightings.values() if s.job_id == job.id)
    found += [
        f"job {job.id} attempt {attempt}: {count} trainer processes"
        for attempt, count in sorted(pids.items())
        if count > 1
    ]
    unstopped = {o.attempts for o in census.overlaps if o.job_id == job.id and not o.older_stopping}
    found += [
        f"job {job.id}: attempts {', '.join(map(str, attempts))} trained at once, "
        "the older not asked to stop"
        for attempts in sorted(unstopped)
    ]
    return found


def online_verdicts(job: JobSeen) -> list[VerdictKey]:
    """The verdicts the watchdog recorded, one per `verdict.*` event."""
    return [
        (e["attempt"], e["kind"].removeprefix("verdict."), e["data"].get("channel"), e["data"].get("step"))
        for e in job.events
        if e["kind"].startswith("verdict.")
    ]


def verdicts(job: JobSeen) -> list[str]:
    """Every verdict the stored records call for is recorded once, and no other; every rollback
    the watchdog made has its verdict."""
    online = Counter(online_verdicts(job))
    replayed = Counter(job.replayed_verdicts)
    found = [
        f"job {job.id}: verdict {_verdict(key)} recorded {count} times"
        for key, count in sorted(online.items())
        if count > 1
    ]
    found += [f"job {job.id}: verdict {_verdict(key)} lost" for key in sorted(set(replayed) - set(online))]
    found += [
        f"job {job.id}: verdict {_verdict(key)} recorded, but its records do not call for it"
        for key in sorted(set(online) - set(replayed))
    ]
    for event in job.events:
        if event["kind"] != "job.rolled_back" or event["actor"] != "watchdog":
            continue
        data = event["data"]
        evidence = data.get("evidence") or {}
        judged = data.get("rolled_back_attempt")
        if not any(
            key[0] == judged and key[2] == evidence.get("channel") and key[3] == evidence.get("step")
            for key in online
        ):
            found.append(f"job {job.id}: rollback to attempt {event['attempt']} has no verdict behind it")
    return found


def _verdict(key: VerdictKey) -> str:
    attempt, kind, channel, step = key
    return f"{kind} on {channel} at step {step} of attempt {attempt}"


def _same(written: Any, stored: Any) -> bool:
    if isinstance(written, str) or isinstance(stored, str):
        return written == stored  # "NaN", "Infinity", "-Infinity" on both sides
    return stored is not None and float(written) == float(stored)


def metric_records(job: JobSeen) -> list[str]:
    """What the trainers wrote to their own files against the database: every stored point was
    written, with that value; no record is missing before the last one stored (delivery is in
    order, so a gap is a loss); the attempt that finished the job has every record stored."""
    found: list[str] = []
    finished = {a["number"] for a in job.attempts if a["state"] == "succeeded"}
    written: dict[PointKey, Any] = {}
    for attempt, records in sorted(job.trainer_records.items()):
        stored_flags = []
        for record in records:
            keys = [(attempt, record["step"], name) for name in record["metrics"]]
            for key, value in zip(keys, record["metrics"].values(), strict=True):
                written.setdefault(key, value)
            stored_flags.append(all(key in job.points for key in keys))
        last_stored = max((i for i, stored in enumerate(stored_flags) if stored), default=-1)
        end = len(records) if attempt in finished else last_stored + 1
        missing = [records[i]["step"] for i in range(end) if not stored_flags[i]]
        if missing:
            where = "of the attempt that finished" if attempt in finished else "before a later stored one"
            found.append(
                f"job {job.id} attempt {attempt}: {len(missing)} record(s) {where} not stored "
                f"(steps {_steps(missing)})"
            )
    for attempt in sorted(finished - set(job.trainer_records)):
        found.append(f"job {job.id} attempt {attempt}: finished, but its trainer's metrics file is missing")
    strays = [key for key in job.points if key[0] in job.trainer_records and key not in written]
    if strays:
        found.append(f"job {job.id}: {len(strays)} stored point(s) no trainer wrote, e.g. {sorted(strays)[0]}")
    changed = [key for key, value in job.points.items() if key in written and not _same(written[key], value)]
    if changed:
        key = sorted(changed)[0]
        found.append(
            f"job {job.id}: {len(changed)} stored point(s) differ from what the trainer wrote, "
            f"e.g. {key}: wrote {written[key]!r}, stored {job.points[key]!r}"
        )
    return found


def _steps(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[:8]))
    return shown + (", ..." if len(steps) > 8 else "")


def rollback_checkpoints(job: JobSeen, census: Census) -> list[str]:
    """No attempt was told to resume from a checkpoint that was not on disk when it started."""
    return [
        f"job {job.id} attempt {check.attempt}: resumed from {check.resume_from}, "
        "which was missing (no manifest) when its trainer started"
        for check in census.resume_checks.values()
        if check.job_id == job.id and not check.present
    ]


def explained_state(job: JobSeen) -> list[str]:
    """The job runs, or it ended (or paused) with an event saying why."""
    if job.state == "running":
        return []
    if job.state not in EXPLAINED_STATES:
        last = [e["kind"] for e in job.events[-3:]]
        return [f"job {job.id} is stuck {job.state} (last events: {', '.join(last) or 'none'})"]
    said = [e for e in job.events if e["kind"] == f"job.{job.state}"]
    if not said:
        return [f"job {job.id} is {job.state} with no job.{job.state} event saying why"]
    if not said[-1].get("reason"):
        return [f"job {job.id} is {job.state}: its job.{job.state} event gives no reason"]
    return []


# Name -> checker, in the order the trial table lists them.
INVARIANTS: dict[str, Callable[[JobSeen, Census], list[str]]] = {
    "duplicate workloads": duplicate_workloads,
    "verdicts lost/duplicated": lambda job, _census: verdicts(job),
    "metric records lost": lambda job, _census: metric_records(job),
    "rollback to missing checkpoint": rollback_checkpoints,
    "job state unexplained": lambda job, _census: explained_state(job),
}


def check(jobs: list[JobSeen], census: Census) -> dict[str, list[str]]:
    """Every invariant over every job: name -> violations."""
    return {name: [v for job in jobs for v in checker(job, census)] for name, checker in INVARIANTS.items()}
