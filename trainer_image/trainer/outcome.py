"""How the trainer ended, said twice: one JSON line per rank, and the process exit code.

A contract with the service, which classifies an attempt from it. Each rank that ends
appends exactly one line to `job.result_path` (Kubernetes' terminationMessagePath by
default; the local backend points it into the workload's folder):

    {"outcome": str, "rank": int, "step": int|null, "message": str, "checkpoint": str|null}

`message` is one line of at most 300 characters; the whole line is under 1 KB and goes out in
one `os.write` on an `O_APPEND` descriptor, so lines of local ranks sharing the file stay
whole. `step` is where the run ended (diverged: the first step of the non-finite run);
`checkpoint` is the refused checkpoint (corrupt_checkpoint) or the one saved on SIGTERM
(preempted). The exit code says the same for whoever only sees that (torchrun turns any
worker's failure into 1).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from trainer.checkpoint import CorruptCheckpointError
from trainer.config import DEFAULT_RESULT_PATH, ConfigError, apply_overrides
from trainer.step_guard import DivergedError

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300
MAX_LINE_BYTES = 1023  # with its newline, under 1 KB


class Outcome(StrEnum):
    COMPLETED = "completed"
    DIVERGED = "diverged"
    PREEMPTED = "preempted"  # SIGTERM received, checkpoint saved, exiting early
    CORRUPT_CHECKPOINT = "corrupt_checkpoint"  # the resume/init checkpoint failed verification
    BAD_CONFIG = "bad_config"  # the config failed parsing or validation
    CRASHED = "crashed"  # any other exception


COMPLETED, DIVERGED, PREEMPTED = Outcome.COMPLETED, Outcome.DIVERGED, Outcome.PREEMPTED
CORRUPT_CHECKPOINT, BAD_CONFIG, CRASHED = (
    Outcome.CORRUPT_CHECKPOINT,
    Outcome.BAD_CONFIG,
    Outcome.CRASHED,
)

EXIT_CODES = {
    COMPLETED: 0,
    CRASHED: 1,
    BAD_CONFIG: 2,
    DIVERGED: 3,
    CORRUPT_CHECKPOINT: 4,
    PREEMPTED: 5,
}


@dataclass(frozen=True)
class Ending:
    outcome: Outcome
    step: int | None = None
    message: str = ""
    checkpoint: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]


def ending_for(error: Exception, *, step: int | None) -> Ending:
    """The outcome an exception means; `step` is where the loop was (None before it began)."""
    if isinstance(error, ConfigError):
        return Ending(BAD_CONFIG, message=str(error))
    if isinstance(error, CorruptCheckpointError):
        return Ending(CORRUPT_CHECKPOINT, message=str(error), checkpoint=error.path)
    if isinstance(error, DivergedError):
        return Ending(DIVERGED, step=error.first_step, message=str(error))
    return Ending(CRASHED, step=step, message=f"{type(error).__name__}: {error}")


def line(ending: Ending, *, rank: int) -> bytes:
    """The JSON line of one rank's ending, newline included, under 1 KB."""
    message = _one_line(ending.message)
    checkpoint = ending.checkpoint
    while True:
        record = {
            "outcome": str(ending.outcome),
            "rank": rank,
            "step": ending.step,
            "message": message,
            "checkpoint": checkpoint,
        }
        text = json.dumps(record, ensure_ascii=True)
        excess = len(text) - MAX_LINE_BYTES
        if excess <= 0:
            return (text + "\n").encode("ascii")
        if len(message) > 3:
            message = message[: max(0, len(message) - excess - 3)] + "..."
        else:  # a path longer than the line: say so rather than report a wrong one
            message = f"checkpoint path too long to report ({len(checkpoint or '')} chars)"
            checkpoint = None


def write(path: str | Path, ending: Ending, *, rank: int) -> bool:
    """Append this rank's line to `path` in one write; skipped when its directory is missing."""
    path = Path(path)
    if not path.parent.is_dir():
        return False
    data = line(ending, rank=rank)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as error:
        log.warning("cannot write the outcome to %s: %s", path, error)
        return False
    return True


def result_path_of(config_path: str | Path, overrides: Iterable[str] = ()) -> str:
    """`job.result_path` as far as a config that may not parse (or its overrides) says it."""
    try:
        raw = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    try:
        value = apply_overrides(raw if isinstance(raw, dict) else {}, overrides)["job"]["result_path"]
    except (ValueError, TypeError, KeyError):
        return DEFAULT_RESULT_PATH
    return value if isinstance(value, str) and value else DEFAULT_RESULT_PATH


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text
