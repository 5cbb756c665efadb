"""Labelled synthetic loss curves for the watchdog: clean runs and each anomaly, seeded.

A curve is a pretraining run as the trainer reports it (`trainer/report.py` records): a fast
warmup fall, a slow power-law stable phase and a WSD decay, times heavy-tailed (Student-t),
autocorrelated (AR(1)) noise clipped to ±`cap`. Each builder injects one anomaly and says which
verdicts it must raise (kind, channel, step ± tolerance); `deliver` and `interleave` then mess
up the stream the way the ingest path can (duplicates, late records, gaps, several jobs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

WINDOW = 20  # the default recover_window_steps the labels assume
CHANNELS = {"en": (1.0, 0.62), "zh": (1.25, 0.08), "code": (0.7, 0.30)}  # level, weight


@dataclass(frozen=True)
class Expected:
    """A verdict a curve must raise."""

    kind: str
    step: int  # where the verdict is due
    channel: str = "all"
    tolerance: int = 2
    attempt: int = 0
    onset: int | None = None  # where the anomaly began, when before `step`


@dataclass(frozen=True)
class Shape:
    """How a clean run looks."""

    steps: int = 600
    warmup: int = 60
    decay: int = 120
    noise: float = 0.025  # standard deviation of the relative noise before clipping
    phi: float = 0.7  # lag-one autocorrelation of the noise
    cap: float = 0.08  # the noise never exceeds ±cap of the trend

    @classmethod
    def random(cls, rng: np.random.Generator, **overrides: Any) -> Shape:
        steps = int(rng.integers(450, 800))
        shape = cls(
            steps=steps,
            warmup=int(rng.integers(20, 150)),
            decay=int(steps * rng.uniform(0.1, 0.25)),
            noise=float(rng.uniform(0.012, 0.03)),
            phi=float(rng.uniform(0.3, 0.9)),
        )
        return replace(shape, **overrides)

    def phase(self, step: int) -> str:
        if step < self.warmup:
            return "warmup"
        return "decay" if step >= self.steps - self.decay else "stable"


@dataclass
class Curve:
    """One job's records and the verdicts they must raise."""

    name: str
    job: str
    records: list[dict[str, Any]]
    expected: list[Expected] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [json.dumps(record, allow_nan=False) for record in self.records]


def base_trend(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """The noiseless loss: warmup's fast fall, a power-law tail, a WSD decay of a few percent."""
    t = np.arange(shape.steps, dtype=float)
    floor = rng.uniform(1.8, 2.6)
    fast = rng.uniform(6.0, 9.0) * np.exp(-t / max(shape.warmup / 2.5, 4.0))
    slow = rng.uniform(1.0, 2.0) / np.sqrt(1.0 + t / rng.uniform(50, 200))
    decay_start = shape.steps - shape.decay
    progress = np.clip((t - decay_start) / max(shape.decay, 1), 0.0, 1.0)
    return (floor + fast + slow) * (1.0 - rng.uniform(0.03, 0.1) * progress)


def noise(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Relative noise: AR(1) over Student-t (3 dof) innovations, clipped to ±cap."""
    innovations = rng.standard_t(3, shape.steps) / math.sqrt(3.0)  # unit variance
    scale = shape.noise * math.sqrt(1.0 - shape.phi**2)
    out = np.empty(shape.steps)
    level = innovations[0] * shape.noise
    for i in range(shape.steps):
        level = shape.phi * level + scale * innovations[i]
        out[i] = level
    return np.clip(out, -shape.cap, shape.cap)


def _number(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def make_records(
    job: str,
    shape: Shape,
    losses: dict[str, np.ndarray],
    *,
    attempt: int = 0,
    first_step: int = 0,
    stages: np.ndarray | None = None,
    evals: dict[int, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Trainer records for steps first_step.. of `losses` (metric name → values by step)."""
    records = []
    for step in range(first_step, shape.steps):
        stage = str(stages[step]) if stages is not None else "main"
        metrics = {name: _number(values[step]) for name, values in losses.items()}
        metrics["lr"] = 3e-4
        common = {"job": job, "attempt": attempt, "step": step, "stage": stage}
        records.append(
            {**common, "phase": shape.phase(step), "tokens": step * 4096, "metrics": metrics}
        )
        if evals and step in evals:
            eval_metrics = {f"eval/ppl/{name}": ppl for name, ppl in evals[step].items()}
            eval_metrics.update({f"eval/loss/{n}": math.log(p) for n, p in evals[step].items()})
            records.append(
                {**common, "phase": "eval", "tokens": step * 4096, "metrics": eval_metrics}
            )
    return records


def _onset(rng: np.random.Generator, shape: Shape) -> int:
    """A step after warmup with room for a recovery window before the end."""
    return int(rng.integers(shape.warmup + 40, shape.steps - WINDOW - 15))


# --- single-job curves ----------------------------------------------------------------------


def clean(seed: int, **shape: Any) -> Curve:
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    loss = base_trend(s, rng) * (1 + noise(s, rng))
    return Curve("clean", f"clean-{seed}", make_records(f"clean-{seed}", s, {"loss": loss}))


def transient_spike(seed: int, size: float | None = None, **shape: Any) -> Curve:
    """A spike that decays back within half the recover window: one `spike`."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    size = float(rng.uniform(0.3, 1.5)) if size is None else size
    onset = _onset(rng, s)
    tau = rng.uniform(0.7, 2.5)
    t = np.arange(s.steps)
    bump = np.where(t >= onset, size * np.exp(-np.maximum(t - onset, 0) / tau), 0.0)
    loss = base_trend(s, rng) * (1 + noise(s, rng)) * (1 + bump)
    job = f"spike-{seed}"
    return Curve("spike", job, make_records(job, s, {"loss": loss}), [Expected("spike", onset)])


def lasting_spike(seed: int, size: float | None = None, **shape: Any) -> Curve:
    """A jump that stays (or grows): `spike` at onset, `divergence` a window later."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    size = float(rng.uniform(0.3, 1.0)) if size is None else size
    onset = _onset(rng, s)
    t = np.arange(s.steps)
    growth = rng.uniform(0.0, 0.02)  # some runs keep climbing
    jump = np.where(t >= onset, size + growth * (t - onset), 0.0)
    loss = base_trend(s, rng) * (1 + noise(s, rng)) * (1 + jump)
    job = f"diverge-{seed}"
    expected = [Expected("spike", onset), Expected("divergence", onset + WINDOW, onset=onset)]
    return Curve("divergence", job, make_records(job, s, {"loss": loss}), expected)


def nonfinite(seed: int, **shape: Any) -> Curve:
    """One to three NaN/Inf steps in a row, then the run carries on: one `nonfinite`."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    onset = int(rng.integers(s.warmup // 2 + 1, s.steps - 5))
    loss = base_trend(s, rng) * (1 + noise(s, rng))
    loss[onset : onset + int(rng.integers(1, 4))] = rng.choice([math.nan, math.inf])
    job = f"nan-{seed}"
    return Curve(
        "nonfinite",
        job,
        make_records(job, s, {"loss": loss}),
        [Expected("nonfinite", onset, tolerance=0)],
    )


def drop(seed: int, size: float | None = None, **shape: Any) -> Curve:
    """A batch of repeated newlines: loss far below trend for one to four steps; one `drop`."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    size = float(rng.uniform(0.35, 0.8)) if size is None else size
    onset = _onset(rng, s)
    loss = base_trend(s, rng) * (1 + noise(s, rng))
    loss[onset : onset + int(rng.integers(1, 5))] *= 1 - size
    job = f"drop-{seed}"
    return Curve("drop", job, make_records(job, s, {"loss": loss}), [Expected("drop", onset)])


def stage_change(seed: int, **shape: Any) -> Curve:
    """A new data stage whose loss level differs by 10–40%: nothing."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    change = _onset(rng, s)
    factor = rng.choice([rng.uniform(0.65, 0.88), rng.uniform(1.15, 1.45)])
    loss = base_trend(s, rng) * (1 + noise(s, rng))
    loss[change:] *= factor
    stages = np.array(["stage-1"] * change + ["stage-2"] * (s.steps - change))
    job = f"stage-{seed}"
    return Curve("stage_change", job, make_records(job, s, {"loss": loss}, stages=stages))


def channel_spike(seed: int, lasting: bool = False, **shape: Any) -> Curve:
    """`loss/zh` (8% of the mix) jumps while the total barely moves: verdicts on `zh` only."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    base = base_trend(s, rng)
    onset = _onset(rng, s)
    t = np.arange(s.steps)
    size = rng.uniform(0.35, 0.6)
    if lasting:
        bump = np.where(t >= onset, size, 0.0)
    else:
        bump = np.where(
            t >= onset, size * np.exp(-np.maximum(t - onset, 0) / rng.uniform(0.7, 2.5)), 0.0
        )
    losses = {}
    total = np.zeros(s.steps)
    for name, (level, weight) in CHANNELS.items():
        values = base * level * (1 + noise(s, rng))
        if name == "zh":
            values = values * (1 + bump)
        losses[f"loss/{name}"] = values
        total += weight * values
    losses = {"loss": total, **losses}
    job = f"channel-{seed}"
    expected = [Expected("spike", onset, "zh")]
    if lasting:
        expected.append(Expected("divergence", onset + WINDOW, "zh", onset=onset))
    return Curve(
        "channel_divergence" if lasting else "channel_spike",
        job,
        make_records(job, s, losses),
        expected,
    )


def clean_channels(seed: int, **shape: Any) -> Curve:
    """Three channels and their total, all clean: nothing."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    base = base_trend(s, rng)
    losses = {
        f"loss/{name}": base * level * (1 + noise(s, rng)) for name, (level, _) in CHANNELS.items()
    }
    total = sum(CHANNELS[name[5:]][1] * values for name, values in losses.items())
    job = f"channels-{seed}"
    return Curve("clean_channels", job, make_records(job, s, {"loss": total, **losses}))


def ppl_rise(seed: int, rising: bool = True, **shape: Any) -> Curve:
    """Evals every 20 steps; from some eval on, `code`'s PPL rises while the others fall."""
    rng = np.random.default_rng(seed)
    s = Shape.random(rng, **shape)
    base = base_trend(s, rng)
    every = 20
    eval_steps = list(range(every - 1, s.steps, every))
    first = int(rng.integers(3, len(eval_steps) - 4))
    evals: dict[int, dict[str, float]] = {}
    held = 0.0
    for index, step in enumerate(eval_steps):
        log_ppl = {
            name: base[step] * level * (1 + rng.normal(0, 0.0005))
            for name, (level, _) in CHANNELS.items()
        }
        if rising and index >= first:  # `code` stops learning and drifts up
            held += rng.uniform(0.005, 0.03)
            log_ppl["code"] = held
        else:
            held = log_ppl["code"]
        evals[step] = {name: math.exp(value) for name, value in log_ppl.items()}
    loss = base * (1 + noise(s, rng))
    job = f"ppl-{seed}"
    due = Expected("ppl_rise", eval_steps[first + 2], "code", tolerance=0, onset=eval_steps[first])
    expected = [due] if rising else []
    return Curve(
        "ppl_rise" if rising else "clean_evals",
        job,
        make_records(job, s, {"loss": loss}, evals=evals),
        expected,
    )


def rollback(seed: int, **shape: Any) -> Curve:
    """Attempt 0 diverges; attempt 1 resumes 100 steps before, re-using those step numbers."""
    first = lasting_spike(seed, **shape)
    onset = first.expected[0].step
    records = [r for r in first.records if r["step"] <= onset + WINDOW + 5]
    resumed = clean(seed + 20_000, steps=first.records[-1]["step"] + 1)
    restart = max(onset - 100, 0)
    records += [
        {**record, "job": first.job, "attempt": 1}
        for record in resumed.records
        if record["step"] >= restart
    ]
    return Curve("rollback", first.job, records, first.expected)


# --- delivery -------------------------------------------------------------------------------


def deliver(
    curve: Curve, seed: int, *, duplicates: float = 0.05, late: float = 0.03, gaps: float = 0.05
) -> Curve:
    """The curve as the ingest path may hand it over: re-sent batches, late records, gaps.

    Records at and just after each expected verdict, and eval records (a PPL rise spans
    several), are left in place so the labels hold.
    """
    rng = np.random.default_rng(seed)
    protected = {(r["attempt"], r["step"]) for r in curve.records if r["phase"] == "eval"}
    for expected in curve.expected:
        for step in range(expected.step - 1, expected.step + 3):
            protected.add((expected.attempt, step))
        if expected.kind == "spike":
            protected.update((expected.attempt, expected.step + d) for d in range(WINDOW + 3))
    kept = [
        r for r in curve.records if (r["attempt"], r["step"]) in protected or rng.random() >= gaps
    ]
    out: list[dict[str, Any]] = []
    for index, record in enumerate(kept):
        out.append(record)
        if rng.random() < duplicates:  # at least once: a batch re-sent after a timeout
            out.extend(kept[max(0, index - int(rng.integers(0, 10))) : index + 1])
    for _ in range(int(late * len(out))):  # a record overtaken by the next few
        index = int(rng.integers(0, len(out) - 11))
        record = out[index]
        if (record["attempt"], record["step"]) in protected:
            continue
        out.insert(index + int(rng.integers(2, 11)), out.pop(index))
    return Curve(curve.name + "+messy", curve.job, out, curve.expected)


def interleave(curves: Iterable[Curve], seed: int) -> list[dict[str, Any]]:
    """The records of several jobs in one stream, each job's order kept."""
    rng = np.random.default_rng(seed)
    queues = [list(reversed(c.records)) for c in curves]
    stream = []
    while any(queues):
        live = [q for q in queues if q]
        stream.append(live[int(rng.integers(0, len(live)))].pop())
    return stream


# --- judging --------------------------------------------------------------------------------


def match(expected: Iterable[Expected], verdicts: Iterable[Any], job: str | None = None):
    """(matched (expected, verdict) pairs, missed expectations, unexpected verdicts)."""
    left = [v for v in verdicts if job is None or v.job == job]
    matched, missed = [], []
    for want in expected:
        for verdict in left:
            if (
                verdict.kind == want.kind
                and verdict.channel == want.channel
                and verdict.attempt == want.attempt
                and abs(verdict.step - want.step) <= want.tolerance
            ):
                matched.append((want, verdict))
                left.remove(verdict)
                break
        else:
            missed.append(want)
    return matched, missed, left


BUILDERS = {
    "clean": clean,
    "clean_channels": clean_channels,
    "spike": transient_spike,
    "divergence": lasting_spike,
    "nonfinite": nonfinite,
    "drop": drop,
    "stage_change": stage_change,
    "channel_spike": channel_spike,
    "channel_divergence": lambda seed, **kw: channel_spike(seed, lasting=True, **kw),
    "ppl_rise": ppl_rise,
    "clean_evals": lambda seed, **kw: ppl_rise(seed, rising=False, **kw),
    "rollback": rollback,
}
