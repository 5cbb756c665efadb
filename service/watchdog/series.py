"""One loss series' online state and the robust references a point of it is judged against.

The window of accepted points, its fit (trend, slopes, noise spread, autocorrelation), the
references at a step, and the classification of a point against them (spike, drop or dip);
`detector.py` routes records to series and runs their episodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.watchdog.policy import Policy

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


@dataclass(frozen=True)
class Reference:
    """Where a series' loss is expected at a step (log space), and how noisy it is."""

    local: float
    trend: float
    trusted: bool  # whether the trend may be used (the window does not bend)
    slope: float  # the rate the curve falls at now (log per step, never positive)
    plain: float  # the median of the latest points, not carried
    predicted: float  # the trend plus the part of the last deviation that carries over
    sigma: float  # robust standard deviation of the window around its trend


class LossSeries:
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
    def from_dict(cls, data: Mapping[str, Any]) -> LossSeries:
        series = cls()
        for slot in cls.__slots__:
            setattr(series, slot, data[slot])
        return series


def median(values: list[float]) -> float:
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
    run = median(steps[-half:]) - median(steps[:half])
    if run <= 0:
        return 0.0
    return min((median(logs[-half:]) - median(logs[:half])) / run, 0.0)


def fit_window(series: LossSeries, step: int) -> dict[str, Any]:
    """The window's robust fit at `step`: trend level, slopes, noise spread and autocorrelation."""
    steps, logs = series.steps, series.logs
    half = len(steps) // 2
    slope = _slope(steps, logs)
    newer = _slope(steps[half:], logs[half:])
    carried = [y + slope * (step - x) for x, y in zip(steps, logs, strict=True)]
    trend = median(carried)
    deviations = [value - trend for value in carried]
    sigma = 1.4826 * median([abs(d) for d in deviations])
    # Autocorrelated noise: the lag-one autocorrelation of the deviations from the trend.
    product = power = 0.0
    for index in range(1, len(steps)):
        if steps[index] - steps[index - 1] == 1:
            product += deviations[index - 1] * deviations[index]
            power += deviations[index - 1] * deviations[index - 1]
    phi = min(max(product / power, 0.0), 0.95) if power > 0 else 0.0
    # A bend (the end of warmup, the start of a decay) shows as the whole window's slope and
    # the newer half's disagreeing about where the curve is now; a line through it misleads.
    disagreement = abs(slope - newer) * (step - median(steps))
    span = steps[-1] - steps[0] + 1
    trusted = disagreement <= BEND_TOLERANCE and -slope * span <= STEEP_WINDOW
    return {
        "step": step, "trend": trend, "slope": slope, "newer": newer,
        "sigma": sigma, "phi": phi, "trusted": trusted,
    }  # fmt: skip


def reference(series: LossSeries, step: int, fit: Mapping[str, Any] | None = None) -> Reference:
    """The references of `series` at `step`, from `fit` (a recent `fit_window`) or a new fit."""
    fit = fit or fit_window(series, step)
    steps, logs = series.steps, series.logs
    trend = fit["trend"] + fit["slope"] * (step - fit["step"])
    # The local level is carried a few steps at most, at the rate the curve falls now: where
    # the fall slows (the end of warmup) the whole window's slope would undershoot.
    latest = list(zip(steps[-LOCAL_POINTS:], logs[-LOCAL_POINTS:], strict=True))
    local = median([y + fit["newer"] * (step - x) for x, y in latest])
    # The next point is expected at the trend plus the share of the last point's deviation
    # that carries over — the noise's wander, bounded by its spread: a point that jumped (the
    # first step of a spike) must not lift the expectation of the next one with it.
    last = logs[-1] - (fit["trend"] + fit["slope"] * (steps[-1] - fit["step"]))
    bound = CARRY_SIGMAS * fit["sigma"]
    carry = fit["phi"] ** max(step - steps[-1], 1) * last
    predicted = trend + max(-bound, min(bound, carry))
    plain = median(logs[-LOCAL_POINTS:])
    return Reference(local, trend, fit["trusted"], fit["newer"], plain, predicted, fit["sigma"])

def classify(
    series: LossSeries, ref: Reference, log_value: float, policy: Policy
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


def well_inside(ref: Reference, log_value: float, policy: Policy) -> bool:
    """Whether a point lies well inside the noise band (half a threshold from any verdict)."""
    return (
        log_value - _expected(ref) < math.log1p(policy.spike_threshold) / 2
        and log_value - ref.local > math.log1p(-policy.spike_threshold / 2) / 2
    )


def recover_allowance(sigma: float, policy: Policy) -> float:
    """How far above its reference (relative) a loss may be and count as back: the tolerance,
    widened to the series' own noise, but never to two thirds of a spike."""
    noise = math.expm1(NOISE_ALLOWANCE_SIGMAS * sigma)
    return max(policy.recover_tolerance, min(noise, policy.spike_threshold * 2 / 3))


def returns_to(closed: Mapping[str, Any], step: int, log_value: float, policy: Policy) -> bool:
    """Whether a rise, soon after a drop became the new level, lands at (or under) the level
    the drop left, carried to `step`."""
    if step - closed["end"] > LONG_DROP_WINDOWS * policy.recover_window_steps:
        return False
    ahead = min(step - closed["onset"], policy.recover_window_steps)
    level = closed["level"] + EPISODE_SLOPE * closed["slope"] * ahead
    return math.exp(log_value - level) - 1 <= policy.spike_threshold / 2


def _expected(ref: Reference) -> float:
    """Where the next point is expected: the prediction from the trend and the noise's
    autocorrelation, and never below the local level where the trend is not trusted."""
    return ref.predicted if ref.trusted else max(ref.local, ref.predicted)


def excursion_start(series: LossSeries, ref: Reference, step: int, policy: Policy) -> int:
    """The first step of the run of latest points above the trend by the tolerance."""
    tolerance = math.log1p(policy.recover_tolerance)
    start = step
    for x, y in zip(reversed(series.steps), reversed(series.logs), strict=True):
        if y + ref.slope * (step - x) - ref.trend < tolerance:
            break
        start = x
    return start
