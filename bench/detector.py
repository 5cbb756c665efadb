"""Watchdog detector: precision, recall and latency on labelled streams it was not tuned on.

Streams come from `tests/service/watchdog/labelled.py`, labelled by the watchdog's definitions
(spike ≥15% over trend → alert; not back within 5% by 20 steps → divergence, rollback; NaN →
rollback; ≥25% under → drop, alert), every series (total and channel) on its own:

- **wide**: noise 1–8% (Student-t, AR(1) up to 0.95), several events per job, drops up to 60
  steps that come back, ramps, one-channel events, late, duplicated and lost records — wider in
  every direction than the range the detector was developed on;
- **tuned range**: the range it was developed on, with seeds it never saw;
- **demo policy**: the wide streams labelled for `spike_threshold 0.3, recover_window 8`;
- **previous generator**: `tests/service/watchdog/curves.py`, the curves the previous detector
  was tuned to (a check that the new one did not give up what the old one did well).

Only scoring seeds are used (`labelled.SCORING_SEEDS`); tuning seeds stay with the tests. Each
set is also scored for a plain rule, in the same run: a rolling median of the last 20 accepted
points, anomalies kept out of it, re-baselined at stage changes and the end of warmup — the
rule a careful person writes first. Latency is steps from the labelled onset to the verdict;
a verdict after its due step (spike/drop onset + 2, divergence spike + 25, NaN + 1) counts as
a miss. Throughput is records/s through `json.loads` + `Detector.observe` over one interleaved
stream, against `json.loads` alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness import ROOT, record

sys.path.insert(0, str(ROOT))

from service.watchdog import Detector, Policy, Verdict  # noqa: E402
from tests.service.watchdog import curves, labelled  # noqa: E402

BENCH = "detector"
KINDS = ("spike", "divergence", "nonfinite", "drop")


# --- the plain rule ------------------------------------------------------------------------


@dataclass
class _Plain:
    window: list[float] = field(default_factory=list)
    last_step: int | None = None
    stage: Any = None
    phase: Any = None
    episode: dict | None = None
    nonfinite: bool = False


class PlainRule:
    """A rolling median of the last 20 accepted points; anomalies kept out of it."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.series: dict[tuple[str, int, str], _Plain] = {}
        self.attempts: dict[str, int] = {}

    def observe(self, record: dict) -> list[Verdict]:
        job, attempt, step = record["job"], record.get("attempt", 0), record["step"]
        if attempt < self.attempts.setdefault(job, attempt) or record.get("phase") == "eval":
            return []
        self.attempts[job] = attempt
        out = []
        for name, raw in (record.get("metrics") or {}).items():
            if name != "loss" and not name.startswith("loss/"):
                continue
            value = labelled_value(raw)
            if value is None:
                continue
            channel = "all" if name == "loss" else name[5:]
            verdict = self._judge(self.series.setdefault((job, attempt, name), _Plain()), record, value)
            if verdict:
                out.append(Verdict(job, attempt, step, verdict[0], verdict[1], channel, {"onset": step}))
        return out

    def _judge(self, s: _Plain, record: dict, value: float) -> tuple[str, str] | None:
        p, step = self.policy, record["step"]
        if s.last_step is not None and step <= s.last_step:
            return None
        s.last_step = step
        warmup_over = s.phase == "warmup" and record.get("phase") != "warmup"
        if record.get("stage") != s.stage or warmup_over:
            s.window, s.episode, s.stage = [], None, record.get("stage")
        s.phase = record.get("phase")
        if not math.isfinite(value):
            said, s.nonfinite = s.nonfinite, True
            return None if said else ("nonfinite", "rollback")
        s.nonfinite = False
        if len(s.window) < p.min_history:
            s.window.append(value)
            return None
        median = statistics.median(s.window[-20:])
        if s.episode is not None:
            ratio = value / s.episode["median"] - 1
            if abs(ratio) <= p.recover_tolerance:
                s.episode = None
                s.window.append(value)
            elif s.episode["kind"] == "spike" and step - s.episode["onset"] >= p.recover_window_steps:
                s.episode["kind"] = "diverged"
                return "divergence", "rollback"
            return None
        if value >= median * (1 + p.spike_threshold):
            s.episode = {"kind": "spike", "onset": step, "median": median}
            return "spike", "alert"
        if value <= median * (1 - p.drop_threshold):
            s.episode = {"kind": "drop", "onset": step, "median": median}
            return "drop", "alert"
        s.window.append(value)
        return None


def labelled_value(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(raw)


# --- the sets ------------------------------------------------------------------------------


def previous_generator(per_scenario: int) -> list[labelled.Stream]:
    """The previous benchmark's curves (curves.py) at three noise levels, as labelled streams."""
    builders: dict[str, Callable[..., curves.Curve]] = {
        "clean": curves.clean,
        "clean channels": curves.clean_channels,
        "stage change": curves.stage_change,
        "spike": curves.transient_spike,
        "spike +18..25%": lambda s, **kw: curves.transient_spike(s, size=0.18 + 0.07 * (s % 8) / 7, **kw),
        "spike +8..12% (nothing)": lambda s, **kw: _unlabelled(curves.transient_spike(s, size=0.08 + 0.04 * (s % 8) / 7, **kw)),
        "divergence": curves.lasting_spike,
        "divergence +20%": lambda s, **kw: curves.lasting_spike(s, size=0.2, **kw),
        "nonfinite": curves.nonfinite,
        "drop": curves.drop,
        "drop -30%": lambda s, **kw: curves.drop(s, size=0.3, **kw),
        "drop -15% (nothing)": lambda s, **kw: _unlabelled(curves.drop(s, size=0.15, **kw)),
        "channel spike": curves.channel_spike,
        "channel divergence": lambda s, **kw: curves.channel_spike(s, lasting=True, **kw),
        "rollback": curves.rollback,
        "messy spike": lambda s, **kw: curves.deliver(curves.transient_spike(s, **kw), s),
        "messy divergence": lambda s, **kw: curves.deliver(curves.lasting_spike(s, **kw), s),
    }
    out = []
    for noise in (0.01, 0.02, 0.03):
        for build in builders.values():
            for seed in range(per_scenario):
                curve = build(labelled.SCORING_SEEDS[0] + seed, noise=noise)
                labels = [
                    labelled.Label(e.kind, e.channel, e.step - e.tolerance, e.step + e.tolerance, e.attempt)
                    for e in curve.expected
                ]
                series = sum(1 for name in curve.records[0]["metrics"] if name.startswith("loss"))
                clean = max(0, len({r["step"] for r in curve.records}) - 60 * len(curve.expected)) * series
                out.append(labelled.Stream(f"{curve.job}-{noise}", curve.records, labels, clean))
    return out


def _unlabelled(curve: curves.Curve) -> curves.Curve:
    return curves.Curve(curve.name, curve.job, curve.records, [])


def _rename(streams: Iterable[labelled.Stream], noise_key: str) -> list[labelled.Stream]:
    return [
        labelled.Stream(f"{s.job}-{noise_key}", [{**r, "job": f"{r['job']}-{noise_key}"} for r in s.records], s.labels, s.clean_steps)
        for s in streams
    ]


# --- scoring -------------------------------------------------------------------------------


def report(name: str, streams: list[labelled.Stream], definitions: labelled.Definitions) -> dict:
    policy = Policy(**definitions.policy())
    ours = labelled.score(streams, lambda: Detector(policy), definitions=definitions)
    plain = labelled.score(streams, lambda: PlainRule(policy), definitions=definitions)
    print(f"\n== {name}: {len(streams)} streams, {ours.clean_steps:,} clean series-steps")
    print(f"   {'':24s} {'detector':>28s}   {'plain rolling median':>28s}")
    for action in ("rollback", "alert"):
        a, b = ours.rate(action), plain.rate(action)
        print(
            f"   {action + ' precision/recall':24s} {a['precision']:>13.3f} {a['recall']:>13.3f}"
            f"   {b['precision']:>13.3f} {b['recall']:>13.3f}"
        )
    print(f"   {'false alerts / 10k clean':24s} {ours.false_alerts_per_10k():>28.2f}   {plain.false_alerts_per_10k():>28.2f}")
    print(f"   {'kind / series':24s} {'hit':>8s} {'miss':>6s} {'false':>6s} {'lat p50/p95/max':>16s}")
    keys = sorted(set(ours.hits) | set(ours.misses) | set(ours.false))
    for key in keys:
        latency = sorted(ours.latency.get(key.split("/")[0], [0]))
        spread = f"{latency[len(latency) // 2]}/{latency[int(0.95 * (len(latency) - 1))]}/{latency[-1]}"
        print(f"   {key:24s} {ours.hits.get(key, 0):>8d} {ours.misses.get(key, 0):>6d} {ours.false.get(key, 0):>6d} {spread:>16s}")
    return {"ours": ours, "plain": plain}


def throughput(streams: list[labelled.Stream], repeat: int) -> tuple[float, float, int]:
    """(detector records/s, json.loads records/s, records) over one interleaved stream."""
    queues = [list(reversed(s.records)) for s in streams]
    lines = []
    while any(queues):
        for queue in queues:
            if queue:
                lines.append(json.dumps(queue.pop()))

    def rate(call: Callable[[], None]) -> float:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return len(lines) / statistics.median(samples)

    def detect() -> None:
        detector = Detector()
        for line in lines:
            detector.observe(json.loads(line))

    def parse() -> None:
        for line in lines:
            json.loads(line)

    return rate(detect), rate(parse), len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=400, help="wide streams (scoring seeds)")
    parser.add_argument("--tuned", type=int, default=200, help="tuned-range streams")
    parser.add_argument("--per-scenario", type=int, default=8, help="previous generator's seeds")
    parser.add_argument("--repeat", type=int, default=3, help="throughput rounds")
    args = parser.parse_args(argv)
    seeds = labelled.SCORING_SEEDS
    default = labelled.DEFINITIONS
    demo = labelled.Definitions(spike=0.3, window=8)
    sets = {
        "wide": (labelled.streams(seeds[: args.streams], labelled.WIDE), default),
        "tuned range": (labelled.streams(seeds[: args.tuned], labelled.TUNING), default),
        "wide, demo policy (spike 0.3, window 8)": (
            labelled.streams(seeds[: args.streams // 2], labelled.WIDE, demo),
            demo,
        ),
        "previous generator (curves.py)": (previous_generator(args.per_scenario), default),
    }
    results = {name: report(name, streams, d) for name, (streams, d) in sets.items()}

    wide = results["wide"]
    ours, plain = wide["ours"], wide["plain"]
    note = f"{args.streams} wide streams, scoring seeds; baseline: the plain rolling median, same streams"
    for action, label in (("rollback", "rollback"), ("alert", "alert")):
        for measure in ("precision", "recall"):
            a, b = ours.rate(action)[measure], plain.rate(action)[measure]
            record(BENCH, f"wide: {label} {measure}", a, b, a / b if b else None, baseline_name="plain rolling median", note=note)
    record(
        BENCH, "wide: false alerts per 10k clean steps", ours.false_alerts_per_10k(),
        plain.false_alerts_per_10k(), None, baseline_name="plain rolling median",
    )  # fmt: skip
    for kind, budget in (("spike", 2), ("drop", 2), ("divergence", 25), ("nonfinite", 1)):
        latency = ours.latency.get(kind) or [math.nan]
        record(BENCH, f"wide: {kind} latency max (budget {budget})", max(latency), None, None, unit="steps")
    for name in list(results)[1:]:
        r = results[name]["ours"]
        rb, al = r.rate("rollback"), r.rate("alert")
        record(BENCH, f"{name}: rollback P/R, alert R", rb["precision"], None, None, note=f"rollback recall {rb['recall']:.3f}, alert recall {al['recall']:.3f}, false alerts/10k {r.false_alerts_per_10k():.2f}")

    detect, parse, count = throughput(sets["wide"][0][:40], args.repeat)
    print(f"\n== throughput over {count:,} records: detector {detect:,.0f} records/s, json.loads {parse:,.0f}/s")
    record(BENCH, "records/s", detect, parse, detect / parse, unit="records/s", baseline_name="json.loads alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
