"""Watchdog detector: precision, recall and latency over labelled curves, and its throughput.

The curves are `tests/service/watchdog/curves.py`'s, in held-out-like variations: three noise
levels, spikes and drops just above and just below their thresholds (those below are labelled
"nothing"), messy delivery. Latency is steps from the anomaly's onset to the verdict: a
divergence is due a recover window (20) after its spike, a PPL rise at its third rising eval. Throughput is records/s through `json.loads` and
`Detector.observe`, one stream of interleaved jobs; the baseline is `json.loads` alone.

The service around the detector (ingest into Postgres and the stream, verdict latency) is
`bench/watchdog.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

from harness import percentile, record

from service.watchdog import Detector
from tests.service.watchdog import curves

KINDS = ("spike", "divergence", "nonfinite", "drop", "ppl_rise")


def labelled_curves(per_scenario: int) -> list[curves.Curve]:
    """Every scenario at each noise level, `per_scenario` seeds each."""
    scenarios: dict[str, Callable[..., curves.Curve]] = {
        "clean": curves.clean,
        "clean channels": curves.clean_channels,
        "stage change": curves.stage_change,
        "spike": curves.transient_spike,
        "spike just above (+18..25%)": lambda seed, **kw: curves.transient_spike(
            seed, size=0.18 + 0.07 * (seed % 8) / 7, **kw
        ),
        "spike just below (+8..12%)": lambda seed, **kw: _unlabelled(
            curves.transient_spike(seed, size=0.08 + 0.04 * (seed % 8) / 7, **kw)
        ),
        "divergence": curves.lasting_spike,
        "divergence just above (+20%)": lambda seed, **kw: curves.lasting_spike(
            seed, size=0.2, **kw
        ),
        "nonfinite": curves.nonfinite,
        "drop": curves.drop,
        "drop just above (-30%)": lambda seed, **kw: curves.drop(seed, size=0.3, **kw),
        "drop just below (-15%)": lambda seed, **kw: _unlabelled(
            curves.drop(seed, size=0.15, **kw)
        ),
        "channel spike": curves.channel_spike,
        "channel divergence": lambda seed, **kw: curves.channel_spike(seed, lasting=True, **kw),
        "ppl rise": curves.ppl_rise,
        "rollback": curves.rollback,
        "messy spike": lambda seed, **kw: curves.deliver(curves.transient_spike(seed, **kw), seed),
        "messy divergence": lambda seed, **kw: curves.deliver(
            curves.lasting_spike(seed, **kw), seed
        ),
    }
    out = []
    for noise in (0.01, 0.02, 0.03):
        for build in scenarios.values():
            for seed in range(per_scenario):
                out.append(build(50_000 + seed, noise=noise))
    return out


def _unlabelled(curve: curves.Curve) -> curves.Curve:
    return curves.Curve(curve.name + " (below threshold)", curve.job, curve.records, [])


def judge(all_curves: list[curves.Curve]) -> dict[str, dict[str, list]]:
    """Per verdict kind: expected, hits (latencies), misses, false alarms."""
    tally: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for curve in all_curves:
        detector = Detector()
        verdicts = [v for record in curve.records for v in detector.observe(record)]
        matched, missed, unexpected = curves.match(curve.expected, verdicts)
        for want, verdict in matched:
            onset = want.step if want.onset is None else want.onset
            tally[want.kind]["latency"].append(verdict.step - onset)
        for want in missed:
            tally[want.kind]["missed"].append(curve.job)
        for verdict in unexpected:
            tally[verdict.kind]["false"].append((curve.name, curve.job, verdict.step))
    return tally


def throughput(all_curves: list[curves.Curve], repeat: int) -> tuple[float, float, int]:
    """(detector records/s, json.loads-only records/s, records) over one interleaved stream."""
    lines = [json.dumps(r) for r in curves.interleave(all_curves, seed=0)]

    def parse_only() -> None:
        for line in lines:
            json.loads(line)

    def detect() -> None:
        detector = Detector()
        for line in lines:
            detector.observe(json.loads(line))

    def best(call: Callable[[], None]) -> float:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return len(lines) / min(samples)

    return best(detect), best(parse_only), len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scenario", type=int, default=8, help="seeds per scenario and noise")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs; the best counts")
    args = parser.parse_args()
    all_curves = labelled_curves(args.per_scenario)
    tally = judge(all_curves)
    print(f"watchdog: {len(all_curves)} labelled curves, noise std 1/2/3% (clipped at ±8%)")
    print(
        f"{'verdict':<12}{'expected':>10}{'hits':>7}{'false':>7}{'precision':>11}{'recall':>8}"
        f"{'latency median':>16}{'p90':>6}"
    )
    failed = False
    for kind in KINDS:
        counts = tally[kind]
        hits, missed, false = len(counts["latency"]), len(counts["missed"]), len(counts["false"])
        precision = hits / (hits + false) if hits + false else float("nan")
        recall = hits / (hits + missed) if hits + missed else float("nan")
        latency = counts["latency"] or [float("nan")]
        print(
            f"{kind:<12}{hits + missed:>10}{hits:>7}{false:>7}{precision:>11.3f}{recall:>8.3f}"
            f"{statistics.median(latency):>16.1f}{percentile(latency, 0.9):>6.0f}"
        )
        failed |= bool(false)
    for kind, counts in tally.items():
        for name, job, step in counts["false"][:5]:
            print(f"  false {kind}: {name} {job} step {step}", file=sys.stderr)

    figure, baseline, records = throughput(
        all_curves[:: max(1, len(all_curves) // 40)], args.repeat
    )
    print(f"{'figure':<34}{'value':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'detector records/s':<34}{figure:>12,.0f}{baseline:>12,.0f}{figure / baseline:>8.2f}")
    record(
        "watchdog", "detector records/s", figure, baseline, figure / baseline, unit="records/s",
        baseline_name="json.loads parse only",
        note=(
            f"best of {args.repeat} over {records:,} interleaved records; verdicts over "
            f"{len(all_curves)} labelled curves: {sum(len(tally[k]['latency']) for k in KINDS)} hits "
            f"of {sum(len(tally[k]['latency']) + len(tally[k]['missed']) for k in KINDS)} expected, "
            f"{sum(len(tally[k]['false']) for k in KINDS)} false alarms"
        ),
    )  # fmt: skip
    print(
        f"baseline: json.loads alone over the same {records:,} interleaved records; "
        "ratio = detector / parse-only throughput"
    )
    if failed:
        print("false alarms above: see stderr", file=sys.stderr)


if __name__ == "__main__":
    main()
