"""The checkpoint registry tells the truth: which checkpoints may be restored, which to delete.

Four decisions live here and nowhere else:

- `report_path_problem`: where a trainer may say it published a checkpoint: a directory under
  its job's own checkpoint directory (`job_directory`), nowhere else, since what it names is
  restored by a later attempt.

- `retain`: the retention rule. Keep the newest `checkpoint.keep_last` usable checkpoints; never
  prune one an attempt resumes from (that includes every rollback's target: it is the resume
  point of the attempt the rollback opened), nor the one a rollback of steps the watchdog has
  not judged yet would need (a watchdog behind the trainer), nor one a benchmark evaluation
  waits for or runs on (`evaluations.held_checkpoint_ids`); hand the trainer every unusable checkpoint not yet
  handed over (pruned, rolled back past, superseded, refuted) unless pinned. The trainer deletes
  what it is handed only if the manifest on disk still has the registered sha256.
- `choose`: the checkpoint a new attempt resumes from: the newest usable one (before a step),
  skipping, and marking unusable, any the storage refutes.
- `CheckpointStorage.problem`: where this process can read the checkpoint volume, whether a
  checkpoint is there as registered: its manifest present, the manifest's sha256 the registered
  one, every file it lists present with its size (sizes, not contents: a restore hashes those).

The manifest format is the trainer's (`trainer/checkpoint.py`, `write_manifest`): `manifest.json`
holding `{step, tokens, attempt, files: {relative path: {size, sha256}}}`, whose sha256 is that of
`json.dumps(manifest, sort_keys=True)`. A contract test builds one with the trainer's code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import evaluations
from service.db import repo
from service.db.models import Checkpoint, Job, WatchdogState, utcnow
from service.settings import Settings

MANIFEST = "manifest.json"


def job_directory(job_id: int, job_name: str, settings: Settings) -> str:
    """Where every attempt of a job writes its checkpoints, as trainers see the volume."""
    if not settings.checkpoint_root:
        raise ValueError("settings.checkpoint_root is not set; trainers need a checkpoint volume")
    return f"{settings.checkpoint_root.rstrip('/')}/{job_name}-{job_id}"


def report_path_problem(path: str, directory: str) -> str | None:
    """Why a path a workload reports (a checkpoint, a tokenizer job's result) is not under the
    job's `directory`; None if it is. Judged on the text: the volume need not be mounted here."""
    reported, root = PurePosixPath(path), PurePosixPath(directory)
    if ".." in reported.parts:
        return f"{path!r} has a '..' segment; report a path under {directory}"
    if not reported.is_absolute() or reported == root or not reported.is_relative_to(root):
        return f"{path!r} is not under this job's directory {directory}"
    return None


@dataclass(frozen=True)
class CheckpointStorage:
    """The checkpoint volume as this process sees it: trainers' `pod_root` is `local_root` here."""

    pod_root: PurePosixPath
    local_root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointStorage | None:
        """The volume where this process can read it: the local backend shares the trainers'
        paths; elsewhere only where `checkpoint_mount` says it is mounted. None: unreadable."""
        mount = settings.checkpoint_mount
        if mount is None and settings.backend == "local":
            mount = settings.checkpoint_root
        if mount is None or settings.checkpoint_root is None:
            return None
        return cls(PurePosixPath(settings.checkpoint_root), Path(mount))

    def local_path(self, path: str) -> Path | None:
        """Where a trainer's checkpoint path is here; None if it is not on the volume."""
        try:
            relative = PurePosixPath(path).relative_to(self.pod_root)
        except ValueError:
            return None
        if ".." in relative.parts:
            return None
        return self.local_root.joinpath(*relative.parts)

    def problem(self, checkpoint: Checkpoint) -> str | None:
        """Why the checkpoint on the volume is not the one registered; None if it is (or if its
        path is not on this volume, where this process cannot judge it)."""
        folder = self.local_path(checkpoint.path)
        if folder is None:
            return None
        registered = checkpoint.meta.get("manifest_sha256")
        return manifest_problem(folder, registered, shown_as=checkpoint.path)


def manifest_problem(folder: Path, manifest_sha256: str | None, *, shown_as: str | None = None) -> str | None:
    """Why `folder` is not the checkpoint sealed by a manifest with `manifest_sha256`; None if it is."""
    shown = shown_as or str(folder)
    if not folder.is_dir():
        return f"missing: {shown} is not on the checkpoint volume"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return f"corrupt: {shown} has no {MANIFEST}"
    except (OSError, ValueError) as exc:
        return f"corrupt: {shown}/{MANIFEST} is unreadable ({exc})"
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    if digest != manifest_sha256:
        return f"corrupt: {shown}/{MANIFEST} has sha256 {digest[:12]}…, registered {str(manifest_sha256)[:12]}…"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return f"corrupt: {shown}/{MANIFEST} lists no files"
    for name, entry in sorted(files.items()):
        file = folder / name
        if ".." in PurePosixPath(name).parts or not file.is_file():
            return f"corrupt: {shown}/{name} is missing"
        size = file.stat().st_size
        expected = entry.get("size") if isinstance(entry, dict) else None
        if size != expected:
            return f"corrupt: {shown}/{name} is {size} bytes, its manifest says {expected}"
    return None


@dataclass(frozen=True)
class Rejection:
    """A checkpoint `choose` passed over because the storage refuted it."""

    checkpoint_id: int
    step: int
    path: str
    reason: str

    def as_event_data(self) -> dict:
        return {"checkpoint_id": self.checkpoint_id, "step": self.step, "path": self.path, "reason": self.reason}


def mark_unusable(checkpoint: Checkpoint, reason: str) -> None:
    """Never restore it again; the first reason found is the one kept."""
    if checkpoint.usable or not checkpoint.unusable_reason:
        checkpoint.unusable_reason = reason
    checkpoint.usable = False


def choose(
    session: Session,
    *,
    job_id: int,
    before_step: int | None = None,
    storage: CheckpointStorage | None = None,
    rejected: list[Rejection] | None = None,
) -> Checkpoint | None:
    """The newest usable checkpoint (strictly before `before_step`) the storage does not refute.

    Refuted ones are marked unusable on the way (in the caller's transaction) and appended to
    `rejected`. Without a storage, the registry's word is taken.
    """
    for checkpoint in reversed(repo.list_checkpoints(session, job_id=job_id)):
        if not (checkpoint.usable and checkpoint.verified):
            continue
        if before_step is not None and checkpoint.step >= before_step:
            continue
        problem = storage.problem(checkpoint) if storage is not None else None
        if problem is None:
            return checkpoint
        mark_unusable(checkpoint, problem)
        if rejected is not None:
            rejected.append(Rejection(checkpoint.id, checkpoint.step, checkpoint.path, problem))
    return None


def pinned_ids(job: Job) -> set[int]:
    """Checkpoints an attempt resumes from, rollback targets among them: never pruned."""
    return {a.resume_from_checkpoint_id for a in job.attempts if a.resume_from_checkpoint_id}


def retain(session: Session, *, job: Job, registered: Checkpoint) -> list[Checkpoint]:
    """Apply the retention rule now that `registered` is stored: the checkpoints to delete.

    Marks those beyond `keep_last` unusable, and every checkpoint handed over as pruned by
    `registered` (a retried registration is answered with the same list). A checkpoint whose
    directory now holds a kept one (the same path, written again) is marked pruned, not handed over.
    """
    keep_last = job.pretrain_spec.checkpoint.keep_last
    # A checkpoint a benchmark evaluation waits for, runs on or has yet to be scheduled for is
    # kept until that evaluation ends.
    pinned = pinned_ids(job) | evaluations.held_checkpoint_ids(session, job)
    checkpoints = repo.list_checkpoints(session, job_id=job.id)
    reach = unjudged_reach(session, job=job, attempt=registered.attempt)
    if reach is not None:
        restorable = [c for c in checkpoints if c.usable and c.verified]
        needed = [c for c in restorable if c.step <= reach]
        # A mark too early for any checkpoint (the watchdog went away near the start): the
        # oldest one is the nearest a rollback of what it has not judged can still go back to.
        if needed:
            pinned.add(needed[-1].id)
        elif restorable:
            pinned.add(restorable[0].id)
    candidates = [c for c in checkpoints if c.usable and c.id not in pinned]
    for old in candidates[: max(0, len(candidates) - keep_last)]:
        mark_unusable(old, f"pruned: keep_last {keep_last}")
    kept_paths = _kept_paths(checkpoints, pinned)
    prune = []
    for checkpoint in checkpoints:
        if checkpoint.usable or checkpoint.pruned_at is not None or checkpoint.id in pinned:
            continue
        checkpoint.pruned_at = utcnow()
        checkpoint.pruned_by = registered.id
        if checkpoint.path not in kept_paths:
            prune.append(checkpoint)
    return prune


def unjudged_reach(session: Session, *, job: Job, attempt: int) -> int | None:
    """The newest step a rollback of what the watchdog has not judged yet may go back to: an
    episode open at its mark began at most a recover window earlier, and the rollback goes a
    margin before that. None where no watchdog has judged this attempt (its resume point is
    pinned, and a watchdog that keeps up needs nothing `keep_last` does not keep)."""
    rows = session.scalars(select(WatchdogState.state).where(WatchdogState.name.like(f"%/job/{job.id}")))
    marks = [state["mark"] for state in rows if isinstance(state, dict) and state.get("mark")]
    steps = [int(mark[1]) for mark in marks if int(mark[0]) == attempt]
    if not steps:
        return None
    policy = job.watchdog
    return min(steps) - policy.recover_window_steps - policy.rollback_margin_steps


def pruned_with(session: Session, *, job: Job, registered: Checkpoint) -> list[Checkpoint]:
    """What the registration of `registered` handed over for deletion (for a retried one)."""
    checkpoints = repo.list_checkpoints(session, job_id=job.id)
    kept_paths = _kept_paths(checkpoints, pinned_ids(job))
    return [c for c in checkpoints if c.pruned_by == registered.id and c.path not in kept_paths]


def _kept_paths(checkpoints: Sequence[Checkpoint], pinned: set[int]) -> set[str]:
    return {c.path for c in checkpoints if c.usable or c.id in pinned}


def mark_overwritten(checkpoints: Sequence[Checkpoint], registered: Checkpoint) -> None:
    """Earlier checkpoints at the same path were replaced on disk by `registered`."""
    for other in checkpoints:
        if other.id != registered.id and other.path == registered.path:
            mark_unusable(
                other,
                f"overwritten: attempt {registered.attempt} saved step {registered.step} at the same path",
            )
            other.pruned_at = other.pruned_at or utcnow()  # nothing of it is left to delete
