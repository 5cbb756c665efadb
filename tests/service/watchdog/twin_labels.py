"""Labels of a real trainer run measured against its clean twin, by the watchdog's definitions.

The twin is the same seed and config without the fault: same initial weights, same batches in
the same order, so the two runs are bit-identical until the fault, and after it the ratio faulted
/ twin of a series, step by step, is the fault's own effect with the sampling noise divided out.
That effect is labelled by the watchdog's definitions, each series (`loss` as
channel "all", each `loss/<channel>`) on its own, as `labelled.py` labels an injected factor:

- spike: the effect at least `spike_threshold` (15%) above 1, at its first such step (+2);
- divergence: a spike whose effect is not back within `recover_tolerance` (5%) by
  `recover_window_steps` (20) after it (median of the last three points of the window);
- drop: the effect at least `drop_threshold` (25%) below 1, at its first such step (+2). A
  newline window lowers the loss as the model learns the pattern, a few percent a step, so a
  drop is due two steps after it crosses the band's upper edge, as a slow spike is;
- nonfinite: each run of NaN/Inf values of a series, at its first step (+1).

As in `labelled.py`, sizes within `AMBIGUITY` of a threshold are "don't care", and so is a label
where the batch noise ate the event: the observed loss over the twin's **trend** (a centred
running median of its log loss, smoothed) stays under the threshold's lower band. A rise or
fall again after the effect came back is "don't care" too. The twin's own noise is labelled:
a step where the clean batch alone lies beyond the band (widened by two standard errors of the
estimated trend) is a "don't care" spike or drop; it requires no verdict and excuses one. Per-
channel losses over a few sequences a step wander far: the code channel's by ±12% (p95).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.watchdog.detector import Policy
from tests.service.watchdog.labelled import ALERT_DUE, AMBIGUITY, DEFINITIONS, Label, Stream

# The twin's trend: a running median over ±TREND_HALF steps of its log loss, then a running
# mean over ±SMOOTH_HALF steps of that (a median of a noisy curve moves in stairs).
TREND_HALF = 7
SMOOTH_HALF = 3
# Nothing is labelled before the detector's own min_history would let it judge.
FIRST_JUDGED = 10
DEFAULT_POLICY = Policy()
# A divergence is due this many steps after its recover window ends (labelled.py's 25 of 20).
DIVERGENCE_SLACK = DEFINITIONS.divergence_due - DEFINITIONS.window


def series_of(records: Sequence[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Each loss series ("all" for `loss`, else the channel) as step → value (NaN for NaN)."""
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for name, raw in record["metrics"].items():
            if name == "loss" or name.startswith("loss/"):
                channel = "all" if name == "loss" else name.removeprefix("loss/")
                out.setdefault(channel, {})[record["step"]] = _number(raw)
    return out


def _number(raw: Any) -> float:
    if isinstance(raw, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[raw]
    return float(raw)


def trend(values: dict[int, float]) -> tuple[dict[int, float], dict[int, float]]:
    """A series' noiseless curve as far as its own points tell, and how far off that may be.

    The curve: a centred running median of the log loss over ±TREND_HALF steps, smoothed by a
    running mean over ±SMOOTH_HALF. Its error at a step: the standard error of that median,
    1.25 robust standard deviations of the window's points around the curve over √points
    (relative, as the curve is in log space).
    """
    steps = np.array(sorted(s for s, v in values.items() if math.isfinite(v) and v > 0))
    logs = np.log([values[s] for s in steps])
    windows = [np.abs(steps - s) <= TREND_HALF for s in steps]
    medians = np.array([np.median(logs[w]) for w in windows])
    curve = np.array([medians[np.abs(steps - s) <= SMOOTH_HALF].mean() for s in steps])
    errors = []
    for w in windows:
        deviations = logs[w] - curve[w]
        spread = 1.4826 * np.median(np.abs(deviations - np.median(deviations)))
        errors.append(1.2533 * spread / math.sqrt(w.sum()))
    keys = steps.tolist()
    return dict(zip(keys, np.exp(curve).tolist(), strict=True)), dict(zip(keys, errors, strict=True))


@dataclass
class SeriesView:
    """One series of a faulted run beside its twin, at the steps both have a finite value."""

    name: str
    steps: np.ndarray
    effect: np.ndarray  # faulted / twin - 1: the fault's own effect, batch for batch
    excess: np.ndarray  # faulted / twin's trend - 1: what an observer of the trend sees
    noise: np.ndarray  # twin / twin's trend - 1: the clean batch's own deviation
    error: np.ndarray  # the trend's own standard error (relative)

    def at(self, first: int, last: int) -> np.ndarray:
        """Indexes of the steps in [first, last]."""
        return np.flatnonzero((self.steps >= first) & (self.steps <= last))


def _view(name: str, faulted: dict[int, float], twin: dict[int, float]) -> SeriesView:
    level, error = trend(twin)
    steps = np.array(sorted(s for s, v in faulted.items() if math.isfinite(v) and s in level and s >= FIRST_JUDGED))
    f = np.array([faulted[s] for s in steps])
    c = np.array([twin[s] for s in steps])
    t = np.array([level[s] for s in steps])
    return SeriesView(name, steps, f / c - 1.0, f / t - 1.0, c / t - 1.0, np.array([error[s] for s in steps]))


def _nonfinite_labels(name: str, values: dict[int, float]) -> list[Label]:
    """One label per run of non-finite values (the series' own steps, gaps not breaking it)."""
    labels, inside = [], False
    for step in sorted(values):
        bad = not math.isfinite(values[step])
        if bad and not inside:
            labels.append(Label("nonfinite", name, step, step + 1, info={"value": str(values[step])}))
        inside = bad
    return labels


def _rise_labels(view: SeriesView, start: int, policy: Policy) -> list[Label]:
    """Spike (and divergence) labels of a fault's effect rising on one series, from `start`."""
    spike, tolerance, window = policy.spike_threshold, policy.recover_tolerance, policy.recover_window_steps
    after = view.at(start, math.inf)
    if not len(after):
        return []
    effect, steps = view.effect[after], view.steps[after]
    above = np.flatnonzero(effect >= spike * (1 - AMBIGUITY))
    if not len(above):
        # Too small for a spike, unless the noise made it one where it landed.
        near = view.at(start, start + ALERT_DUE)
        if len(near) and view.excess[near].max() >= spike:
            return [Label("spike", view.name, start, start + ALERT_DUE, dont_care=True, info={"why": "noise on a small effect"})]
        return []
    i = int(above[0])
    first = int(steps[i])
    high = float(effect[i:].max())
    clear = high >= spike * (1 + AMBIGUITY)
    crossing = int(steps[i + int(np.argmax(effect[i:] >= spike * (1 + AMBIGUITY)))]) if clear else first
    seen_at = view.at(first, crossing + ALERT_DUE)
    seen = float(view.excess[seen_at].max())
    info = {"effect": round(high, 3), "seen": round(seen, 3), "first": round(float(effect[i]), 3)}
    dont = not clear or seen < spike * (1 - AMBIGUITY)
    labels = [Label("spike", view.name, first, crossing + ALERT_DUE, dont_care=dont, info=info)]
    spike_step = int(steps[i + int(np.argmax(effect[i:] >= spike))]) if high >= spike else first
    divergence_due = spike_step + window + DIVERGENCE_SLACK
    end = first + window
    tail_at = view.at(first, end)[-3:]
    if steps[-1] < end:
        # The run ended inside the recover window: no divergence can be judged, either way.
        return labels
    stays = float(np.median(view.effect[tail_at]))
    lowest = float(view.effect[view.at(first, end)].min())
    back = next((int(s) for s, e in zip(steps[i:], effect[i:], strict=True) if e <= tolerance), None)
    if stays > tolerance:
        ambiguous = dont or stays < 3 * tolerance or lowest < 2 * tolerance
        info = {**info, "stays": round(stays, 3), "lowest": round(lowest, 3)}
        labels.append(Label("divergence", view.name, first, divergence_due, dont_care=ambiguous, info=info))
    elif back is not None and back > first + window // 2:
        # Back, but late: between half the window and the window is a grey zone.
        info = {**info, "back": back}
        labels.append(Label("divergence", view.name, first, divergence_due, dont_care=True, info=info))
    # A rise again after the effect came back is a second episode no detector must call.
    if back is not None:
        for s, e in zip(steps, effect, strict=True):
            if s > back and e >= spike * (1 - AMBIGUITY):
                labels.append(Label("spike", view.name, int(s), int(s) + ALERT_DUE, dont_care=True, info={"why": "rise again"}))
                break
    return labels


def _fall_labels(view: SeriesView, start: int, policy: Policy) -> list[Label]:
    """Drop labels of a fault's effect falling on one series, from `start`."""
    drop, tolerance = policy.drop_threshold, policy.recover_tolerance
    after = view.at(start, math.inf)
    if not len(after):
        return []
    effect, steps = view.effect[after], view.steps[after]
    below = np.flatnonzero(effect <= -drop * (1 - AMBIGUITY))
    if not len(below):
        near = view.at(start, start + ALERT_DUE)
        if len(near) and view.excess[near].min() <= -drop:
            return [Label("drop", view.name, start, start + ALERT_DUE, dont_care=True, info={"why": "noise on a small effect"})]
        return []
    i = int(below[0])
    first = int(steps[i])
    low = -float(effect[i:].min())
    clear = low >= drop * (1 + AMBIGUITY)
    # A fall the model learns its way into crosses the band over several steps: due two
    # steps after it crosses the band's upper edge, as a slow rise is.
    crossing = int(steps[i + int(np.argmax(effect[i:] <= -drop * (1 + AMBIGUITY)))]) if clear else first
    seen = float(view.excess[view.at(first, crossing + ALERT_DUE)].min())
    info = {"effect": round(-low, 3), "seen": round(seen, 3), "first": round(float(effect[i]), 3), "crossing": crossing}
    dont = not clear or seen > -drop * (1 - AMBIGUITY)
    labels = [Label("drop", view.name, first, crossing + ALERT_DUE, dont_care=dont, info=info)]
    back = next((int(s) for s, e in zip(steps[i:], effect[i:], strict=True) if e >= -tolerance), None)
    if back is not None:
        for s, e in zip(steps, effect, strict=True):
            if s > back and e <= -drop * (1 - AMBIGUITY):
                labels.append(Label("drop", view.name, int(s), int(s) + ALERT_DUE, dont_care=True, info={"why": "fall again"}))
                break
    return labels


def _noise_labels(view: SeriesView, policy: Policy) -> list[Label]:
    """Steps where the clean batch alone lies beyond a band around the trend: don't care.

    The band is the threshold's ambiguity band, widened by two standard errors of the trend:
    a +10% batch measured against a trend known to ±2% may be +14%, and no detector that
    only sees the past can tell.
    """
    labels = []
    spike, drop = policy.spike_threshold * (1 - AMBIGUITY), policy.drop_threshold * (1 - AMBIGUITY)
    for step, noise, error in zip(view.steps.tolist(), view.noise.tolist(), view.error.tolist(), strict=True):
        info = {"why": "noise", "noise": round(noise, 3), "trend_error": round(error, 3)}
        if noise >= spike - 2 * error:
            labels.append(Label("spike", view.name, step, step + ALERT_DUE, dont_care=True, info=info))
        elif noise <= -drop + 2 * error:
            labels.append(Label("drop", view.name, step, step + ALERT_DUE, dont_care=True, info=info))
    return labels


def _clean_steps(view: SeriesView, labels: list[Label], policy: Policy) -> int:
    """Steps of the series outside every fault's effect and every event's reach."""
    calm = np.abs(view.effect) <= policy.recover_tolerance
    for label in labels:
        calm &= (view.steps < label.onset) | (view.steps > label.due + policy.recover_window_steps)
    return int(calm.sum())


def label(
    job: str,
    records: Sequence[dict[str, Any]],
    twin_records: Sequence[dict[str, Any]],
    *,
    fault_start: int | None,
    fault: str,
    policy: Policy = DEFAULT_POLICY,
) -> Stream:
    """The labelled stream of a run whose fault starts at `fault_start` (None: a clean run,
    its own twin), measured against its clean twin's records."""
    faulted, clean = series_of(records), series_of(twin_records)
    start = math.inf if fault_start is None else fault_start
    for name, values in faulted.items():
        differ = [s for s, v in values.items() if s < start and v != clean[name].get(s)]
        if differ:  # labels measured against a run that is not a twin would be wrong
            raise AssertionError(f"{job}: {name} differs from its clean twin before the fault, at {differ[:5]}")
    events: list[Label] = []
    excused: list[Label] = []
    clean_steps = 0
    noise: dict[str, tuple[float, float]] = {}
    for name in sorted(faulted, key=lambda n: (n != "all", n)):
        view = _view(name, faulted[name], clean[name])
        mine = _nonfinite_labels(name, faulted[name])
        if fault_start is not None:
            mine += _rise_labels(view, fault_start, policy) + _fall_labels(view, fault_start, policy)
        events += [replace(label, info={**label.info, "fault": fault}) for label in mine]
        excused += _noise_labels(view, policy)
        clean_steps += _clean_steps(view, mine, policy)
        deviations = view.noise
        phi = float(np.corrcoef(deviations[:-1], deviations[1:])[0, 1]) if len(deviations) > 2 else 0.0
        noise[name] = (round(float(np.percentile(np.abs(deviations), 95)), 3), round(phi, 2))
    # Event labels first: `labelled.score` gives a verdict to the first label it fits.
    return Stream(job, list(records), events + excused, clean_steps, [fault], noise)
