"""Loss-anomaly detection over the trainer's metric records: pure, online, restartable.

Every loss series (`loss` as channel "all", each `loss/<channel>`) of a job attempt is judged
against its own trend: a robust straight line through the log-loss of its last 40 accepted
points (medians of the two halves give the slope, never positive; the median residual the
level), extrapolated to the new step. Where a fast fall bends, that line undershoots while the
median of the last five points lags, so a spike is judged against the higher of the two and a
drop against the lower. Points judged anomalous never enter the trend, so a spike cannot drag
it up; during an episode the line is frozen at its onset.

- spike: loss ≥ `spike_threshold` above the trend and above each of the last few points
  → alert, at the first such step; the trend is frozen for the episode.
- divergence: a spike whose loss is not back within `recover_tolerance` of the trend (median
  of the last three ratios) by `recover_window_steps` after its onset → rollback, once.
- nonfinite: NaN or ±Inf → rollback, at once (once per run of non-finite values).
- drop: loss ≥ `drop_threshold` below the trend and clearly below each of the last few points,
  so the steady fall of warmup or decay is no drop → alert. A drop still there when the window
  runs out is taken as the new level, silently.
- ppl_rise: a channel's `eval/ppl/<channel>` rises for `ppl_rise_evals` evals in a row while
  the other channels' mean log-PPL falls → alert.

Nothing is judged until `min_history` points exist; a new `stage` starts the baseline again; a
new attempt (after a rollback, re-using step numbers) starts every series of the job afresh.
Records at or before the newest step of their series (duplicates, late arrivals) and records
of an older attempt change nothing but the counters in `Detector.counts`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any

ALL_CHANNELS = "all"
LOSS = "loss"
LOSS_PREFIX = "loss/"
PPL_PREFIX = "eval/ppl/"
EVAL_PHASE = "eval"

# Points of a series the trend is fitted to.
TREND_WINDOW = 40
# A spike must top, and a drop undercut, each of this many latest accepted points: noise on a
# falling curve (warmup, decay) sits below the recent points, a real jump does not.
RECENT_POINTS = 5
# Recovery is judged on the median of this many latest ratios, so one lucky point is not enough.
RECOVERY_POINTS = 3
# During an episode the frozen line runs on at this fraction of its slope, for one window at
# most: a slope fitted to autocorrelated noise must not carry the reference away, and the
# real fall of warmup or decay is still followed well enough.
RECOVERY_SLOPE = 0.5
STATE_VERSION = 1

_NONFINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_COUNTERS = ("records", "duplicate", "late", "stale_attempt")


@dataclass(frozen=True)
class Policy:
    """The watchdog's knobs (a JobSpec's `watchdog` section, minus what the detector ignores)."""

    spike_threshold: float = 0.15
    """Relative rise over the trend that counts as a spike."""
    drop_threshold: float = 0.25
    """Relative fall under the trend that counts as a drop."""
    recover_window_steps: int = 20
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


class _LossSeries:
    """The state of one loss series of one job attempt."""

    __slots__ = ("stage", "last_step", "steps", "logs", "episode", "nonfinite")

    def __init__(self, stage: str | None = None) -> None:
        self.stage = stage
        self.last_step: int | None = None
        self.steps: list[int] = []  # accepted points, oldest first, at most TREND_WINDOW
        self.logs: list[float] = []
        # An open spike/divergence/drop: onset, the frozen trend, latest ratios.
        self.episode: dict[str, Any] | None = None
        self.nonfinite = False  # inside a run of non-finite values

    def rebaseline(self) -> None:
        self.steps.clear()
        self.logs.clear()
        self.episode = None

    def accept(self, step: int, log_value: float) -> None:
        self.steps.append(step)
        self.logs.append(log_value)
        if len(self.steps) > TREND_WINDOW:
            del self.steps[0], self.logs[0]

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


def fit_trend(steps: list[int], logs: list[float]) -> tuple[float, float]:
    """(log level at the last step, slope per step) of a robust line through the points.

    The slope joins the medians of the older and the newer half; the level is the median
    residual. The slope is never positive: a healthy loss does not trend up, and a rise that
    noise fits as a slope would otherwise hide the next spike.
    """
    half = len(steps) // 2
    run = _median(steps[-half:]) - _median(steps[:half])
    slope = (_median(logs[-half:]) - _median(logs[:half])) / run if run > 0 else 0.0
    slope = min(slope, 0.0)
    last = steps[-1]
    level = _median([y - slope * (x - last) for x, y in zip(steps, logs, strict=True)])
    return level, slope


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
        for name, raw in metrics.items():
            if name == LOSS:
                channel = ALL_CHANNELS
            elif name.startswith(LOSS_PREFIX):
                channel = name[len(LOSS_PREFIX) :]
            else:
                continue
            value = _loss_value(raw)
            if value is None:
                continue
            series = state["series"].get(name)
            if series is None:
                series = state["series"][name] = _LossSeries(stage)
            verdict = self._observe_loss(series, step, stage, value, policy)
            if verdict is not None:
                kind, action, evidence = verdict
                verdicts.append(Verdict(job, attempt, step, kind, action, channel, evidence))
        return verdicts

    def _observe_loss(
        self, series: _LossSeries, step: int, stage: Any, value: float, policy: Policy
    ) -> tuple[str, str, dict[str, Any]] | None:
        if series.last_step is not None and step <= series.last_step:
            self.counts["duplicate" if step == series.last_step else "late"] += 1
            return None
        series.last_step = step
        if stage != series.stage:
            series.stage = stage
            series.rebaseline()
        if not math.isfinite(value):
            if series.nonfinite:
                return None
            series.nonfinite = True
            return "nonfinite", "rollback", {"onset": step, "value": _encode_nonfinite(value)}
        series.nonfinite = False
        log_value = math.log(max(value, 1e-30))
        episode = series.episode
        if episode is not None:
            return self._continue_episode(series, episode, step, log_value, value, policy)
        if len(series.steps) < policy.min_history:
            series.accept(step, log_value)
            return None
        level, slope = fit_trend(series.steps, series.logs)
        extrapolated = level + slope * (step - series.steps[-1])
        recent = series.logs[-RECENT_POINTS:]
        latest = _median(recent)
        # Where a fast fall bends (warmup), the line undershoots and the latest points lag:
        # a spike must clear the higher of the two, a drop undercut the lower.
        upper, lower = max(extrapolated, latest), min(extrapolated, latest)
        rises = log_value - upper >= math.log1p(policy.spike_threshold)
        falls = log_value - lower <= math.log1p(-policy.drop_threshold)
        if rises and log_value > max(recent):
            kind, trend_log = "spike", upper
        elif falls and log_value < min(recent) + math.log1p(-policy.drop_threshold / 2):
            kind, trend_log = "drop", lower
        else:
            series.accept(step, log_value)
            return None
        ratio = math.exp(log_value - trend_log) - 1
        series.episode = {
            "kind": kind,
            "onset": step,
            "level": trend_log,
            "slope": slope,
            "ratios": [ratio],
        }
        evidence = {"onset": step, "value": value, "trend": math.exp(trend_log), "ratio": ratio}
        return kind, "alert", evidence

    def _continue_episode(
        self,
        series: _LossSeries,
        episode: dict[str, Any],
        step: int,
        log_value: float,
        value: float,
        policy: Policy,
    ) -> tuple[str, str, dict[str, Any]] | None:
        window = policy.recover_window_steps
        ahead = min(step - episode["onset"], window)
        trend_log = episode["level"] + RECOVERY_SLOPE * episode["slope"] * ahead
        ratio = math.exp(log_value - trend_log) - 1
        ratios = episode["ratios"] = [*episode["ratios"], ratio][-RECOVERY_POINTS:]
        typical = _median(ratios)
        tolerance = policy.recover_tolerance
        recovered = typical >= -tolerance if episode["kind"] == "drop" else typical <= tolerance
        if recovered:
            series.episode = None
            if episode["kind"] == "diverged":  # the points before it are too old to extend
                series.rebaseline()
            series.accept(step, log_value)
            return None
        if step < episode["onset"] + window:
            return None
        if episode["kind"] == "drop":  # a lasting fall is the new level, not an anomaly
            series.rebaseline()
            series.accept(step, log_value)
            return None
        if episode["kind"] == "spike":
            episode["kind"] = "diverged"  # latched: said once, silent until it recovers
            evidence = {
                "onset": episode["onset"],
                "value": value,
                "trend": math.exp(trend_log),
                "ratio": ratio,
                "window": window,
            }
            return "divergence", "rollback", evidence
        return None

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
        """A detector that carries on where the one that wrote `state` stopped."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"watchdog state version {state.get('version')!r} is not supported")
        detector = cls(policy)
        detector.counts.update(state["counts"])
        state = copy.deepcopy(state)
        detector._jobs = {
            job: {
                "attempt": saved["attempt"],
                "series": {
                    name: _LossSeries.from_dict(series) for name, series in saved["series"].items()
                },
                "ppl": saved["ppl"],
            }
            for job, saved in state["jobs"].items()
        }
        return detector


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
