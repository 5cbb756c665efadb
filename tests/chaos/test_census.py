"""The census on stand-in trainers: processes with a trainer's command line, which sleep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.controller.backends.local import STOP_FILE
from tests.chaos.census import ResumeCheck, TrainerCensus
from tests.e2e.stack import wait_until

# `python -m trainer.train` run from this folder finds it before the real trainer; it forks, as
# a trainer's checkpoint writer does, so the census must not count the child.
STAND_IN = "import os, time\nos.fork()\ntime.sleep(60)\n"


def start_stand_in(tmp_path: Path, workloads: Path, attempt: int, resume_from: str | None) -> subprocess.Popen:
    package = tmp_path / "stand-in" / "trainer"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(STAND_IN)
    folder = workloads / f"job-1-a{attempt}"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"job_id": 1, "attempt": attempt, "name": folder.name}))
    (folder / "trainer.json").write_text(json.dumps({"checkpoint": {"resume_from": resume_from}}))
    command = [sys.executable, "-m", "trainer.train", "--config", str(folder / "trainer.json")]
    return subprocess.Popen(command, cwd=package.parent, start_new_session=True)


def test_census_counts_each_trainer_once_notes_overlaps_and_checks_the_resume_checkpoint(tmp_path: Path):
    workloads = tmp_path / "workloads"
    kept = tmp_path / "checkpoints" / "step-4"
    kept.mkdir(parents=True)
    (kept / "manifest.json").write_text("{}")
    census = TrainerCensus(workloads)
    processes = [
        start_stand_in(tmp_path, workloads, 0, None),
        start_stand_in(tmp_path, workloads, 1, str(kept)),
        start_stand_in(tmp_path, workloads, 2, str(tmp_path / "checkpoints" / "step-8")),
    ]
    try:
        # They start one after the other: a census of its own waits until all three run, so the
        # one under test never samples two of them alone.
        probe = TrainerCensus(workloads)
        wait_until(
            lambda: probe.sample() or len(probe.alive({1})) == 3,
            timeout=30,
            what="three stand-in trainers",
            interval=0.2,
        )
        census.sample()
        for attempt in (0, 1):
            (workloads / f"job-1-a{attempt}" / STOP_FILE).write_text("0")
        census.sample()
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    seen = census.census
    assert sorted(s.attempt for s in seen.sightings.values()) == [0, 1, 2]
    assert {o.attempts for o in seen.overlaps} == {(0, 1, 2)}
    assert not seen.overlaps[0].older_stopping and seen.overlaps[-1].older_stopping
    assert seen.resume_checks == {
        (1, 1): ResumeCheck(1, 1, str(kept), present=True),
        (1, 2): ResumeCheck(1, 2, str(tmp_path / "checkpoints" / "step-8"), present=False),
    }
