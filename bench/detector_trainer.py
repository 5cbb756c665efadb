"""Watchdog detector on real trainer curves: precision, recall and latency over labelled CPU runs.

The runs are `tests/service/watchdog/trainer_runs.py`'s: the tiny model on the three embedded
channels, 100 steps of 16 × 64 tokens, one process each. Each faulted run has one injected fault
(random ids on one channel for 1-3 steps, `spike`, or 24-32 steps, `long_spike`; newlines on one
channel for 16-25 steps; an LR blow-up ×100-1000; one or two NaN steps; NaN from a step on) and
its own seed, so its own batches; its clean twin (same seed, no fault) gives the labels: the
definitions applied to the fault's measured effect (faulted / twin, batch for batch).
`labelled.score` matches verdicts to labels exactly as it does for the synthetic streams.

Two sets are scored apart, since a twin and its faulted run share their batches (and so their
noise): the faulted runs (precision, recall, latency = steps from a label's onset to its
verdict, a divergence being due a recover window after its spike), and the twins as clean
runs (false verdicts per run and per 10k series-steps). The baseline of each figure is the same
detector on synthetic streams of `labelled.py`: TUNING ranges, scoring seeds, and for the clean
figures streams of the same ranges without events.

The trainer skips an update itself on a non-finite loss or a gradient-norm spike (z-score over
recent steps): how many steps it skipped, per run, says what it absorbed before the watchdog.
`--cache DIR` keeps each run's records under DIR keyed by its config and the trainer's sources
(never inside the repository); without it every run is a fresh process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harness import ROOT, percentile, record

from service.watchdog.detector import Detector, Policy
from tests.service.watchdog import labelled, trainer_runs

ACTIONS = ("rollback", "alert")
LABEL_KINDS = ("spike", "divergence", "drop", "nonfinite")
CLASSES = ("total", "channel")
SYNTHETIC_STREAMS = 60
BASELINE = "synthetic streams (labelled.py)"


def verdicts_of(stream: labelled.Stream, policy: Policy) -> list:
    detector = Detector(policy)
    return [v for record_ in stream.records for v in detector.observe(record_)]


def score(streams: list[labelled.Stream], policy: Policy) -> labelled.Score:
    return labelled.score(streams, lambda: Detector(policy), examples=1000)


def class_of(channel: str) -> str:
    return "total" if channel == "all" else "channel"


def only_class(streams: list[labelled.Stream], cls: str) -> list[labelled.Stream]:
    """The streams with only the labels of one channel class (for that class's latencies)."""
    return [replace(s, labels=[lb for lb in s.labels if class_of(lb.channel) == cls]) for s in streams]


def false_per_10k(result: labelled.Score, action: str) -> float:
    rollback = ("divergence", "nonfinite")
    false = sum(n for key, n in result.false.items() if (key.split("/")[0] in rollback) == (action == "rollback"))
    return 1e4 * false / max(result.clean_steps, 1)


def latency_text(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):g} / {percentile(values, 0.95):g} / {max(values):g}"


def rate(hits: int, other: int) -> str:
    return f"{hits / (hits + other):.2f}" if hits + other else "-"


# --- printing -----------------------------------------------------------------------------------


def print_runs(found: list[trainer_runs.Case]) -> None:
    print(f"{'job':<18}{'fault':<28}{'outcome':<10}{'steps':>6}{'wall s':>8}{'cpu s':>7}  steps the trainer skipped")
    for case in found:
        run = case.run
        cached = " (cached)" if run.cached else ""
        print(
            f"{case.scenario.job:<18}{case.scenario.describe():<28}{run.outcome['outcome']:<10}"
            f"{len(run.records):>6}{run.wall_s:>8.1f}{run.cpu_s:>7.1f}  {len(run.skipped)}: {run.skipped}{cached}"
        )


def print_kinds(found: list[trainer_runs.Case], policy: Policy) -> None:
    """Per scenario kind: what the trainer skipped, what was required, what the detector said."""
    print(f"{'scenario':<16}{'runs':>5}{'skipped':>9}{'required':>10}{'hits':>6}{'misses':>8}{'false':>7}")
    for kind in trainer_runs.KINDS:
        mine = [case for case in found if case.scenario.kind == kind]
        if not mine:
            continue
        result = score([case.stream for case in mine], policy)
        required = sum(not lb.dont_care for case in mine for lb in case.stream.labels)
        skipped = sum(len(case.run.skipped) for case in mine)
        print(
            f"{kind:<16}{len(mine):>5}{skipped:>9}{required:>10}{sum(result.hits.values()):>6}"
            f"{sum(result.misses.values()):>8}{sum(result.false.values()):>7}"
        )


def print_verdicts(found: list[trainer_runs.Case], policy: Policy) -> None:
    for case in found:
        required = [lb for lb in case.stream.labels if not lb.dont_care]
        excused = [lb for lb in case.stream.labels if lb.dont_care]
        said = verdicts_of(case.stream, policy)
        print(
            f"  {case.scenario.job:<17} required {_labels(required) or '-'}; "
            f"don't care {len(excused)} ({sum(lb.info.get('why') == 'noise' for lb in excused)} noise); "
            f"verdicts {', '.join(f'{v.kind}/{v.channel}@{v.step}' for v in said) or '-'}"
        )


def _labels(labels: list[labelled.Label]) -> str:
    return ", ".join(f"{lb.kind}/{lb.channel}@{lb.onset}" for lb in labels)


def print_scores(result: labelled.Score, by_class: dict[str, labelled.Score] | None = None) -> None:
    print(
        f"{'kind':<12}{'class':<9}{'hits':>6}{'misses':>8}{'false':>7}{'precision':>11}{'recall':>8}"
        "  latency median / p95 / max"
    )
    for kind in LABEL_KINDS:
        for cls in CLASSES:
            key = f"{kind}/{cls}"
            hits, misses, false = result.hits.get(key, 0), result.misses.get(key, 0), result.false.get(key, 0)
            if not hits + misses + false:
                continue
            latencies = by_class[cls].latency.get(kind, []) if by_class else []
            print(
                f"{kind:<12}{cls:<9}{hits:>6}{misses:>8}{false:>7}{rate(hits, false):>11}{rate(hits, misses):>8}"
                f"  {latency_text(latencies)}"
            )
    for action in ACTIONS:
        r = result.rate(action)
        print(
            f"{action + ' (all kinds)':<21}{r['hits']:>6}{r['misses']:>8}{r['false']:>7}"
            f"{r['precision']:>11.2f}{r['recall']:>8.2f}"
        )


def print_clean(result: labelled.Score, runs: int, said: dict[str, list]) -> None:
    with_rollback = [job for job, verdicts in said.items() if any(v.action == "rollback" for v in verdicts)]
    print(
        f"{runs} runs, {result.clean_steps} series-steps: false rollbacks {result.rate('rollback')['false']}"
        f" ({false_per_10k(result, 'rollback'):.1f} per 10k series-steps; runs rolled back: "
        f"{len(with_rollback)} of {runs}: {', '.join(with_rollback) or '-'}), false alerts "
        f"{result.rate('alert')['false']} ({false_per_10k(result, 'alert'):.1f} per 10k)"
    )


def print_examples(result: labelled.Score, found: list[trainer_runs.Case], policy: Policy) -> None:
    cases = {case.scenario.job: case for case in found}
    for job, label in result.missed_examples:
        case = cases[job]
        said = [v for v in verdicts_of(case.stream, policy) if v.channel == label.channel]
        print(
            f"  missed {label.kind}/{label.channel} onset {label.onset} due {label.due} in {job} "
            f"({case.scenario.describe()}): {_info(label)}; "
            f"{_values(case, label.channel, label.onset - 2, min(label.due, label.onset + 8) + 1)}; "
            f"verdicts on {label.channel}: {', '.join(f'{v.kind}@{v.step}' for v in said) or 'none'}"
        )
    for job, kind, channel, step in result.false_examples:
        case = cases[job]
        said = next(v for v in verdicts_of(case.stream, policy) if (v.kind, v.channel, v.step) == (kind, channel, step))
        evidence = ", ".join(f"{k} {_short(v)}" for k, v in said.evidence.items())
        print(
            f"  false {kind}/{channel} at {step} in {job} ({case.scenario.describe()}): {evidence}; "
            f"{_values(case, channel, step - 3, step + 1)}"
        )


def _info(label: labelled.Label) -> str:
    return ", ".join(f"{k} {_short(v)}" for k, v in label.info.items() if k != "fault")


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _values(case: trainer_runs.Case, channel: str, first: int, last: int) -> str:
    """The series' loss beside its twin's, step by step: what the detector saw, and without the fault."""
    name = "loss" if channel == "all" else f"loss/{channel}"
    mine = {r["step"]: r["metrics"].get(name) for r in case.run.records}
    twin = {r["step"]: r["metrics"].get(name) for r in case.twin.records}
    cells = [
        f"{step}: {_short(mine[step])} (twin {_short(twin.get(step))})"
        for step in range(first, last + 1)
        if mine.get(step) is not None
    ]
    return "loss " + ", ".join(cells)


def print_noise(clean: list[trainer_runs.Case], policy: Policy) -> None:
    """How noisy each series of a clean run is, and what the detector said on its noisiest steps."""
    print(
        "per-series noise of the clean runs (p95 of |loss / trend - 1|, lag-1 autocorrelation; median "
        "over runs), steps labelled don't care as noise, and alerts on them:"
    )
    for name in ("all", *trainer_runs.CHANNELS):
        seen = [case.stream.noise[name] for case in clean if name in case.stream.noise]
        noisy = [lb for case in clean for lb in case.stream.labels if lb.channel == name and lb.info.get("why") == "noise"]
        alerted = []
        for case in clean:
            said = {(v.kind, v.step) for v in verdicts_of(case.stream, policy) if v.channel == name}
            alerted += [
                lb.info["noise"]
                for lb in case.stream.labels
                if lb.channel == name and lb.info.get("why") == "noise"
                and any((lb.kind, s) in said for s in range(lb.onset, lb.due + 1))
            ]  # fmt: skip
        sizes = f" (noise {min(alerted):+.3f} to {max(alerted):+.3f})" if alerted else ""
        if seen:
            print(
                f"  {name:<5} p95 {statistics.median(a for a, _ in seen):.3f}, phi "
                f"{statistics.median(p for _, p in seen):+.2f}; noise steps {len(noisy)}, alerts on them "
                f"{len(alerted)}{sizes}"
            )


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per fault kind, each on its own seed")
    parser.add_argument(
        "--first-seed", type=int, default=trainer_runs.SCORING_FIRST_SEED,
        help="seed of the first scenario (scoring seeds by default; tuning used seeds from "
        f"{trainer_runs.TUNING_FIRST_SEED})",
    )
    parser.add_argument("--kinds", nargs="+", default=list(trainer_runs.KINDS), choices=trainer_runs.KINDS)
    parser.add_argument("--workers", type=int, default=2, help="trainer processes at a time")
    parser.add_argument("--cache", type=Path, help="keep run records here (outside the repository)")
    args = parser.parse_args()
    if args.cache is not None and args.cache.resolve().is_relative_to(ROOT):
        parser.error("--cache must be outside the repository")
    policy = Policy()
    wanted = trainer_runs.scenario_set(args.kinds, args.rounds, args.first_seed)
    seeds = sorted({s.seed for s in wanted})

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="detector-trainer-") as tmp:
        found = trainer_runs.cases(wanted, Path(tmp), policy=policy, workers=args.workers, cache=args.cache)
    elapsed = time.perf_counter() - started
    runs = list({id(r): r for case in found for r in (case.run, case.twin)}.values())
    fresh = [r for r in runs if not r.cached]
    print(
        f"{len(found)} scenarios on seeds {seeds[0]}-{seeds[-1]}: {elapsed:.0f} s for {len(fresh)} fresh trainer runs"
        + (
            f" ({args.workers} at a time; each: median {statistics.median(r.wall_s for r in fresh):.1f} s wall, "
            f"{statistics.median(r.cpu_s for r in fresh):.1f} s CPU)"
            if fresh
            else ""
        )
    )
    print()
    print_runs(found)
    print()
    print_kinds(found, policy)
    print()
    print("labels (required, don't care) and verdicts per run:")
    print_verdicts(found, policy)

    faulted = [case for case in found if case.scenario.kind != "clean"]
    clean = [case for case in found if case.scenario.kind == "clean"]
    synthetic = score(labelled.streams(labelled.SCORING_SEEDS[:SYNTHETIC_STREAMS]), policy)
    quiet = labelled.with_ranges(labelled.TUNING, events=(0, 0))
    synthetic_clean = score(labelled.streams(labelled.SCORING_SEEDS[:SYNTHETIC_STREAMS], quiet), policy)
    result = score([case.stream for case in faulted], policy)
    if faulted:
        streams = [case.stream for case in faulted]
        by_class = {cls: score(only_class(streams, cls), policy) for cls in CLASSES}
        print()
        print(f"faulted runs ({len(faulted)}; latency in steps from a label's onset):")
        print_scores(result, by_class)
        print(
            f"false verdicts outside the faults' reach: {false_per_10k(result, 'rollback'):.1f} rollbacks, "
            f"{false_per_10k(result, 'alert'):.1f} alerts per 10k series-steps ({result.clean_steps})"
        )
    clean_result = score([case.stream for case in clean], policy)
    if clean:
        print()
        print("clean runs (the twins):")
        print_clean(clean_result, len(clean), {case.scenario.job: verdicts_of(case.stream, policy) for case in clean})
    for title, this, cases in (("faulted runs", result, faulted), ("clean runs", clean_result, clean)):
        if this.missed_examples or this.false_examples:
            print()
            print(f"misses and false verdicts, {title}:")
            print_examples(this, cases, policy)

    print()
    print(f"baseline: the same detector on {SYNTHETIC_STREAMS} synthetic streams (labelled.py, TUNING ranges):")
    print_scores(synthetic)
    print("and on the same number without events:")
    print_clean(synthetic_clean, SYNTHETIC_STREAMS, {})
    if clean:
        print()
        print_noise(clean, policy)
    skipped = {kind: sum(len(c.run.skipped) for c in found if c.scenario.kind == kind) for kind in args.kinds}
    print(f"\nsteps the trainer skipped: {', '.join(f'{k} {n}' for k, n in skipped.items())}")

    note = f"{len(faulted)} faulted runs and {len(clean)} clean twins, seeds {seeds[0]}-{seeds[-1]}"
    for action in ACTIONS:
        ours, base = result.rate(action), synthetic.rate(action)
        for measure in ("precision", "recall"):
            record(
                "detector_trainer", f"{action} {measure}, real runs", ours[measure], base[measure],
                ours[measure] / base[measure] if base[measure] else None, baseline_name=BASELINE,
                note=f"{note}: {ours['hits']} hits, {ours['misses']} misses, {ours['false']} false",
            )  # fmt: skip
        record(
            "detector_trainer", f"false {action}s per 10k series-steps, clean real runs",
            false_per_10k(clean_result, action), false_per_10k(synthetic_clean, action), None,
            unit=f"{action}s", baseline_name=f"{BASELINE} without events", note=note,
        )  # fmt: skip
    for kind in ("spike", "divergence"):
        ours, base = result.latency.get(kind, []), synthetic.latency.get(kind, [])
        if ours:
            base_p95 = percentile(base, 0.95) if base else None
            record(
                "detector_trainer", f"{kind} latency p95, real runs", percentile(ours, 0.95), base_p95,
                percentile(ours, 0.95) / base_p95 if base_p95 else None, unit="steps", baseline_name=BASELINE,
                note=f"median {statistics.median(ours):g}, max {max(ours)} over {len(ours)} hits",
            )  # fmt: skip
    if fresh:
        record(
            "detector_trainer", "trainer run CPU s (100 steps)", statistics.median(r.cpu_s for r in fresh),
            None, None, unit="s",
            note=(
                f"median of {len(fresh)} runs, {args.workers} at a time; wall "
                f"{statistics.median(r.wall_s for r in fresh):.1f} s"
            ),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
