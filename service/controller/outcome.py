"""How an attempt ended, in the trainer's own words: the one classifier both backends use.

Every trainer rank that ends appends one JSON line `{"outcome", "rank", "step", "message",
"checkpoint"}` to its result file (`job.result_path`): the local backend gives it
`<workload folder>/result.jsonl`, a pod the container's termination message
(`/dev/termination-log`). torchrun turns any worker's failure into exit code 1, so these lines,
not exit codes or log patterns, say what happened. Several ranks, several lines: the most
telling one speaks for the attempt (`most_telling`).

Without a line (SIGKILL, OOM, a vanished node) the backends fall back on signals and conditions;
`torchrun_root_cause` reads torchrun's error summary so that the workers torchrun itself stopped
(SIGTERM, listed first) are not taken for the cause.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    DIVERGED = "diverged"  # non-finite loss or gradients: a rollback, never a failed job
    PREEMPTED = "preempted"  # SIGTERM from outside; it saved a checkpoint first
    CORRUPT_CHECKPOINT = "corrupt_checkpoint"  # refused its resume checkpoint
    BAD_CONFIG = "bad_config"  # the config cannot run: retrying changes nothing
    CRASHED = "crashed"  # anything else the trainer caught


# The most telling first: one rank's refused checkpoint explains the others' crashes, a
# divergence explains a crash it caused, and one rank's preemption is only as telling as the rest.
PRECEDENCE = (
    Outcome.CORRUPT_CHECKPOINT,
    Outcome.BAD_CONFIG,
    Outcome.DIVERGED,
    Outcome.CRASHED,
    Outcome.PREEMPTED,
    Outcome.COMPLETED,
)


@dataclass(frozen=True)
class TrainerOutcome:
    """One rank's account of how it ended."""

    outcome: Outcome
    rank: int | None = None
    step: int | None = None  # where it ended; diverged: the first step of the non-finite run
    message: str = ""
    checkpoint: str | None = None  # corrupt_checkpoint: the one refused; preempted: the one saved

    def as_event_data(self) -> dict:
        return {
            "outcome": self.outcome.value,
            "rank": self.rank,
            "step": self.step,
            "message": self.message,
            "checkpoint": self.checkpoint,
        }

    def describe(self) -> str:
        """A line for the attempt's reason: `diverged at step 205: loss is NaN`."""
        text = self.outcome.value.replace("_", " ")
        if self.step is not None:
            text += f" at step {self.step}"
        if self.checkpoint:
            text += f" ({self.checkpoint})"
        return f"{text}: {self.message}" if self.message else text


def parse_outcomes(text: str) -> list[TrainerOutcome]:
    """Every well-formed outcome line in `text`; anything else (a log tail, a torn line) is skipped."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
            outcome = Outcome(record["outcome"])
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(record, dict):
            continue
        found.append(
            TrainerOutcome(
                outcome=outcome,
                rank=_int_or_none(record.get("rank")),
                step=_int_or_none(record.get("step")),
                message=str(record.get("message") or "")[:2000],
                checkpoint=str(record["checkpoint"]) if record.get("checkpoint") else None,
            )
        )
    return found


def most_telling(outcomes: Iterable[TrainerOutcome]) -> TrainerOutcome | None:
    """The line that speaks for the attempt: by `PRECEDENCE`, then the lowest rank."""
    ranked = sorted(
        outcomes,
        key=lambda o: (PRECEDENCE.index(o.outcome), o.rank if o.rank is not None else 1 << 30),
    )
    return ranked[0] if ranked else None


def read_outcome(*texts: str) -> TrainerOutcome | None:
    """The attempt's outcome from all its result texts (a file, or one message per pod)."""
    return most_telling(o for text in texts for o in parse_outcomes(text))


# --- without an outcome line ----------------------------------------------------------------

_TORCHRUN_FAILURES = re.compile(r"^\s*Failures:\s*$", re.MULTILINE)
_TORCHRUN_ROOT_CAUSE = re.compile(r"^\s*Root Cause \(first observed failure\):\s*$", re.MULTILINE)
_TORCHRUN_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def without_secondary_failures(text: str) -> str:
    """`text` without the workers torchrun's summary lists under `Failures:` before the root cause.

    When one worker fails, torchrun stops the others with SIGTERM and lists them first, each
    with `exitcode : -15`: evidence of torchrun's clean-up, not of what went wrong.
    """
    cut = []
    for root in _TORCHRUN_ROOT_CAUSE.finditer(text):
        starts = [m for m in _TORCHRUN_FAILURES.finditer(text, 0, root.start())]
        if starts:
            cut.append((starts[-1].start(), root.start()))
    for start, end in reversed(cut):
        text = text[:start] + text[end:]
    return text


def torchrun_root_cause(text: str) -> int | None:
    """The exit code torchrun's summary gives the first failed worker (negative: a signal)."""
    roots = list(_TORCHRUN_ROOT_CAUSE.finditer(text))
    if not roots:
        return None
    match = _TORCHRUN_EXITCODE.search(text, roots[-1].end())
    return int(match.group(1)) if match else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
