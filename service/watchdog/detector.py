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
from itertools import pairwise
from typing import Any

from service.watchdog.policy import Policy, Verdict
from service.watchdog.series import (
    EPISODE_SLOPE,
    LOCAL_POINTS,
    LONG_DROP_WINDOWS,
    RECOVERY_POINTS,
    REFIT_STEPS,
    SEEN_STEPS,
    TREND_WINDOW,
    LossSeries,
    Reference,
    classify,
    excursion_start,
    fit_window,
    median,
    recover_allowance,
    reference,
    returns_to,
    well_inside,
)

__all__ = ["Detector", "Policy", "Verdict"]

ALL_CHANNELS = "all"
LOSS = "loss"
LOSS_PREFIX = "loss/"
PPL_PREFIX = "eval/ppl/"
EVAL_PHASE = "eval"

STATE_VERSION = 2

_NONFINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_COUNTERS = ("records", "duplicate", "late", "stale_attempt")
# The default of `Detector` and `from_state`: a frozen Policy, so one instance serves both.
_DEFAULT_POLICY = Policy()


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

    def __init__(self, policy: Policy | Callable[[str], Policy] = _DEFAULT_POLICY) -> None:
        self._policy_for = policy if callable(policy) else (lambda _job: policy)
        self._policies: dict[str, Policy] = {}
        # job → {"attempt": n, "series": {metric: LossSeries}, "ppl": {...}}
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
                series = state["series"][name] = LossSeries(stage)
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
        series: LossSeries,
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
            judged = classify(series, ref, log_value, policy)
            fresh = judged is not None or not well_inside(ref, log_value, policy)
        if fresh:
            series.fit = fit_window(series, step)
            ref = reference(series, step, series.fit)
            judged = classify(series, ref, log_value, policy)
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
            if closed.get("stayed") and returns_to(closed, step, log_value, policy):
                # The loss climbs back to where it was before a fall that became the new level:
                # the fall is over. Start the window again from here.
                series.closed = None
                series.clear_window()
                series.accept(step, log_value)
                return None
        return self._open_episode(series, ref, kind, level, step, log_value, value, policy)

    def _open_episode(
        self,
        series: LossSeries,
        ref: Reference,
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
            "start": excursion_start(series, ref, step, policy) if kind == "spike" else step,
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
        self, series: LossSeries, step: int, log_value: float, value: float, policy: Policy
    ) -> tuple[str, str, dict[str, Any]] | None:
        episode = series.episode
        assert episode is not None
        window = policy.recover_window_steps
        ahead = min(step - episode["onset"], window)
        follow = EPISODE_SLOPE if episode["kind"] in ("spike", "diverged") else 1.0
        level = episode["level"] + follow * episode["slope"] * ahead
        ratio = math.exp(log_value - level) - 1
        ratios = episode["ratios"] = [*episode["ratios"], ratio][-RECOVERY_POINTS:]
        allowance = recover_allowance(episode["sigma"], policy)
        if episode["kind"] in ("drop", "dip"):
            # The level a rise must clear falls slowly, as a spike's reference does: the curve
            # may have stopped falling, and its return is not a spike.
            gentle = max(episode["slope"], -policy.recover_tolerance / window)
            high = episode["high"] + EPISODE_SLOPE * gentle * ahead
            if log_value - high >= math.log1p(policy.spike_threshold):
                # Not back but beyond: the loss jumped over the level the fall left.
                ref = Reference(high, high, True, episode["slope"], high, high, episode["sigma"])
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
            if median(ratios[-3:]) >= -back:
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
        if median(ratios[-3:]) <= allowance:
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
        if median(ratios) <= allowance:
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
        self, series: LossSeries, step: int, stage: Any, value: float, policy: Policy
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
        judged = classify(series, ref, log_value, policy)
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
        cls, state: Mapping[str, Any], policy: Policy | Callable[[str], Policy] = _DEFAULT_POLICY
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
                    name: LossSeries.from_dict(series)
                    for name, series in saved["series"].items()
                    if version == STATE_VERSION
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