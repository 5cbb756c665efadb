"""Labelled metric streams built from the watchdog's definitions, for scoring the detector.

A stream is one job as trainers report it (`trainer/report.py` records, several channels and
their weighted total), with anomalies injected and labelled **by the definitions**, not by
what any detector does:

- spike: a series at least `spike_threshold` (15%) above its noiseless trend → `spike`,
  alert, due at the first such step (+2 steps).
- divergence: a spike not back within `recover_tolerance` (5%) of the trend by
  `recover_window_steps` (20) after its onset → `divergence`, rollback, due by onset + 25.
- nonfinite: NaN or ±Inf → `nonfinite`, rollback, due at the step (+1).
- drop: at least `drop_threshold` (25%) below the trend → `drop`, alert, due at its first
  step (+2); a drop never rolls back, however long it lasts or whether it comes back.
- ppl_rise: a channel's eval PPL rising for `ppl_rise_evals` (3) evals in a row while the
  other channels' fall → `ppl_rise`, alert, due at the third rising eval.

Every series is labelled on its own (the total loss and each `loss/<channel>`): an event on
one channel is labelled on the total only if the total itself crosses the definition. The
noise is multiplicative, heavy-tailed (Student-t innovations) and autocorrelated (AR(1)),
clipped to ±`noise` of the trend; injected factors multiply the noisy loss, as a bad batch
multiplies whatever the model's loss would have been. Sizes within `AMBIGUITY` of a
threshold are labelled "don't care": verdicts there count neither way.

`TUNING` is the range the detector was developed on; `WIDE` is wider in every direction
(noise 1–8%, tails, autocorrelation, warmup and decay shapes, several events per job, drops
that come back after long stretches, one-channel events, late, duplicated and lost records).
Tuning seeds and scoring seeds never overlap (`TUNING_SEEDS`, `SCORING_SEEDS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Definitions:
    """The thresholds the labels apply: the watchdog policy a detector is scored against."""

    spike: float = 0.15  # spike_threshold
    drop: float = 0.25  # drop_threshold
    tolerance: float = 0.05  # recover_tolerance
    window: int = 20  # recover_window_steps

    @property
    def divergence_due(self) -> int:
        """A divergence verdict is due by its spike's step plus this."""
        return self.window + 5

    def policy(self) -> dict[str, float]:
        """The detector `Policy` fields these definitions stand for."""
        return {
            "spike_threshold": self.spike,
            "drop_threshold": self.drop,
            "recover_tolerance": self.tolerance,
            "recover_window_steps": self.window,
        }


DEFINITIONS = Definitions()
ALERT_DUE = 2  # a spike or drop verdict is due by its first step + this
# Relative band around a threshold where a size is "don't care": an injected +14% on a noisy
# series is not a spike by the definition, +16% is, and no detector can split them reliably.
AMBIGUITY = 0.25

TUNING_SEEDS = range(0, 100_000)
SCORING_SEEDS = range(1_000_000, 1_100_000)


@dataclass(frozen=True)
class Ranges:
    """Parameter ranges a generator draws from (uniform unless said otherwise)."""

    steps: tuple[int, int] = (500, 1000)
    warmup: tuple[int, int] = (30, 150)
    noise: tuple[float, float] = (0.01, 0.04)  # clip of the relative noise (the ±amplitude)
    noise_std_share: tuple[float, float] = (0.3, 0.45)  # std as a share of the amplitude
    phi: tuple[float, float] = (0.3, 0.9)  # lag-one autocorrelation
    dof: tuple[float, float] = (3.0, 10.0)  # Student-t degrees of freedom of the innovations
    channels: tuple[int, int] = (0, 3)  # channels besides the total (0: the total alone)
    stages: tuple[int, int] = (1, 2)
    stage_factor: tuple[float, float] = (0.7, 1.4)
    decay_share: tuple[float, float] = (0.1, 0.25)
    decay_depth: tuple[float, float] = (0.03, 0.1)
    events: tuple[int, int] = (0, 2)
    spike_size: tuple[float, float] = (0.2, 1.5)  # log-uniform
    drop_size: tuple[float, float] = (0.3, 0.8)
    drop_steps: tuple[int, int] = (1, 5)
    spike_steps: tuple[int, int] = (1, 6)  # how long a transient spike takes to come back
    divergence_growth: tuple[float, float] = (0.0, 0.02)  # extra rise per step after onset
    ramp_steps: tuple[int, int] = (1, 1)  # steps a divergence takes to reach its size
    near_threshold: float = 0.15  # share of spikes and drops drawn near their threshold
    channel_events: float = 0.4  # share of events confined to one channel (when any)
    duplicates: float = 0.03
    late: float = 0.02
    lost: float = 0.03
    late_onsets: float = 0.0  # share of events whose first record arrives a few records late
    rollback_resume: float = 0.3  # share of divergences followed by a resumed attempt
    kinds: tuple[str, ...] = ("spike", "spike", "divergence", "drop", "drop", "nonfinite")


TUNING = Ranges()
WIDE = Ranges(
    steps=(400, 1500),
    warmup=(10, 300),
    noise=(0.01, 0.08),
    noise_std_share=(0.25, 0.5),
    phi=(0.0, 0.95),
    dof=(2.2, 30.0),
    channels=(0, 5),
    stages=(1, 3),
    stage_factor=(0.6, 1.5),
    decay_share=(0.05, 0.35),
    decay_depth=(0.02, 0.2),
    events=(0, 4),
    spike_size=(0.15, 4.0),
    drop_size=(0.25, 0.95),
    drop_steps=(1, 60),
    spike_steps=(1, 10),
    divergence_growth=(0.0, 0.05),
    ramp_steps=(1, 8),
    near_threshold=0.3,
    channel_events=0.5,
    duplicates=0.08,
    late=0.05,
    lost=0.08,
    late_onsets=0.2,
    rollback_resume=0.5,
)


@dataclass(frozen=True)
class Label:
    """A verdict a stream must raise (or, `dont_care`, may raise without penalty)."""

    kind: str  # spike, divergence, nonfinite, drop, ppl_rise
    channel: str  # "all" for the total loss
    onset: int
    due: int  # the latest step the verdict may carry
    attempt: int = 0
    dont_care: bool = False
    info: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # for reports

    @property
    def action(self) -> str:
        return "rollback" if self.kind in ("divergence", "nonfinite") else "alert"


@dataclass
class Stream:
    """One job's records (in delivery order) and its labels."""

    job: str
    records: list[dict[str, Any]]
    labels: list[Label]
    clean_steps: int  # series-steps outside every event's reach, for the false-alert rate
    events: list[str] = field(default_factory=list)  # what was injected, for reports
    noise: dict[str, tuple[float, float]] = field(default_factory=dict)  # series → (amplitude, phi)


@dataclass
class _Event:
    kind: str  # spike, divergence, nonfinite, drop
    channel: str | None  # None: every channel (the whole batch)
    onset: int
    factor: np.ndarray | None = None  # multiplicative factor over the steps (None: nonfinite)
    nonfinite_steps: int = 1
    size: float = 0.0
    growth: float = 0.0
    ramp: int = 1


# --- the clean run ----------------------------------------------------------------------------


def _trend(rng: np.random.Generator, ranges: Ranges, steps: int, warmup: int) -> np.ndarray:
    """A noiseless loss: warmup's fast fall, a slow power-law tail, a WSD decay."""
    t = np.arange(steps, dtype=float)
    floor = rng.uniform(1.5, 3.0)
    start = rng.uniform(2.0, 4.0)  # how far above the floor the run starts, in multiples
    shape = rng.integers(0, 3)
    if shape == 0:  # exponential fall over the warmup
        fast = start * floor * np.exp(-t / max(warmup / rng.uniform(1.5, 4.0), 2.0))
    elif shape == 1:  # power-law fall
        fast = start * floor / (1.0 + t / max(warmup / rng.uniform(3.0, 10.0), 1.0)) ** 1.5
    else:  # a near-linear fall in log space, then a bend
        fast = start * floor * np.clip(1.0 - t / max(warmup * rng.uniform(1.0, 1.5), 2.0), 0, 1) ** 2
    slow = rng.uniform(0.3, 1.5) / np.sqrt(1.0 + t / rng.uniform(30, 300))
    decay_steps = int(steps * rng.uniform(*ranges.decay_share))
    progress = np.clip((t - (steps - decay_steps)) / max(decay_steps, 1), 0.0, 1.0)
    decay_shape = rng.integers(0, 3)
    if decay_shape == 1:
        progress = np.sqrt(progress)
    elif decay_shape == 2:
        progress = (1 - np.cos(math.pi * progress)) / 2
    return (floor + fast + slow) * (1.0 - rng.uniform(*ranges.decay_depth) * progress)


def _noise(rng: np.random.Generator, ranges: Ranges, steps: int, amplitude: float) -> tuple[np.ndarray, float]:
    """Relative noise and its lag-one autocorrelation: AR(1) over Student-t innovations, std a
    share of the amplitude, clipped to ±amplitude."""
    phi = rng.uniform(*ranges.phi)
    dof = rng.uniform(*ranges.dof)
    std = amplitude * rng.uniform(*ranges.noise_std_share)
    raw = rng.standard_t(dof, steps)
    raw /= math.sqrt(dof / (dof - 2)) if dof > 2 else 1.0
    innovations = raw * std * math.sqrt(1 - phi**2)
    out = np.empty(steps)
    level = raw[0] * std
    for i in range(steps):
        level = phi * level + innovations[i]
        out[i] = level
    return np.clip(out, -amplitude, amplitude), phi


def _stage_bounds(rng: np.random.Generator, ranges: Ranges, steps: int, warmup: int) -> list[int]:
    count = int(rng.integers(ranges.stages[0], ranges.stages[1] + 1))
    bounds = [0]
    for _ in range(count - 1):
        low = max(bounds[-1] + 120, warmup + 60)
        if low >= steps - 120:
            break
        bounds.append(int(rng.integers(low, min(steps - 120, low + steps // 2))))
    return bounds


# --- events -----------------------------------------------------------------------------------


def _size(rng: np.random.Generator, bounds: tuple[float, float], threshold: float, near: float) -> float:
    """An event size: mostly log-uniform over `bounds`, sometimes just around the threshold."""
    if rng.random() < near:
        return float(threshold * rng.uniform(0.5, 1.8))
    low, high = bounds
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _spike_factor(rng, steps: int, onset: int, size: float, ranges: Ranges, lasting: bool) -> tuple[np.ndarray, float, int]:
    """(factor over the steps, growth per step, ramp steps) of a spike or a divergence."""
    t = np.arange(steps) - onset
    factor = np.ones(steps)
    after = t >= 0
    if lasting:
        ramp = int(rng.integers(ranges.ramp_steps[0], ranges.ramp_steps[1] + 1))
        growth = rng.uniform(*ranges.divergence_growth)
        level = size * np.minimum((t + 1) / ramp, 1.0) + growth * np.maximum(t - ramp, 0)
        factor[after] = 1.0 + level[after]
        return factor, growth, ramp
    duration = int(rng.integers(ranges.spike_steps[0], ranges.spike_steps[1] + 1))
    shape = rng.integers(0, 3)
    if shape == 0:  # a plateau, then straight back
        factor[(t >= 0) & (t < duration)] = 1.0 + size
    elif shape == 1:  # an exponential fall back
        tau = max(duration / 3.0, 0.4)
        factor[after] = 1.0 + size * np.exp(-t[after] / tau)
    else:  # a jump, then a linear fall back over `duration` steps
        factor[after] = 1.0 + size * np.clip(1.0 - t[after] / max(duration, 1), 0, 1)
    return factor, 0.0, 1


def _drop_factor(rng, steps: int, onset: int, size: float, ranges: Ranges) -> np.ndarray:
    duration = int(rng.integers(ranges.drop_steps[0], ranges.drop_steps[1] + 1))
    factor = np.ones(steps)
    factor[onset : onset + duration] = 1.0 - size
    return factor


def _plan_events(rng, ranges: Ranges, d: Definitions, steps: int, warmup: int, stage_starts: list[int], channels: list[str]) -> list[_Event]:
    count = int(rng.integers(ranges.events[0], ranges.events[1] + 1))
    events: list[_Event] = []
    earliest = warmup + 30
    gap = d.window + 60  # room for a recovery (or a long drop) before the next event
    for _ in range(count):
        if events and events[-1].kind == "divergence":
            break  # a divergence ends the story of its attempt
        start = max([earliest] + [e.onset + gap + _reach(e) for e in events])
        if start >= steps - d.window - 30:
            break
        onset = int(rng.integers(start, min(start + 300, steps - d.window - 30)))
        # Not while a new stage re-baselines, nor so close before one that its window spans it.
        near = [s for s in stage_starts[1:] if -(d.window + 30) < onset - s < 40]
        if near:
            onset = near[-1] + 40
            if onset >= steps - d.window - 30:
                break
        kind = str(rng.choice(list(ranges.kinds)))
        if kind == "divergence" and any(0 <= s - onset < 200 for s in stage_starts[1:]):
            kind = "spike"  # a divergence runs on: it may not cross into a new stage
        if kind == "drop" and any(0 <= s - onset < 120 for s in stage_starts[1:]):
            kind = "spike"  # nor may a long drop
        channel = None
        if channels and kind != "nonfinite" and rng.random() < ranges.channel_events:
            channel = str(rng.choice(channels))
        if kind == "nonfinite":
            events.append(_Event(kind, None, onset, nonfinite_steps=int(rng.integers(1, 4))))
        elif kind == "drop":
            size = min(_size(rng, ranges.drop_size, d.drop, ranges.near_threshold), 0.97)
            events.append(_Event(kind, channel, onset, _drop_factor(rng, steps, onset, size, ranges), size=size))
        else:
            lasting = kind == "divergence"
            size = _size(rng, ranges.spike_size, d.spike, ranges.near_threshold)
            factor, growth, ramp = _spike_factor(rng, steps, onset, size, ranges, lasting)
            events.append(_Event(kind, channel, onset, factor, size=size, growth=growth, ramp=ramp))
    return events


def _reach(event: _Event) -> int:
    if event.factor is None:
        return event.nonfinite_steps
    moved = np.nonzero(np.abs(event.factor - 1.0) > 1e-9)[0]
    return int(moved[-1] - event.onset + 1) if len(moved) else 1


# --- labels -----------------------------------------------------------------------------------


def _labels_for(series: str, effect: np.ndarray, excess: np.ndarray, event: _Event, attempt: int, d: Definitions) -> list[Label]:
    """The labels one series carries for one event.

    `effect` is the event's noiseless relative effect on the series (1 = none); `excess` is
    the observed loss over the series' local level (its trend times the part of the noise
    the previous step predicts, `1 + phi * noise[t-1]`), minus 1. The definition is applied to
    `effect`; where the noise ate the event, so that even an observer who knew the trend and
    the noise's autocorrelation would see less than the threshold's lower band, the label is
    "don't care" (no detector can be blamed for it, nor praised).
    """
    onset = event.onset
    rel = effect - 1.0
    if event.kind == "drop":
        low = -float(rel[onset:].min())
        if low < d.drop * (1 - AMBIGUITY):
            # Too small for a drop, unless the noise made it one where it landed.
            seen = float(excess[onset : onset + ALERT_DUE + 1].min())
            return [Label("drop", series, onset, onset + ALERT_DUE, attempt, True)] if seen <= -d.drop else []
        first = onset + int(np.argmax(rel[onset:] <= -d.drop * (1 - AMBIGUITY)))
        seen = float(excess[first : first + ALERT_DUE + 1].min())
        dont = low < d.drop * (1 + AMBIGUITY) or seen > -d.drop * (1 - AMBIGUITY)
        return [Label("drop", series, first, first + ALERT_DUE, attempt, dont)]
    high = float(rel[onset:].max())
    if high < d.spike * (1 - AMBIGUITY):
        seen = float(excess[onset : onset + ALERT_DUE + 1].max())
        return [Label("spike", series, onset, onset + ALERT_DUE, attempt, True)] if seen >= d.spike else []
    first = onset + int(np.argmax(rel[onset:] >= d.spike * (1 - AMBIGUITY)))
    clear = high >= d.spike * (1 + AMBIGUITY)
    crossing = onset + int(np.argmax(rel[onset:] >= d.spike * (1 + AMBIGUITY))) if clear else first
    seen = float(excess[first : crossing + ALERT_DUE + 1].max())
    dont = not clear or seen < d.spike * (1 - AMBIGUITY)
    labels = [Label("spike", series, first, crossing + ALERT_DUE, attempt, dont)]
    # The definition's spike step (the noiseless crossing of the threshold itself) starts the
    # recover window; a slow rise reaches it later than the lower band.
    spike_step = onset + int(np.argmax(rel[onset:] >= d.spike)) if high >= d.spike else first
    # Back within tolerance by the window's end? Judged on the median of the last steps.
    end = first + d.window
    tail = rel[end - 2 : end + 1] if end + 1 <= len(rel) else rel[-3:]
    stays = float(np.median(tail))
    if event.kind == "divergence" or stays > d.tolerance:
        ambiguous = dont or stays < d.tolerance * 3 or float(rel[first : end + 1].min()) < d.tolerance * 2
        labels.append(Label("divergence", series, first, spike_step + d.divergence_due, attempt, ambiguous))
    else:
        # A transient must be clearly back: between half the window and the window is a grey zone.
        back = first + int(np.argmax(rel[first:] <= d.tolerance))
        if back > first + d.window // 2:
            labels.append(Label("divergence", series, first, spike_step + d.divergence_due, attempt, True))
    return labels


def _local_excess(observed: np.ndarray, trend: np.ndarray, clean: np.ndarray, phi: float) -> np.ndarray:
    """Observed over the local level `trend * (1 + phi * noise[t-1])`, minus 1."""
    noise = clean / trend - 1.0
    local = trend * (1.0 + phi * np.concatenate([[0.0], noise[:-1]]))
    return observed / local - 1.0


# --- a whole stream ---------------------------------------------------------------------------


def stream(seed: int, ranges: Ranges = TUNING, definitions: Definitions = DEFINITIONS) -> Stream:
    """The labelled stream of job `job-<seed>`, drawn from `ranges`, labelled by `definitions`."""
    d = definitions
    rng = np.random.default_rng(seed)
    job = f"job-{seed}"
    steps = int(rng.integers(*ranges.steps))
    warmup = int(rng.integers(*ranges.warmup))
    channel_count = int(rng.integers(ranges.channels[0], ranges.channels[1] + 1))
    channels = [f"c{i}" for i in range(channel_count)]
    weights = dict(zip(channels, rng.dirichlet(np.ones(channel_count) * 2), strict=True)) if channels else {}
    stage_starts = _stage_bounds(rng, ranges, steps, warmup)
    stage_of = np.searchsorted(stage_starts, np.arange(steps), side="right") - 1
    base = _trend(rng, ranges, steps, warmup)
    level_shift = np.ones(steps)
    for start in stage_starts[1:]:
        level_shift[start:] *= rng.uniform(*ranges.stage_factor)
    amplitude = rng.uniform(*ranges.noise)
    # Each channel has its own level and noise (a channel's loss over its small share of the
    # batch is noisier than the total); a job without channels reports the total alone.
    parts = channels or ["all"]
    trends = {c: base * level_shift * (rng.uniform(0.6, 1.6) if channels else 1.0) for c in parts}
    noises, phis = {}, {}
    for c in parts:
        scale = min(0.08, amplitude * rng.uniform(1.0, 1.6)) if channels else amplitude
        noises[c], phis[c] = _noise(rng, ranges, steps, scale)
    events = _plan_events(rng, ranges, d, steps, warmup, stage_starts, channels)

    factors = {c: np.ones(steps) for c in parts}
    nonfinite = np.zeros(steps, dtype=bool)
    for event in events:
        if event.factor is None:
            nonfinite[event.onset : event.onset + event.nonfinite_steps] = True
            continue
        for c in parts:
            if event.channel in (None, c):
                factors[c] = factors[c] * event.factor
    clean = {c: trends[c] * (1 + noises[c]) for c in parts}
    noisy = {c: clean[c] * factors[c] for c in parts}
    series = {"loss": _total(noisy, weights)}
    series.update({f"loss/{c}": noisy[c] for c in channels})

    # Per series: its trend, its clean noisy values and its phi, for the observed excess.
    views = {"all": (_total(trends, weights), _total(clean, weights), _mean_phi(phis, weights))}
    views.update({c: (trends[c], clean[c], phis[c]) for c in channels})
    labels: list[Label] = []
    for event in events:
        names = ["all", *channels]
        if event.kind == "nonfinite":
            labels += [Label("nonfinite", name, event.onset, event.onset + 1) for name in names]
            continue
        for name in names:
            trend, clean_values, phi = views[name]
            if name == "all":
                moved = _total({c: trends[c] * (event.factor if event.channel in (None, c) else 1.0) for c in parts}, weights)
                effect = moved / trend
                observed = series["loss"]
            elif event.channel in (None, name):
                effect, observed = event.factor, series[f"loss/{name}"]
            else:
                continue
            excess = _local_excess(observed, trend, clean_values, phi)
            amplitude_of = float(np.max(np.abs(clean_values / trend - 1.0)))
            info = {"event": event.kind, "size": round(event.size, 3), "on": event.channel or "all", "noise": round(amplitude_of, 3), "phi": round(phi, 2), "growth": round(event.growth, 3), "ramp": event.ramp}
            labels += [replace(label, info=info) for label in _labels_for(name, effect, excess, event, 0, d)]

    records = _records(job, series, stage_of, warmup, steps, nonfinite, attempt=0, first=0)
    attempts_end = steps
    divergence = next((e for e in events if e.kind == "divergence"), None)
    if divergence is not None and rng.random() < ranges.rollback_resume:
        # The watchdog rolled back: the attempt stops a little after the verdict and attempt 1
        # resumes from a checkpoint before the onset, re-using step numbers, without the fault.
        due = max(label.due for label in labels if label.kind == "divergence" and label.onset >= divergence.onset)
        stop = min(due + int(rng.integers(1, 8)), steps)
        records = [r for r in records if r["step"] < stop]
        restart = max(divergence.onset - int(rng.integers(20, 120)), warmup + 1)
        resumed_parts = {c: trends[c] * (1 + _noise(rng, ranges, steps, amplitude)[0]) for c in parts}
        resumed = {"loss": _total(resumed_parts, weights)}
        resumed.update({f"loss/{c}": resumed_parts[c] for c in channels})
        records += _records(job, resumed, stage_of, warmup, steps, np.zeros(steps, bool), attempt=1, first=restart)
        labels = [label for label in labels if label.onset < stop]
        attempts_end = stop + (steps - restart)
    records, late_onsets = _deliver(rng, records, labels, ranges)
    labels = _drop_unreachable(labels, records)
    reach = sum(_reach(e) + d.window + 10 for e in events)
    clean_steps = max(0, attempts_end - warmup - reach) * len(series)
    described = [f"{e.kind}@{e.onset}/{e.channel or 'all'}/{e.size:.2f}" for e in events]
    noise = {
        name: (round(float(np.max(np.abs(clean_values / trend - 1.0))), 3), round(phi, 2))
        for name, (trend, clean_values, phi) in views.items()
    }
    return Stream(job, records, labels, clean_steps, described + late_onsets, noise)


def _total(values: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    if not weights:
        return values["all"]
    return sum(weights[c] * values[c] for c in weights)


def _mean_phi(phis: dict[str, float], weights: dict[str, float]) -> float:
    if not weights:
        return phis["all"]
    return float(sum(weights[c] * phis[c] for c in weights))


def _records(job, series, stage_of, warmup, steps, nonfinite, *, attempt: int, first: int) -> list[dict[str, Any]]:
    out = []
    for step in range(first, steps):
        metrics: dict[str, Any] = {}
        for name, values in series.items():
            metrics[name] = "NaN" if nonfinite[step] else float(values[step])
        metrics["lr"] = 3e-4
        metrics["grad_norm"] = 1.0
        phase = "warmup" if step < warmup else "stable"
        out.append(
            {
                "job": job,
                "attempt": attempt,
                "step": step,
                "stage": f"stage-{stage_of[step]}",
                "phase": phase,
                "tokens": step * 4096,
                "metrics": metrics,
            }
        )
    return out


def _deliver(rng, records: list[dict], labels: list[Label], ranges: Ranges) -> tuple[list[dict], list[str]]:
    """Records as the ingest path may hand them over: lost, re-sent, late."""
    onsets = {(label.attempt, label.onset) for label in labels}
    near = {(a, s + d) for a, s in onsets for d in range(0, 3)}
    kept = [r for r in records if (r["attempt"], r["step"]) in near or rng.random() >= ranges.lost]
    out: list[dict] = []
    for index, record in enumerate(kept):
        out.append(record)
        if rng.random() < ranges.duplicates:  # a batch re-sent after a timeout
            out.extend(kept[max(0, index - int(rng.integers(0, 10))) : index + 1])
    for _ in range(int(ranges.late * len(out))):
        index = int(rng.integers(0, max(1, len(out) - 6)))
        if (out[index]["attempt"], out[index]["step"]) in near:
            continue
        out.insert(min(len(out), index + int(rng.integers(2, 6))), out.pop(index))
    late: list[str] = []
    for attempt, onset in sorted(onsets):
        if rng.random() >= ranges.late_onsets:
            continue
        index = next((i for i, r in enumerate(out) if (r["attempt"], r["step"]) == (attempt, onset)), None)
        if index is None or index + 2 >= len(out):
            continue
        out.insert(index + 1, out.pop(index))  # overtaken by the record after it
        late.append(f"late-onset@{onset}")
    return out, late


def _drop_unreachable(labels: list[Label], records: list[dict]) -> list[Label]:
    """A nonfinite label needs its record delivered (others may be seen a step later)."""
    delivered = {(r["attempt"], r["step"]) for r in records}
    return [
        label
        for label in labels
        if label.kind != "nonfinite" or (label.attempt, label.onset) in delivered
    ]


def streams(seeds: Iterable[int], ranges: Ranges = TUNING, definitions: Definitions = DEFINITIONS) -> list[Stream]:
    return [stream(seed, ranges, definitions) for seed in seeds]


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class Score:
    """Tallies of one detector over streams, by kind and by channel class."""

    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    false: dict[str, int] = field(default_factory=dict)
    latency: dict[str, list[int]] = field(default_factory=dict)
    clean_steps: int = 0
    missed_examples: list[tuple[str, Label]] = field(default_factory=list)
    false_examples: list[tuple[str, str, str, int]] = field(default_factory=list)

    def add(self, table: dict, key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def rate(self, action: str) -> dict[str, float]:
        kinds = [k for k in set(self.hits) | set(self.misses) | set(self.false) if _action(k) == action]
        hits = sum(self.hits.get(k, 0) for k in kinds)
        misses = sum(self.misses.get(k, 0) for k in kinds)
        false = sum(self.false.get(k, 0) for k in kinds)
        return {
            "precision": hits / (hits + false) if hits + false else 1.0,
            "recall": hits / (hits + misses) if hits + misses else 1.0,
            "hits": hits,
            "misses": misses,
            "false": false,
        }

    def false_alerts_per_10k(self) -> float:
        false = sum(n for k, n in self.false.items() if _action(k) == "alert")
        return 1e4 * false / max(self.clean_steps, 1)


def _action(kind_key: str) -> str:
    return "rollback" if kind_key.split("/")[0] in ("divergence", "nonfinite") else "alert"


def _channel_class(channel: str) -> str:
    return "total" if channel == "all" else "channel"


def score(all_streams: Sequence[Stream], detector_factory, *, examples: int = 20, definitions: Definitions = DEFINITIONS) -> Score:
    """Run a fresh detector over each stream; match verdicts to labels per series and kind."""
    result = Score()
    for s in all_streams:
        detector = detector_factory()
        verdicts = [v for record in s.records for v in detector.observe(record)]
        result.clean_steps += s.clean_steps
        pending = list(verdicts)
        for label in s.labels:
            found = next(
                (
                    v
                    for v in pending
                    if v.kind == label.kind
                    and v.channel == label.channel
                    and v.attempt == label.attempt
                    and label.onset <= v.step <= label.due
                ),
                None,
            )
            key = f"{label.kind}/{_channel_class(label.channel)}"
            if found is not None:
                pending.remove(found)
                if not label.dont_care:
                    result.add(result.hits, key)
                    result.latency.setdefault(label.kind, []).append(found.step - label.onset)
            elif not label.dont_care:
                result.add(result.misses, key)
                if len(result.missed_examples) < examples:
                    result.missed_examples.append((s.job, label))
        for verdict in pending:
            # A second verdict of an event that was "don't care" is no false alarm either.
            if any(
                label.dont_care and label.kind == verdict.kind and label.channel == verdict.channel
                and label.onset <= verdict.step <= label.due + definitions.window
                for label in s.labels
            ):
                continue
            key = f"{verdict.kind}/{_channel_class(verdict.channel)}"
            result.add(result.false, key)
            if len(result.false_examples) < examples:
                result.false_examples.append((s.job, verdict.kind, verdict.channel, verdict.step))
    return result


def with_ranges(base: Ranges, **changes: Any) -> Ranges:
    return replace(base, **changes)
