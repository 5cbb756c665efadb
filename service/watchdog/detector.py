"""Loss-anomaly detection over the trainer's metric records: pure, online, restartable.

Every loss series (`loss` as channel "all", each `loss/<channel>`) of a job attempt is judged
on its own, in log space, against references built from its last `TREND_WINDOW` accepted
points and their slope (medians of the window's halves joined, never rising):

- the **trend**: the window's median, carried along the slope to the new step — where the
  noise is centred;
- the **expected** value: the trend plus the part of the last point's deviation that carries
  over (the deviations' lag-one autocorrelation, bounded by their spread), so autocorrelated
  noise that wanders is expected to wander on, and a jump out of it is seen at its size;
- the **local level**: the median of the last `LOCAL_POINTS` points carried along the newer
  half's slope. Where the curve bends (the end of warmup, the start of a decay) a line through
  the window misleads, so there the expected value is never below the local level.

Definitions (the `Policy` knobs in brackets):
- spike: loss ≥ `spike_threshold` above the expected value, above each of the last few points
  and clearly above where they lie → alert, at the first such step. A creeping rise the local
  level follows is a spike once ≥ `spike_threshold` above a trusted trend. The reference is
  frozen for the episode (the higher of trend and local level); its points never enter the
  window. While a channel is in a spike, the total's rises are its echo: judged, not learned.
- divergence: a spike whose loss is not back within `recover_tolerance` of the frozen
  reference (median of the last points; the tolerance widened to the series' own noise, never
  beyond two thirds of a spike) by `recover_window_steps` after its onset → rollback, once.
  Its evidence backdates the onset to where the excursion began. A spike back up within a
  window of coming down is the same episode.
- nonfinite: NaN or ±Inf → rollback, at once, once per run of non-finite values.
- drop: loss ≥ `drop_threshold` below the local level and clearly below each of the last few
  points (the steady fall of warmup or decay is no drop) → alert. A drop is never a rollback
  and never the reference: while it lasts the reference stays frozen, so the return to the
  normal level is its end, not a spike. A fall too small for a drop but beyond the noise (a
  dip) is held out of the window the same way, silently. A fall that stays
  (`LONG_DROP_WINDOWS` windows for a drop, one for a dip) becomes the new level, and a climb
  back to the old one soon after is still its end.
- ppl_rise: a channel's `eval/ppl/<channel>` rises for `ppl_rise_evals` evals in a row while
  the other channels' mean log-PPL falls → alert.

Nothing is judged until `min_history` points exist; a new `stage` starts the window again; a
new attempt (after a rollback, re-using step numbers) starts every series of the job afresh.
A duplicate record changes nothing but `Detector.counts`; a late one (older than the newest
step of its series, by at most `SEEN_STEPS`) is still judged for non-finite values, spikes and
drops against the references of the moment, but never enters the window; an older one is only
counted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any

from service.spec import WatchdogSpec

ALL_CHANNELS = "all"
LOSS = "loss"
LOSS_PREFIX = "loss/"
PPL_PREFIX = "eval/ppl/"
EVAL_PHASE = "eval"

# Points of a series the references are built from.
TREND_WINDOW = 40
# Points the local level is the median of: enough to shrug off one outlier, few enough to
# follow autocorrelated noise.
LOCAL_POINTS = 5
# Steps of a series remembered to tell a duplicate from a late record.
SEEN_STEPS = 64
# The recover decision takes the median of this many latest ratios: one lucky point is not
# enough to call a divergence back, nor one unlucky one to call a recovery off.
RECOVERY_POINTS = 5
# During an episode the frozen reference runs on at this fraction of its slope: a slope fitted
# to noise must not carry the reference away, and a real fall is still followed well enough.
EPISODE_SLOPE = 0.5
# How far above its noise a loss must come back to count as recovered, in robust standard
# deviations of the window around its trend.
NOISE_ALLOWANCE_SIGMAS = 3.0
# The trend is trusted where the window's halves fall at rates within this (log per step,
# scaled by the window) of each other.
BEND_TOLERANCE = 0.03
# ...and where the whole window falls by less than this (log): a line through a steep fall
# says little about the next step.
STEEP_WINDOW = 0.15
# A drop is held (its level the reference) for this many recover windows before the level it
# fell to is taken as the new one.
LONG_DROP_WINDOWS = 5
# A fall below the local level by this many robust standard deviations (and at least half a
# spike) is held out of the window as a silent dip.
DIP_SIGMAS = 4.0
# A spike rises this many robust standard deviations of its series above the expectation, at
# least: for a series whose noise reaches the threshold, the threshold alone would be noise.
SPIKE_SIGMAS = 3.0
# A window's fit is carried at most this many steps before it is fitted again.
REFIT_STEPS = 5
# The carried part of the last deviation is bounded by this many robust standard deviations.
CARRY_SIGMAS = 2.0
STATE_VERSION = 2

_NONFINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_COUNTERS = ("records", "duplicate", "late", "stale_attempt")


_SPEC_DEFAULTS = WatchdogSpec.model_fields


@dataclass(frozen=True)
class Policy:
    """The watchdog's knobs (a JobSpec's `watchdog` section, minus what the detector ignores)."""

    # The knobs a JobSpec sets take their defaults from WatchdogSpec, where they are declared.
    spike_threshold: float = _SPEC_DEFAULTS["spike_threshold"].default
    """Relative rise over the recent trend that counts as a spike."""
    drop_threshold: float = _SPEC_DEFAULTS["drop_threshold"].default
    """Relative fall under the recent trend that counts as a drop."""
    recover_window_steps: int = _SPEC_DEFAULTS["recover_window_steps"].default
    """Steps a spike may take to come back before it is a divergence."""
    recover_tolerance: float = 0.05
    """How close to the trend (relative) a spike must come back to count as recovered."""
    min_history: int = 10
    """Points a series needs before it is judged."""
    ppl_rise_evals: int = 3
    """Consecutive rising evals of one channel's PPL that raise an alert."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"watchdog {spec.name} must be a positive number, got {value!r}")
        if self.drop_threshold >= 1:
            raise ValueError(f"watchdog drop_threshold must be below 1, got {self.drop_threshold}")

    @classmethod
    def from_spec(cls, watchdog: Any) -> Policy:
        """From a JobSpec's `watchdog` section (a mapping or the model); other keys are ignored."""
        if watchdog is None:
            return cls()
        if hasattr(watchdog, "model_dump"):
            watchdog = watchdog.model_dump()
        if not isinstance(watchdog, Mapping):
            raise ValueError(f"a watchdog section is a mapping, got {type(watchdog).__name__}")
        known = {spec.name for spec in fields(cls)}
        return cls(**{key: value for key, value in watchdog.items() if key in known})


@dataclass(frozen=True)
class Verdict:
    """One anomaly: what, where, and what to do about it."""

    job: str
    attempt: int
    step: int
    kind: str  # spike, divergence, nonfinite, drop, ppl_rise
    action: str  # alert or rollback
    channel: str  # "all" for the total loss
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Reference:
    """Where a series' loss is expected at a step (log space), and how noisy it is."""

    local: float
    trend: float
    trusted: bool  # whether the trend may be used (the window does not bend)
    slope: float  # the rate the curve falls at now (log per step, never positive)
    plain: float  # the median of the latest points, not carried
    predicted: float  # the trend plus the part of the last deviation that carries over
    sigma: float  # robust standard deviation of the window around its trend


class _LossSeries:
    """The state of one loss series of one job attempt."""

    __slots__ = (
        "stage", "last_step", "seen", "steps", "logs", "fit", "episode", "closed", "nonfinite"
    )

    def __init__(self, stage: str | None = None) -> None:
        self.stage = stage
        self.last_step: int | None = None
        self.seen: list[int] = []  # the latest steps received, to tell duplicates from late ones
        self.steps: list[int] = []  # accepted points, oldest first, at most TREND_WINDOW
        self.logs: list[float] = []
        # The window's last full fit (`fit_window`), carried for a few steps between refits.
        self.fit: dict[str, Any] | None = None
        # An open spike/drop/divergence: kind, onset, frozen reference, latest ratios.
        self.episode: dict[str, Any] | None = None
        # The last episode that ended, with the step it ended at: a spike back within a
        # window is the same episode, and late records inside it are already judged.
        self.closed: dict[str, Any] | None = None
        self.nonfinite: int | None = None  # the step a run of non-finite values began

    def rebaseline(self) -> None:
        self.clear_window()
        self.episode = None
        self.closed = None

    def clear_window(self) -> None:
        self.steps.clear()
        self.logs.clear()
        self.fit = None

    def close_episode(self, step: int) -> None:
        assert self.episode is not None
        self.closed = {**self.episode, "end": step}
        self.episode = None

    def accept(self, step: int, log_value: float) -> None:
        self.steps.append(step)
        self.logs.append(log_value)
        if len(self.steps) > TREND_WINDOW:
            del self.steps[0], self.logs[0]

    def remember(self, step: int) -> bool:
        """Note a received step; False when it was received before (a duplicate)."""
        if step in self.seen:
            return False
        self.seen.append(step)
        if len(self.seen) > SEEN_STEPS:
            del self.seen[0]
        return True

    def to_dict(self) -> dict[str, Any]:
        return {slot: getattr(self, slot) for slot in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _LossSeries:
        series = cls()
        for slot in cls.__slots__:
            setattr(series, slot, data[slot])
        return series


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _slope(steps: list[int], logs: list[float]) -> float:
    """Slope per step joining the medians of the older and the newer half, never positive: a
    healthy loss does not trend up, and a rise that noise fits as a slope would hide the next
    spike."""
    half = len(steps) // 2
    if half == 0:
        return 0.0
    run = _median(steps[-half:]) - _median(steps[:half])
    if run <= 0:
        return 0.0
    return min((_median(logs[-half:]) - _median(logs[:half])) / run, 0.0)


def fit_window(series: _LossSeries, step: int) -> dict[str, Any]:
    """The window's robust fit at `step`: trend level, slopes, noise spread and autocorrelation."""
    steps, logs = series.steps, series.logs
    half = len(steps) // 2
    slope = _slope(steps, logs)
    newer = _slope(steps[half:], logs[half:])
    carried = [y + slope * (step - x) for x, y in zip(steps, logs, strict=True)]
    trend = _median(carried)
    deviations = [value - trend for value in carried]
    sigma = 1.4826 * _median([abs(d) for d in deviations])
    # Autocorrelated noise: the lag-one autocorrelation of the deviations from the trend.
    product = power = 0.0
    for index in range(1, len(steps)):
        if steps[index] - steps[index - 1] == 1:
            product += deviations[index - 1] * deviations[index]
            power += deviations[index - 1] * deviations[index - 1]
    phi = min(max(product / power, 0.0), 0.95) if power > 0 else 0.0
    # A bend (the end of warmup, the start of a decay) shows as the whole window's slope and
    # the newer half's disagreeing about where the curve is now; a line through it misleads.
    disagreement = abs(slope - newer) * (step - _median(steps))
    span = steps[-1] - steps[0] + 1
    trusted = disagreement <= BEND_TOLERANCE and -slope * span <= STEEP_WINDOW
    return {
        "step": step, "trend": trend, "slope": slope, "newer": newer,
        "sigma": sigma, "phi": phi, "trusted": trusted,
    }  # fmt: skip


def reference(series: _LossSeries, step: int, fit: Mapping[str, Any] | None = None) -> _Reference:
    """The references of `series` at `step`, from `fit` (a recent `fit_window`) or a new fit."""
    fit = fit or fit_window(series, step)
    steps, logs = series.steps, series.logs
    trend = fit["trend"] + fit["slope"] * (step - fit["step"])
    # The local level is carried a few steps at most, at the rate the curve falls now: where
    # the fall slows (the end of warmup) the whole window's slope would undershoot.
    latest = list(zip(steps[-LOCAL_POINTS:], logs[-LOCAL_POINTS:], strict=True))
    local = _median([y + fit["newer"] * (step - x) for x, y in latest])
    # The next point is expected at the trend plus the share of the last point's deviation
    # that carries over — the noise's wander, bounded by its spread: a point that jumped (the
    # first step of a spike) must not lift the expectation of the next one with it.
    last = logs[-1] - (fit["trend"] + fit["slope"] * (steps[-1] - fit["step"]))
    bound = CARRY_SIGMAS * fit["sigma"]
    carry = fit["phi"] ** max(step - steps[-1], 1) * last
    predicted = trend + max(-bound, min(bound, carry))
    plain = _median(logs[-LOCAL_POINTS:])
    return _Reference(local, trend, fit["trusted"], fit["newer"], plain, predicted, fit["sigma"])


def _encode_nonfinite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _loss_value(raw: Any) -> float | None:
    """A metric value as a float (non-finite strings included); None when it is no number."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return _NONFINITE_STRINGS.get(raw)
    return None


class Detector:
    """Turns a stream of trainer records (jobs interleaved) into verdicts; no I/O, no clocks."""

    def __init__(self, policy: Policy | Callable[[str], Policy] = Policy()) -> None:
        self._policy_for = policy if callable(policy) else (lambda _job: policy)
        self._policies: dict[str, Policy] = {}
        # job → {"attempt": n, "series": {metric: _LossSeries}, "ppl": {...}}
        self._jobs: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def policy(self, job: str) -> Policy:
        """The policy of `job`, looked up once."""
        policy = self._policies.get(job)
        if policy is None:
            policy = self._policies[job] = self._policy_for(job)
        return policy

    # --- the stream ----------------------------------------------------------------------

    def observe(self, record: Mapping[str, Any]) -> list[Verdict]:
        """Judge one trainer record; the verdicts it raises, possibly one per channel."""
        job, attempt, step = _identity(record)
        self.counts["records"] += 1
        state = self._jobs.get(job)
        if state is None or attempt > state["attempt"]:
            state = self._jobs[job] = {"attempt": attempt, "series": {}, "ppl": _new_ppl()}
        elif attempt < state["attempt"]:
            self.counts["stale_attempt"] += 1
            return []
        metrics = record.get("metrics") or {}
        stage = record.get("stage")
        policy = self.policy(job)
        verdicts: list[Verdict] = []
        if record.get("phase") == EVAL_PHASE:
            self._observe_ppl(state["ppl"], job, attempt, step, stage, metrics, policy, verdicts)
            return verdicts
        # Channels first: while one of them is in a spike, the total moves with it:
        # its points are judged but not learned from, so the total still sees a rise against
        # where it was.
        names = [n for n in metrics if n.startswith(LOSS_PREFIX)]
        if LOSS in metrics:
            names.append(LOSS)
        echo = False
        for name in names:
            channel = ALL_CHANNELS if name == LOSS else name[len(LOSS_PREFIX) :]
            value = _loss_value(metrics[name])
            if value is None:
                continue
            series = state["series"].get(name)
            if series is None:
                series = state["series"][name] = _LossSeries(stage)
            outcome = self._observe_loss(series, step, stage, value, policy, hold=echo and name == LOSS)
            echo = echo or (series.episode is not None and series.episode["kind"] == "spike")
            if outcome is not None:
                kind, action, evidence = outcome
                verdicts.append(Verdict(job, attempt, step, kind, action, channel, evidence))
        # Said in the record's own order of metrics, whatever order they were judged in.
        order = {name: index for index, name in enumerate(metrics)}
        verdicts.sort(key=lambda v: order.get(LOSS if v.channel == ALL_CHANNELS else LOSS_PREFIX + v.channel, 0))
        return verdicts

    def _observe_loss(
        self,
        series: _LossSeries,
        step: int,
        stage: Any,
        value: float,
        policy: Policy,
        *,
        hold: bool = False,
    ) -> tuple[str, str, dict[str, Any]] | None:
        if not series.remember(step):
            self.counts["duplicate"] += 1
            return None
        if series.last_step is not None and step < series.last_step:
            self.counts["late"] += 1
            if step < series.last_step - SEEN_STEPS:
                return None  # too old to say anything about now
            return self._judge_late(series, step, stage, value, policy)
        series.last_step = step
        if stage != series.stage:
            series.stage = stage
            series.rebaseline()
        if not math.isfinite(value):
            if series.nonfinite is not None:
                return None
            series.nonfinite = step
            return "nonfinite", "rollback", {"onset": step, "value": _encode_nonfinite(value)}
        series.nonfinite = None
        log_value = math.log(max(value, 1e-30))
        if series.episode is not None:
            return self._continue_episode(series, step, log_value, value, policy)
        if len(series.steps) < policy.min_history:
            series.accept(step, log_value)
            return None
        # Between refits the last fit is carried: a point well inside the noise changes the
        # fit too little to matter. Anything closer to a verdict is judged on a fresh fit.
        fit = series.fit
        judged: tuple[str, float] | None = None
        fresh = fit is None or step - fit["step"] >= REFIT_STEPS
        if not fresh:
            ref = reference(series, step, fit)
            judged = _classify(series, ref, log_value, policy)
            fresh = judged is not None or not _well_inside(ref, log_value, policy)
        if fresh:
            series.fit = fit_window(series, step)
            ref = reference(series, step, series.fit)
            judged = _classify(series, ref, log_value, policy)
        if judged is None:
            # An echo is judged, not learned from; the window waits (a while) for it to pass.
            if not hold or step - series.steps[-1] > LONG_DROP_WINDOWS * policy.recover_window_steps:
                series.accept(step, log_value)
            return None
        kind, level = judged
        closed = series.closed
        if kind == "spike" and closed is not None:
            if closed["kind"] in ("spike", "diverged") and step - closed["end"] <= policy.recover_window_steps:
                # Back up within a window of coming down: the same episode, not a new one.
                series.episode, series.closed = {**closed, "ratios": [], "reopened": step}, None
                del series.episode["end"]
                return self._continue_episode(series, step, log_value, value, policy)
            if closed.get("stayed") and _returns_to(closed, step, log_value, policy):
                # The loss climbs back to where it was before a fall that became the new level:
                # the fall is over. Start the window again from here.
                series.closed = None
                series.clear_window()
                series.accept(step, log_value)
                return None
        return self._open_episode(series, ref, kind, level, step, log_value, value, policy)

    def _open_episode(
        self,
        series: _LossSeries,
        ref: _Reference,
        kind: str,
        level: float,
        step: int,
        log_value: float,
        value: float,
        policy: Policy,
    ) -> tuple[str, str, dict[str, Any]] | None:
        ratio = math.exp(log_value - level) - 1
        # A dip follows the steeper of the newer half's fall and the whole window's: a dip in
        # a fall that paused for a few points (noise early in warmup) goes on falling with the
        # curve, and that is no drop.
        fall = min(ref.slope, series.fit["slope"]) if kind == "dip" and series.fit else ref.slope
        series.episode = {
            "kind": kind,
            "onset": step,
            "start": _excursion_start(series, ref, step, policy) if kind == "spike" else step,
            "level": level,
            # A fall ends where the loss is back at the lower reference; a rise out of it is a
            # spike only over the higher one.
            "high": max(ref.local, ref.trend, level),
            # A rise's frozen reference falls on at most this rate (the curve may stop falling
            # and the rise would look like it stays); a fall's follows the curve, which goes on
            # falling under it.
            "slope": max(ref.slope, -policy.recover_tolerance / policy.recover_window_steps)
            if kind == "spike"
            else fall,
            "sigma": ref.sigma,
            "ratios": [ratio],
        }
        if kind in ("drop", "dip"):
            series.episode["points"] = [[step, log_value]]
        if kind == "dip":
            return None
        evidence = {"onset": step, "value": value, "trend": math.exp(level), "ratio": ratio}
        return kind, "alert", evidence

    def _continue_episode(
        self, series: _LossSeries, step: int, log_value: float, value: float, policy: Policy
    ) -> tuple[str, str, dict[str, Any]] | None:
        episode = series.episode
        assert episode is not None
        window = policy.recover_window_steps
        ahead = min(step - episode["onset"], window)
        follow = EPISODE_SLOPE if episode["kind"] in ("spike", "diverged") else 1.0
        level = episode["level"] + follow * episode["slope"] * ahead
        ratio = math.exp(log_value - level) - 1
        ratios = episode["ratios"] = [*episode["ratios"], ratio][-RECOVERY_POINTS:]
        allowance = _allowance(episode["sigma"], policy)
        if episode["kind"] in ("drop", "dip"):
            # The level a rise must clear falls slowly, as a spike's reference does: the curve
            # may have stopped falling, and its return is not a spike.
            gentle = max(episode["slope"], -policy.recover_tolerance / window)
            high = episode["high"] + EPISODE_SLOPE * gentle * ahead
            if log_value - high >= math.log1p(policy.spike_threshold):
                # Not back but beyond: the loss jumped over the level the fall left.
                ref = _Reference(high, high, True, episode["slope"], high, high, episode["sigma"])
                series.episode = None
                return self._open_episode(series, ref, "spike", high, step, log_value, value, policy)
            episode["points"] = [*episode["points"], [step, log_value]][-TREND_WINDOW:]
            if episode["kind"] == "dip" and ratio <= -policy.drop_threshold:
                # A fall that went on falling (a channel learning a degenerate pattern): a drop.
                episode["kind"] = "drop"
                evidence = {"onset": episode["onset"], "value": value, "trend": math.exp(level), "ratio": ratio}
                return "drop", "alert", evidence
            # Back once clearly out of it: the normal level, with the noise it had.
            back = allowance if episode["kind"] == "dip" else max(allowance, policy.drop_threshold / 3)
            if _median(ratios[-3:]) >= -back:
                long = step - episode["onset"] > 2 * LOCAL_POINTS
                series.close_episode(step)
                if long:  # the points before it are too old to carry across the gap
                    series.clear_window()
                series.accept(step, log_value)
            elif step - episode["onset"] >= window * (1 if episode["kind"] == "dip" else LONG_DROP_WINDOWS):
                # It stays: the new level, learned from the points it held. The level it left is
                # remembered, so a return to it later is the fall's end, not a spike.
                points = episode["points"]
                series.close_episode(step)
                series.closed["stayed"] = True
                series.clear_window()
                for x, y in points:
                    series.accept(int(x), y)
            return None
        if _median(ratios[-3:]) <= allowance:
            diverged = episode["kind"] == "diverged"
            series.close_episode(step)
            if diverged:  # the points before it are too old to extend
                series.clear_window()
            series.accept(step, log_value)
            return None
        # A reopened episode must stay up for a few points of its own before it may diverge:
        # one noisy point a window after the first rise is no divergence.
        due = max(episode["onset"] + window, episode.get("reopened", episode["onset"]) + RECOVERY_POINTS - 1)
        if episode["kind"] != "spike" or step < due:
            return None
        if _median(ratios) <= allowance:
            series.close_episode(step)
            series.accept(step, log_value)
            return None
        episode["kind"] = "diverged"  # latched: said once, silent until it recovers
        evidence = {
            "onset": episode["start"],
            "spike_step": episode["onset"],
            "value": value,
            "trend": math.exp(level),
            "ratio": ratio,
            "window": window,
        }
        return "divergence", "rollback", evidence

    def _judge_late(
        self, series: _LossSeries, step: int, stage: Any, value: float, policy: Policy
    ) -> tuple[str, str, dict[str, Any]] | None:
        """A record overtaken by newer ones: judged, never added to the window."""
        if stage != series.stage:
            return None
        if not math.isfinite(value):
            if series.nonfinite is not None and abs(series.nonfinite - step) <= 3:
                return None
            evidence = {"onset": step, "value": _encode_nonfinite(value), "late": True}
            return "nonfinite", "rollback", evidence
        closed = series.closed
        if series.episode is not None or len(series.steps) < policy.min_history:
            return None  # an open episode already speaks for this stretch
        if closed is not None and closed["onset"] <= step <= closed["end"]:
            return None  # inside an episode already judged
        ref = reference(series, step)
        log_value = math.log(max(value, 1e-30))
        judged = _classify(series, ref, log_value, policy)
        if judged is None or judged[0] == "dip":
            return None
        kind, level = judged
        ratio = math.exp(log_value - level) - 1
        evidence = {"onset": step, "value": value, "trend": math.exp(level), "ratio": ratio, "late": True}
        return kind, "alert", evidence

    def _observe_ppl(
        self,
        ppl: dict[str, Any],
        job: str,
        attempt: int,
        step: int,
        stage: Any,
        metrics: Mapping[str, Any],
        policy: Policy,
        verdicts: list[Verdict],
    ) -> None:
        current = {}
        for name, raw in metrics.items():
            if name.startswith(PPL_PREFIX):
                value = _loss_value(raw)
                if value is not None and math.isfinite(value) and value > 0:
                    current[name[len(PPL_PREFIX) :]] = math.log(value)
        if not current:
            return
        if ppl["last_step"] is not None and step <= ppl["last_step"]:
            self.counts["duplicate" if step == ppl["last_step"] else "late"] += 1
            return
        ppl["last_step"] = step
        if stage != ppl["stage"]:
            ppl.update(stage=stage, history=[], alerted=[])
        history = ppl["history"]
        previous = history[-1]["log_ppl"] if history else {}
        history.append({"step": step, "log_ppl": current})
        del history[: -(policy.ppl_rise_evals + 1)]
        alerted = ppl["alerted"] = [  # a channel is said once per unbroken rise
            name
            for name in ppl["alerted"]
            if current.get(name, -math.inf) > previous.get(name, math.inf)
        ]
        if len(history) <= policy.ppl_rise_evals:
            return
        first, last = history[0]["log_ppl"], history[-1]["log_ppl"]
        for name in current:
            values = [entry["log_ppl"].get(name) for entry in history]
            if name in alerted or None in values:
                continue
            if not all(later > earlier for earlier, later in pairwise(values)):
                continue
            others = [last[o] - first[o] for o in first if o != name and o in last]
            if not others or sum(others) / len(others) >= 0:
                continue
            alerted.append(name)
            evidence = {
                "onset": history[1]["step"],
                "evals": policy.ppl_rise_evals,
                "ppl": math.exp(current[name]),
                "ppl_before": math.exp(values[0]),
            }
            verdicts.append(Verdict(job, attempt, step, "ppl_rise", "alert", name, evidence))

    # --- restart -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the stream exactly (plain JSON; policies not included)."""
        return copy.deepcopy(
            {
                "version": STATE_VERSION,
                "counts": dict(self.counts),
                "jobs": {
                    job: {
                        "attempt": state["attempt"],
                        "series": {name: s.to_dict() for name, s in state["series"].items()},
                        "ppl": state["ppl"],
                    }
                    for job, state in self._jobs.items()
                },
            }
        )

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], policy: Policy | Callable[[str], Policy] = Policy()
    ) -> Detector:
        """A detector that carries on where the one that wrote `state` stopped.

        State of version 1 (the detector before this one) keeps its jobs' attempts, PPL
        history and counts; its loss series start their windows again.
        """
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"watchdog state version {version!r} is not supported")
        detector = cls(policy)
        detector.counts.update(state["counts"])
        state = copy.deepcopy(state)
        detector._jobs = {
            job: {
                "attempt": saved["attempt"],
                "series": {
                    name: _LossSeries.from_dict(series)
                    for name, series in saved["series"].items()
                    if version == STATE_VERSION
                },
                "ppl": saved["ppl"],
            }
            for job, saved in state["jobs"].items()
        }
        return detector


def _classify(
    series: _LossSeries, ref: _Reference, log_value: float, policy: Policy
) -> tuple[str, float] | None:
    """("spike" | "drop" | "dip", the reference level it was judged against) or None."""
    over_local = log_value - ref.local
    spike = math.log1p(policy.spike_threshold)
    tolerance = math.log1p(policy.recover_tolerance)
    recent = series.logs[-LOCAL_POINTS:]
    if log_value > max(recent):
        # Where the fall stops short (the end of warmup), carrying the latest points along
        # the slope undershoots: a spike must clear them where they are by half its height.
        # A series noisier than the threshold allows (a channel over a small share of the
        # batch) must rise beyond its own noise as well.
        if log_value - _expected(ref) >= max(spike, SPIKE_SIGMAS * ref.sigma) and log_value - ref.plain >= spike / 2:
            # Recovery is judged against the higher reference: autocorrelated noise that sat
            # low before a jump is no reason to call a return to the normal level a divergence.
            return "spike", max(ref.local, ref.trend)
        if ref.trusted and log_value - ref.trend >= spike and over_local >= tolerance:
            return "spike", ref.trend  # a creeping rise: the local level came along, the trend did not
    drop = math.log1p(-policy.drop_threshold)
    if over_local <= drop and log_value < min(recent) + math.log1p(-policy.drop_threshold / 2):
        return "drop", min(ref.local, ref.trend) if ref.trusted else ref.local
    # A fall too small for a drop but too big for the noise: held out of the window like a
    # drop, silently, so the return to the normal level is not read as a rise. A fall that
    # creeps (the local level comes along) is measured against a trusted trend.
    dip = min(math.log1p(-policy.spike_threshold / 2), -DIP_SIGMAS * ref.sigma)
    if over_local <= dip and log_value < min(recent):
        return "dip", ref.local
    if ref.trusted and log_value - ref.trend <= dip and over_local <= -tolerance:
        return "dip", ref.trend
    return None


def _well_inside(ref: _Reference, log_value: float, policy: Policy) -> bool:
    """Whether a point lies well inside the noise band (half a threshold from any verdict)."""
    return (
        log_value - _expected(ref) < math.log1p(policy.spike_threshold) / 2
        and log_value - ref.local > math.log1p(-policy.spike_threshold / 2) / 2
    )


def _allowance(sigma: float, policy: Policy) -> float:
    """How far above its reference (relative) a loss may be and count as back: the tolerance,
    widened to the series' own noise, but never to two thirds of a spike."""
    noise = math.expm1(NOISE_ALLOWANCE_SIGMAS * sigma)
    return max(policy.recover_tolerance, min(noise, policy.spike_threshold * 2 / 3))


def _returns_to(closed: Mapping[str, Any], step: int, log_value: float, policy: Policy) -> bool:
    """Whether a rise, soon after a drop became the new level, lands at (or under) the level
    the drop left, carried to `step`."""
    if step - closed["end"] > LONG_DROP_WINDOWS * policy.recover_window_steps:
        return False
    ahead = min(step - closed["onset"], policy.recover_window_steps)
    level = closed["level"] + EPISODE_SLOPE * closed["slope"] * ahead
    return math.exp(log_value - level) - 1 <= policy.spike_threshold / 2


def _expected(ref: _Reference) -> float:
    """Where the next point is expected: the prediction from the trend and the noise's
    autocorrelation, and never below the local level where the trend is not trusted."""
    return ref.predicted if ref.trusted else max(ref.local, ref.predicted)


def _excursion_start(series: _LossSeries, ref: _Reference, step: int, policy: Policy) -> int:
    """The first step of the run of latest points above the trend by the tolerance."""
    tolerance = math.log1p(policy.recover_tolerance)
    start = step
    for x, y in zip(reversed(series.steps), reversed(series.logs), strict=True):
        if y + ref.slope * (step - x) - ref.trend < tolerance:
            break
        start = x
    return start


def _new_ppl() -> dict[str, Any]:
    return {"last_step": None, "stage": None, "history": [], "alerted": []}


def _identity(record: Mapping[str, Any]) -> tuple[str, int, int]:
    """(job, attempt, step) of a record; ValueError names what is missing."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
    job, attempt, step = record.get("job"), record.get("attempt", 0), record.get("step")
    if not isinstance(job, str) or not job:
        raise ValueError("record has no job")
    for name, value in (("attempt", attempt), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"record of job {job!r} has no integer {name}")
    return job, attempt, step
