"""Checkpoint directories as the trainer leaves them: files sealed by a `manifest.json`.

The format is the trainer's (`trainer/checkpoint.py`: `write_manifest`, `Manifest.sha256`);
tests/service/test_checkpoints.py checks against the trainer's own code that it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy.orm import Session

from service import ingest
from service.db.models import Checkpoint


def write_checkpoint(folder: Path, *, step: int, attempt: int, tokens: int = 0) -> str:
    """A sealed checkpoint in `folder` (a shard in a subfolder, as dist_checkpointing writes);
    its manifest's sha256, as the trainer registers it."""
    files = {
        "trainer_state.pt": f"state of step {step}".encode(),
        "model/shard_0_0.distcp": bytes(range(256)) * (step % 7 + 1),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {
        "step": step,
        "tokens": tokens,
        "attempt": attempt,
        "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in sorted(files.items())
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def save_and_register(
    session: Session, directory: Path, *, job_id: int, attempt: int, step: int
) -> Checkpoint:
    """What a trainer does at a checkpoint: write it under `directory`, then register it."""
    folder = directory / f"step-{step:08d}"
    sha = write_checkpoint(folder, step=step, attempt=attempt, tokens=step * 512)
    return ingest.record_checkpoint(
        session,
        job_id=job_id,
        attempt=attempt,
        step=step,
        tokens=step * 512,
        path=str(folder),
        manifest_sha256=sha,
        actor="trainer",
    ).checkpoint
