"""Checkpoints a rollback can trust.

Model and optimizer go through `megatron.core.dist_checkpointing` (every rank writes its
shards); the trainer's own counters go beside them. A checkpoint is written to a temporary
directory `.tmp-aA-step-N`, sealed with a manifest (step, tokens, every file with its size and
sha256), every file and directory fsynced, and published by one atomic rename. A step saved
again (a later attempt reaching it) replaces the old directory in two renames: the old one
aside to `.old-step-N`, the new one in; `recover` on start-up finishes a replace that was
interrupted between them, so a checkpoint is never lost. Only a directory whose manifest
verifies is a checkpoint: `resume_from` verifies before loading and refuses a corrupt one
by name (`CorruptCheckpointError`, outcome corrupt_checkpoint). The counters are read back as
plain data (`load_trainer_state`, `weights_only`): a checkpoint directory is input, and
unpickling arbitrary objects from it would run whatever code its writer chose.

Retention: with `metrics.url` set the service owns it. The answer to a checkpoint's
registration may list checkpoints it has marked unusable,
`"prune": [{"path", "step", "attempt", "manifest_sha256"}]`; the trainer deletes such a
directory only while its manifest still has that sha256 (never a newer checkpoint saved at the
same path since), after the registration succeeded and never while stopping on SIGTERM. It
deletes nothing else but its own temporary directories. A standalone run (no `metrics.url`)
keeps the newest `keep_last` itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import queue
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies import filesystem_async

from trainer.model import unwrap
from trainer.report import ingest_token, post_checkpoint

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.parallel import Layout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d{8})$")
# Beside the published step directories: what a save is writing (`.tmp-a<attempt>-...`), and a
# replaced checkpoint between the two renames of a replace (`.old-step-N`).
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
# Resharding-friendly layout of the distributed optimizer's state (across data parallel).
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


class Checkpointed(Protocol):
    """What a checkpoint saves and restores (`train.Trainer` is one): the model chunks and the
    optimizer, sharded by dist_checkpointing, and the loop's own counters (`state_dict`)."""

    model: list[torch.nn.Module]
    optimizer: Any  # megatron.core's MegatronOptimizer
    step: int
    tokens: int
    stop_requested: bool

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's files do not match its manifest (or it has none); `path` names it."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(message)
        self.path = str(path)


@dataclass(frozen=True)
class Manifest:
    step: int
    tokens: int
    attempt: int
    files: dict[str, dict[str, Any]]

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()


def step_dir(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | Path) -> Manifest:
    """The manifest in checkpoint directory `path` as written, unverified (OSError, ValueError)."""
    try:
        return Manifest(**json.loads((Path(path) / MANIFEST).read_text()))
    except TypeError as exc:
        raise ValueError(f"{MANIFEST} has the wrong fields: {exc}") from exc


def write_manifest(path: Path, *, step: int, tokens: int, attempt: int) -> Manifest:
    """Seal a finished checkpoint directory: every file's size and sha256."""
    files = {
        str(file.relative_to(path)): {"size": file.stat().st_size, "sha256": _file_digest(file)}
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != MANIFEST
    }
    manifest = Manifest(step=step, tokens=tokens, attempt=attempt, files=files)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.__dict__, indent=1, sort_keys=True))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.rename(path / MANIFEST)
    return manifest


def verify(path: str | Path) -> Manifest:
    """The checkpoint's manifest if every file matches it; CorruptCheckpointError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CorruptCheckpointError(path, f"checkpoint {path} does not exist")
    if not (path / MANIFEST).is_file():
        raise CorruptCheckpointError(
            path, f"checkpoint {path} has no {MANIFEST}: it was never completed"
        )
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError) as exc:
        raise CorruptCheckpointError(path, f"checkpoint {path}: unreadable {MANIFEST} ({exc})") from exc
    present = {
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != MANIFEST
    }
    if missing := sorted(set(manifest.files) - present):
        raise CorruptCheckpointError(path, f"checkpoint {path}: missing {', '.join(missing)}")
    if extra := sorted(present - set(manifest.files)):
        raise CorruptCheckpointError(
            path, f"checkpoint {path}: unexpected files {', '.join(extra)}"
        )
    for name, expected in manifest.files.items():
        file = path / name
        if file.stat().st_size != expected["size"]:
            raise CorruptCheckpointError(
                path,
                f"checkpoint {path}: {name} is {file.stat().st_size} bytes, its manifest says "
                f"{expected['size']} (truncated?)",
            )
        if _file_digest(file) != expected["sha256"]:
            raise CorruptCheckpointError(
                path, f"checkpoint {path}: {name} does not match its sha256 in the manifest"
            )
    return manifest


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The loop's counters saved in checkpoint `path`: tensors, numbers and containers only.

    Anything else in the pickle (an object whose `__reduce__` would run code) is refused
    before it is built, as a CorruptCheckpointError naming the checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path / TRAINER_STATE, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CorruptCheckpointError(
            path, f"checkpoint {path}: {TRAINER_STATE} holds more than plain data ({exc})"
        ) from exc
    if not isinstance(state, dict):
        raise CorruptCheckpointError(
            path, f"checkpoint {path}: {TRAINER_STATE} is not a mapping of counters"
        )
    return state


def publish(tmp: Path, final: Path) -> None:
    """Make the sealed directory `tmp` the checkpoint `final`, durably; replace one already there.

    Every file and directory is fsynced before the rename, and the parent after it. An
    existing `final` goes aside first and is deleted only once the new one is in place, so a
    crash leaves the old or the new checkpoint at `final`, or the old one aside, which
    `recover` puts back.
    """
    fsync_tree(tmp)
    parent = final.parent
    if not final.exists():
        os.rename(tmp, final)
        _fsync_dir(parent)
        return
    aside = parent / f"{OLD_PREFIX}{final.name}"
    if aside.exists():  # a replace that finished all but its delete
        shutil.rmtree(aside)
    os.rename(final, aside)
    _fsync_dir(parent)
    os.rename(tmp, final)
    _fsync_dir(parent)
    shutil.rmtree(aside)


def recover(directory: Path, *, attempt: int) -> None:
    """Finish what an interrupted save of this attempt (or replace of any) left behind.

    A checkpoint set aside by a replace comes back when the new one never arrived, and is
    deleted when it did. This attempt's temporary directories are deleted; other attempts'
    are left alone, since a superseded attempt may still be saving as it stops.
    """
    if not directory.is_dir():
        return
    for aside in sorted(directory.glob(f"{OLD_PREFIX}step-*")):
        final = directory / aside.name[len(OLD_PREFIX) :]
        if final.exists():
            shutil.rmtree(aside)
        else:
            os.rename(aside, final)
            log.warning("checkpoint %s restored: a replace was interrupted", final)
    for tmp in directory.glob(f"{_tmp_prefix(attempt)}*"):
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("deleted %s, left by an interrupted save", tmp)
    _fsync_dir(directory)


def prune_listed(entries: Iterable[Mapping[str, Any]], *, attempt: int) -> list[Path]:
    """Delete the checkpoints the service listed; each only while its manifest has that sha256.

    A path whose manifest changed holds a newer checkpoint saved there since; a missing or
    unreadable one has nothing of ours to delete. Returns what was deleted.
    """
    deleted = []
    for entry in entries:
        try:
            path, expected = Path(entry["path"]), str(entry["manifest_sha256"])
        except (KeyError, TypeError):
            log.warning("prune entry %r lacks a path or manifest_sha256; ignored", entry)
            continue
        if not STEP_DIR.match(path.name):
            log.warning("prune entry %s is not a checkpoint directory; ignored", path)
            continue
        try:
            current = read_manifest(path).sha256()
        except (OSError, ValueError):
            continue
        if current != expected:
            log.info("checkpoint %s kept: it is not the one the service marked unusable", path)
            continue
        if _delete(path, attempt=attempt):
            deleted.append(path)
            log.info("checkpoint %s deleted: the service marked it unusable", path)
    return deleted


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path`, and `path` itself."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def published(directory: Path) -> list[Path]:
    """Published checkpoint directories, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


class CheckpointManager:
    """Saves, verifies, restores and prunes the checkpoints of one run."""

    def __init__(self, config: TrainerConfig, layout: Layout) -> None:
        self.config = config
        self.layout = layout
        self.directory = Path(config.checkpoint.directory)
        self.resumed_from: Path | None = None
        self.last_saved_step: int | None = None
        # Seconds the last restore and the last save held training up (the trainer reports them
        # as checkpoint/load_s and checkpoint/save_s: the service's goodput counts them apart).
        self.load_s: float | None = None
        self.last_save_s: float | None = None
        if layout.rank == 0:
            recover(self.directory, attempt=config.job.attempt)
        dist.barrier()

    # --- restore ------------------------------------------------------------------------------

    def restore(self, trainer: Checkpointed) -> Path | None:
        """Load `resume_from` (model, optimizer, counters) or `init_from` (weights only)."""
        ckpt = self.config.checkpoint
        if ckpt.resume_from and ckpt.init_from:
            raise ValueError("checkpoint.resume_from and checkpoint.init_from are exclusive")
        started = time.perf_counter()
        if ckpt.resume_from:
            path = Path(ckpt.resume_from)
            self._verify_everywhere(path)
            self._load(trainer, path, with_optimizer=True)
            trainer.load_state_dict(load_trainer_state(path))
            self.resumed_from = path
            self.load_s = time.perf_counter() - started
            return path
        if ckpt.init_from:
            path = Path(ckpt.init_from)
            self._verify_everywhere(path)
            self._load(trainer, path, with_optimizer=False)
            self.load_s = time.perf_counter() - started
            return path
        return None

    def _verify_everywhere(self, path: Path) -> None:
        # One rank hashes; every rank learns the verdict, so all fail together and clearly.
        error = [None]
        if self.layout.rank == 0:
            try:
                verify(path)
            except CorruptCheckpointError as exc:
                error[0] = str(exc)
        dist.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise CorruptCheckpointError(path, error[0])

    def _load(self, trainer: Checkpointed, path: Path, *, with_optimizer: bool) -> dict[str, Any]:
        state = self._sharded_state_dict(trainer, with_optimizer=with_optimizer, loading=True)
        loaded = dist_checkpointing.load(state, str(path))
        with torch.no_grad():
            for index, chunk in enumerate(trainer.model):
                unwrap(chunk).load_state_dict(loaded[_model_key(trainer, index)], strict=True)
            if with_optimizer:
                trainer.optimizer.load_state_dict(loaded["optimizer"])
        return loaded

    # --- save ---------------------------------------------------------------------------------

    def save_initial(self, trainer: Checkpointed) -> Path | None:
        """The step-0 checkpoint when the config asks for one; None when none was saved."""
        if self.config.checkpoint.save_initial and trainer.step == 0:
            return self.save(trainer)
        return None

    def save(self, trainer: Checkpointed) -> Path:
        """Write, seal, publish and register a checkpoint of the current step; then retention."""
        _results_queue_in_this_process()
        step = trainer.step
        final = step_dir(self.directory, step)
        if self.last_saved_step == step and final.exists():
            self.last_save_s = None  # nothing was written
            return final
        started = time.perf_counter()
        tmp = self.directory / f"{_tmp_prefix(self.config.job.attempt)}{final.name}"
        if self.layout.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        state = self._sharded_state_dict(trainer, with_optimizer=True, loading=False)
        dist_checkpointing.save(state, str(tmp))
        dist.barrier()
        if self.layout.rank == 0:
            torch.save(trainer.state_dict(), tmp / TRAINER_STATE)
            manifest = write_manifest(
                tmp, step=step, tokens=trainer.tokens, attempt=self.config.job.attempt
            )
            publish(tmp, final)  # an earlier attempt's checkpoint of this step is superseded
            answer = self._register(final, manifest)
            # A stopping attempt deletes nothing: the service may be rolling back to an older
            # checkpoint this very moment.
            if not trainer.stop_requested:
                self._retain(answer, saved_step=step)
        dist.barrier()
        self.last_saved_step = step
        self.last_save_s = time.perf_counter() - started
        log.info("checkpoint %s published", final)
        return final

    def _sharded_state_dict(self, trainer: Checkpointed, *, with_optimizer: bool, loading: bool):
        state: dict[str, Any] = {}
        # Unwrapped, as Megatron-LM does: keys then do not depend on the DDP/fp16 wrappers.
        for index, chunk in enumerate(trainer.model):
            state[_model_key(trainer, index)] = unwrap(chunk).sharded_state_dict()
        if with_optimizer:
            state["optimizer"] = trainer.optimizer.sharded_state_dict(
                state, is_loading=loading, metadata=OPTIMIZER_METADATA
            )
        return state

    def _register(self, path: Path, manifest: Manifest) -> dict[str, Any] | None:
        """Tell the service (when there is one); its answer, or None when it did not take it."""
        metrics = self.config.metrics
        if not metrics.url:
            return None
        return post_checkpoint(
            metrics.url,
            self.config.job.id,
            ingest_token(self.config),
            {
                "attempt": manifest.attempt,
                "step": manifest.step,
                "tokens": manifest.tokens,
                "path": str(path),
                "manifest_sha256": manifest.sha256(),
            },
        )

    def _retain(self, answer: dict[str, Any] | None, *, saved_step: int) -> None:
        """The service's prune list when there is a service; else this run's own keep_last."""
        if not self.config.metrics.url:
            self._prune_standalone(saved_step=saved_step)
            return
        entries = (answer or {}).get("prune") or []
        if not isinstance(entries, list):
            log.warning("the service's prune list is not a list: %r; ignored", entries)
            return
        prune_listed(entries, attempt=self.config.job.attempt)

    def _prune_standalone(self, *, saved_step: int) -> None:
        """Keep the newest `keep_last`, plus anything pinned or resumed from.

        Folders past the step just saved belong to an abandoned timeline: an earlier run in
        this directory went further before this one resumed from an earlier checkpoint. They
        are deleted rather than counted, or they would outlive and push out this run's own
        newer-trained checkpoints.
        """
        keep = {Path(p).resolve() for p in self.config.checkpoint.pinned}
        if self.resumed_from is not None:
            keep.add(self.resumed_from.resolve())
        candidates = [p for p in published(self.directory) if p.resolve() not in keep]
        attempt = self.config.job.attempt
        for abandoned in [p for p in candidates if _step_of(p) > saved_step]:
            if _delete(abandoned, attempt=attempt):
                log.info("checkpoint %s pruned: past step %d, an abandoned timeline", abandoned, saved_step)
        candidates = [p for p in candidates if _step_of(p) <= saved_step]
        for old in candidates[: max(0, len(candidates) - self.config.checkpoint.keep_last)]:
            if _delete(old, attempt=attempt):
                log.info("checkpoint %s pruned", old)


def _step_of(path: Path) -> int:
    match = STEP_DIR.match(path.name)
    assert match is not None, path
    return int(match.group(1))


def _results_queue_in_this_process() -> None:
    """Give dist_checkpointing's writer a plain in-process queue for its results.

    By default the first save spawns a `multiprocessing.Manager` to serve that queue, built for
    asynchronous saves whose writer outlives the call. The trainer saves synchronously: the
    results are put and taken in this very process (`AsyncRequest.execute_sync`, then
    `retrieve_write_results`), so a thread queue carries them. No server process then exists to
    be killed by torchrun's SIGTERM to the process group mid-save, or to outlive a killed
    trainer, and none has to import torch to unpickle the results (1.5 s of every first save).
    """
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def _delete(checkpoint: Path, *, attempt: int) -> bool:
    """Out of sight in one rename, then deleted: never a half-deleted checkpoint directory.

    Best effort: a checkpoint that cannot be deleted is logged, and training goes on.
    """
    doomed = checkpoint.parent / f"{_tmp_prefix(attempt)}deleted-{checkpoint.name}"
    try:
        shutil.rmtree(doomed, ignore_errors=True)  # left by a crash in an earlier delete
        os.rename(checkpoint, doomed)
        _fsync_dir(checkpoint.parent)
    except OSError as exc:
        log.warning("could not delete checkpoint %s: %s", checkpoint, exc)
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _tmp_prefix(attempt: int) -> str:
    return f"{TMP_PREFIX}a{attempt}-"


def _model_key(trainer: Checkpointed, index: int) -> str:
    return "model" if len(trainer.model) == 1 else f"model{index}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
