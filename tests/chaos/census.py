"""Which trainers run, seen from outside: a thread that reads /proc a few times a second.

The local backend starts each attempt's trainer as `python -m trainer.train --config
<workloads>/<name>/trainer.json`; the folder's `meta.json` says which job and attempt it is.
The census notes every trainer process it sees (pid, job, attempt, first and last sighting),
every moment two attempts of one job had trainers alive at once (and whether the older one had
been asked to stop), and, the first time it sees a workload folder, whether the checkpoint the
attempt was told to resume from was on disk with its manifest then.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.controller.backends.local import STOP_FILE

SAMPLE_S = 0.25
MANIFEST = "manifest.json"  # trainer.checkpoint.MANIFEST; the tests do not import the trainer


@dataclass
class Sighting:
    pid: int
    job_id: int
    attempt: int
    folder: str
    first_s: float
    last_s: float


@dataclass(frozen=True)
class Overlap:
    """Two attempts of one job with trainers alive in the same sample."""

    job_id: int
    attempts: tuple[int, ...]
    older_stopping: bool  # every older one's workload had been asked to stop
    at_s: float


@dataclass(frozen=True)
class ResumeCheck:
    """What the census found on disk for an attempt's `resume_from` when it first saw the folder."""

    job_id: int
    attempt: int
    resume_from: str
    present: bool


@dataclass
class Census:
    # By (pid, workload folder): a pid the system hands out again is another trainer.
    sightings: dict[tuple[int, str], Sighting] = field(default_factory=dict)
    overlaps: list[Overlap] = field(default_factory=list)
    resume_checks: dict[tuple[int, int], ResumeCheck] = field(default_factory=dict)


class TrainerCensus:
    """Samples /proc every `SAMPLE_S` in a daemon thread until `stop`; `census` holds what it saw."""

    def __init__(self, workloads: Path) -> None:
        self.workloads = Path(workloads)
        self.census = Census()
        self.lock = threading.Lock()
        self._latest = -1.0  # when the newest sample was taken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-census", daemon=True)

    def start(self) -> TrainerCensus:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def alive(self, job_ids: set[int]) -> list[Sighting]:
        """The trainers of these jobs seen in the latest sample."""
        with self.lock:
            return [
                s
                for s in self.census.sightings.values()
                if s.job_id in job_ids and s.last_s == self._latest
            ]

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        seen = list(self._trainers())
        with self.lock:
            by_job: dict[int, set[int]] = {}
            for pid, folder, meta in seen:
                job_id, attempt = int(meta["job_id"]), int(meta["attempt"])
                sighting = self.census.sightings.get((pid, folder.name))
                if sighting is None:
                    sighting = self.census.sightings[(pid, folder.name)] = Sighting(
                        pid, job_id, attempt, folder.name, now, now
                    )
                    self._check_resume(folder, job_id, attempt)
                sighting.last_s = now
                by_job.setdefault(job_id, set()).add(attempt)
            for job_id, attempts in by_job.items():
                if len(attempts) > 1:
                    newest = max(attempts)
                    older = [a for a in attempts if a != newest]
                    stopping = all(self._stopping(job_id, a) for a in older)
                    self.census.overlaps.append(
                        Overlap(job_id, tuple(sorted(attempts)), stopping, now)
                    )
            self._latest = now

    def _stopping(self, job_id: int, attempt: int) -> bool:
        return any(
            (folder / STOP_FILE).exists() for folder in self.workloads.glob(f"*-{job_id}-a{attempt}")
        )

    def _check_resume(self, folder: Path, job_id: int, attempt: int) -> None:
        if (job_id, attempt) in self.census.resume_checks:
            return
        try:
            config = json.loads((folder / "trainer.json").read_text())
        except (OSError, ValueError):
            return
        resume = config.get("checkpoint", {}).get("resume_from")
        if resume:
            present = (Path(resume) / MANIFEST).is_file()
            self.census.resume_checks[(job_id, attempt)] = ResumeCheck(job_id, attempt, resume, present)

    def _trainers(self):
        """(pid, workload folder, meta) of every trainer process under our workloads; not the
        processes a trainer forks (checkpoint writers), which carry its command line."""
        root = str(self.workloads)
        found: dict[int, tuple[int, Path]] = {}  # pid -> (parent pid, folder)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
                with open(f"/proc/{entry.name}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if len(argv) < 5 or argv[1:3] != [b"-m", b"trainer.train"]:
                continue
            config = Path(argv[4].decode(errors="replace"))
            if str(config).startswith(root):
                found[int(entry.name)] = (parent, config.parent)
        for pid, (parent, folder) in found.items():
            if parent in found:
                continue
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            yield pid, folder, meta
