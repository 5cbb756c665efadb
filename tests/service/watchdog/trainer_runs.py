"""Labelled streams from the real trainer: short CPU runs with injected faults, for scoring the
detector the way `labelled.py` scores it on synthetic curves.

A scenario is one seeded run of `python -m trainer.train` (the tiny model on the three embedded
channels, one process) with one fault: a window of random ids on a channel (`spike`: 1-3 steps;
`long_spike`: longer than the recover window), a window of repeated newlines (`newlines`), an
LR blow-up from a step (`lr_blowup`), NaN steps (`nan`; `nan_persistent` ends the run as
diverged), or none (`clean`). Its **clean twin** is the same seed and config without the fault:
both start from the same weights and see the same batches in the same order, so they are
bit-identical until the fault, and after it the ratio faulted / twin of a series, step by step,
is the fault's own effect with the sampling noise (a batch with more `zh`, an odd code file)
divided out. That effect is labelled by the watchdog's definitions, each series (`loss` as
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

Runs are deterministic (same seed → same records; torch on one CPU thread) and write only under
the work folder they are given. `cases` runs scenarios and their twins (each seed's twin once;
a `clean` scenario is its own twin) and labels them; `scenario_set` gives every faulted run its
own seed, so that no two faulted runs share their batches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.watchdog.detector import Policy
from tests.service.watchdog.labelled import (
    ALERT_DUE,
    AMBIGUITY,
    DIVERGENCE_DUE,
    WINDOW,
    Label,
    Stream,
)
from trainer.config import config_to_dict, example_config

ROOT = Path(__file__).resolve().parents[3]
TRAINER_SOURCES = ROOT / "trainer_image" / "trainer"

CHANNELS = ("code", "en", "zh")
WEIGHTS = (0.4, 0.4, 0.2)
STEPS = 100
SEQ_LENGTH = 64
GLOBAL_BATCH = 16  # 1,024 tokens a step: about 6 sequences each of code and en, 3 of zh
KINDS = ("clean", "spike", "long_spike", "newlines", "lr_blowup", "nan", "nan_persistent")
RUN_TIMEOUT_S = 600
# The twin's trend: a running median over ±TREND_HALF steps of its log loss, then a running
# mean over ±SMOOTH_HALF steps of that (a median of a noisy curve moves in stairs).
TREND_HALF = 7
SMOOTH_HALF = 3
# Nothing is labelled before the detector's own min_history would let it judge.
FIRST_JUDGED = 10
DEFAULT_POLICY = Policy()
# A divergence is due this many steps after its recover window ends (labelled.py's 25 of 20).
DIVERGENCE_SLACK = DIVERGENCE_DUE - WINDOW


# --- scenarios ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One seeded run with one fault (or none), as the trainer config expresses it."""

    kind: str
    seed: int
    channel: str | None = None  # the data fault's channel
    start: int = 0  # the fault's first step
    end: int = 0  # its end, exclusive (an LR blow-up lasts to the end of the run)
    factor: float = 1.0  # the LR blow-up's

    @property
    def job(self) -> str:
        return f"{self.kind}-{self.seed}"

    def describe(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "lr_blowup":
            return f"lr×{self.factor:g} from {self.start}"
        where = f" on {self.channel}" if self.channel else ""
        return f"{self.kind} [{self.start}, {self.end}){where}"

    def apply(self, config: dict[str, Any]) -> None:
        """Write the fault into a trainer config (a dict, as `config_to_dict` gives it)."""
        if self.kind in ("spike", "long_spike", "newlines"):
            for source in config["stages"][0]["data"]:
                if source["channel"] == self.channel:
                    # Batch indices; in a run that never skipped a range, batch index = step.
                    source["corrupt"] = [[self.start, self.end]]
                    source["corrupt_kind"] = "newlines" if self.kind == "newlines" else "random"
        elif self.kind == "lr_blowup":
            config["faults"].update(lr_blowup_from_step=self.start, lr_blowup_factor=self.factor)
        elif self.kind in ("nan", "nan_persistent"):
            config["faults"]["nan_steps"] = [[self.start, self.end]]


def scenario(kind: str, seed: int) -> Scenario:
    """The scenario `kind` of `seed`: where its fault falls and how long it lasts, drawn from both."""
    if kind not in KINDS:
        raise ValueError(f"unknown scenario kind {kind!r}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    channel = str(rng.choice(CHANNELS))
    if kind == "clean":
        return Scenario(kind, seed)
    if kind == "spike":  # a few bad batches: an alert, and back at once
        start = int(rng.integers(40, 70))
        return Scenario(kind, seed, channel, start, start + int(rng.integers(1, 4)))
    if kind == "long_spike":  # bad for longer than the recover window: a divergence
        start = int(rng.integers(35, 50))
        return Scenario(kind, seed, channel, start, start + int(rng.integers(24, 33)))
    if kind == "newlines":  # the model learns to predict newlines: the loss falls
        start = int(rng.integers(35, 50))
        return Scenario(kind, seed, channel, start, start + int(rng.integers(16, 26)))
    if kind == "lr_blowup":
        start = int(rng.integers(40, 60))
        factor = float(round(math.exp(rng.uniform(math.log(100), math.log(1000))), -1))
        return Scenario(kind, seed, None, start, STEPS, factor)
    if kind == "nan":  # fewer non-finite steps in a row than end the run
        start = int(rng.integers(40, 80))
        return Scenario(kind, seed, None, start, start + int(rng.integers(1, 3)))
    start = int(rng.integers(40, 80))  # nan_persistent: diverged after max_nonfinite_steps
    return Scenario(kind, seed, None, start, STEPS)


def scenario_set(kinds: Iterable[str], rounds: int, first_seed: int = 1) -> list[Scenario]:
    """Each faulted kind `rounds` times, every one on its own seed (its own batches, its own
    twin), and, when `clean` is among `kinds`, each of those twins as a clean scenario."""
    kinds = list(kinds)
    faulted = [k for k in KINDS if k in kinds and k != "clean"]
    out = []
    for round_ in range(rounds):
        for index, kind in enumerate(faulted or ["clean"]):
            seed = first_seed + round_ * max(len(faulted), 1) + index
            out.append(scenario(kind, seed))
            if "clean" in kinds and kind != "clean":
                out.append(scenario("clean", seed))
    return out


def trainer_config(scenario: Scenario, workdir: Path, corpora: Path) -> dict[str, Any]:
    """The tiny CPU config of `scenario`, writing everything under `workdir`."""
    config = config_to_dict(example_config())
    stage = config["stages"][0]
    stage.update(steps=STEPS, seq_length=SEQ_LENGTH)
    stage["data"] = [
        {"channel": name, "path": f"embedded://{name}", "weight": weight}
        for name, weight in zip(CHANNELS, WEIGHTS, strict=True)
    ]
    config["stages"] = [stage]
    config["model"]["max_position_embeddings"] = SEQ_LENGTH
    config["batch"] = {"micro_batch_size": GLOBAL_BATCH, "global_batch_size": GLOBAL_BATCH}
    config["schedule"] = {"kind": "constant", "warmup_steps": 5}
    config["eval"] = {"interval_steps": 0, "samples_per_channel": 8}
    config["checkpoint"] = {"directory": str(workdir / "checkpoints"), "interval_steps": 0, "keep_last": 1}
    config["metrics"] = {"jsonl_path": str(workdir / "metrics.jsonl")}
    config["data"].update(seed=scenario.seed, cache_dir=str(corpora))
    config["train"]["seed"] = scenario.seed
    config["job"].update(id=scenario.job, name=scenario.job, result_path=str(workdir / "result.jsonl"))
    scenario.apply(config)
    return config


# --- running the trainer ------------------------------------------------------------------------


@dataclass
class Run:
    """What one trainer process left: its records (train steps), its outcome line, its time."""

    records: list[dict[str, Any]]
    outcome: dict[str, Any]
    wall_s: float
    cpu_s: float  # user + system: what the run costs, however busy the machine was
    cached: bool = False

    @property
    def skipped(self) -> list[int]:
        """Steps whose update the trainer skipped (a non-finite loss or a grad-norm spike)."""
        return [r["step"] for r in self.records if r["metrics"].get("step/skipped")]


def run_trainer(config: dict[str, Any], workdir: Path, *, cache: Path | None = None) -> Run:
    """Run the trainer on `config` (which writes under `workdir`) as a pod would: a subprocess."""
    key = _cache_key(config) if cache is not None else ""
    if cache is not None and (cache / f"{key}.json").exists():
        saved = json.loads((cache / f"{key}.json").read_text())
        return Run(saved["records"], saved["outcome"], saved["wall_s"], saved["cpu_s"], cached=True)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    # One thread: the same seed gives the same bits, and two runs share two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trainer.train", "--config", str(path)]
    started = time.perf_counter()
    with open(workdir / "trainer.log", "w") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(RUN_TIMEOUT_S, process.kill)
        timer.start()
        try:  # wait4, not wait: the CPU time of this child alone, though others run beside it
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall_s, cpu_s = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
    outcomes = _jsonl(workdir / "result.jsonl")
    if not outcomes or outcomes[0]["outcome"] not in ("completed", "diverged"):
        tail = (workdir / "trainer.log").read_text()[-3000:]
        raise RuntimeError(f"trainer run {config['job']['id']} failed ({process.returncode}):\n{tail}")
    records = [r for r in _jsonl(workdir / "metrics.jsonl") if r["phase"] != "eval"]
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    run = Run(records, outcomes[0], wall_s, cpu_s)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        saved = {"records": run.records, "outcome": run.outcome, "wall_s": wall_s, "cpu_s": cpu_s}
        (cache / f"{key}.json").write_text(json.dumps(saved))
    return run


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cache_key(config: dict[str, Any]) -> str:
    """The config without its paths, and the trainer's sources: what decides the records."""
    portable = json.loads(json.dumps(config))
    portable["checkpoint"]["directory"] = portable["metrics"]["jsonl_path"] = ""
    portable["job"]["result_path"] = portable["data"]["cache_dir"] = ""
    digest = hashlib.sha256(json.dumps(portable, sort_keys=True).encode())
    for source in sorted(TRAINER_SOURCES.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:24]


# --- labels -------------------------------------------------------------------------------------


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


def label(scenario: Scenario, run: Run, twin: Run, policy: Policy = DEFAULT_POLICY) -> Stream:
    """The labelled stream of `scenario`'s run, measured against its clean twin's."""
    faulted, clean = series_of(run.records), series_of(twin.records)
    for name, values in faulted.items():
        differ = [s for s, v in values.items() if s < scenario.start and v != clean[name].get(s)]
        if differ:  # labels measured against a run that is not a twin would be wrong
            raise AssertionError(f"{scenario.job}: {name} differs from its clean twin before the fault, at {differ[:5]}")
    events: list[Label] = []
    excused: list[Label] = []
    clean_steps = 0
    noise: dict[str, tuple[float, float]] = {}
    for name in sorted(faulted, key=lambda n: (n != "all", n)):
        view = _view(name, faulted[name], clean[name])
        mine = _nonfinite_labels(name, faulted[name])
        if scenario.kind != "clean":
            mine += _rise_labels(view, scenario.start, policy) + _fall_labels(view, scenario.start, policy)
        events += [replace(label, info={**label.info, "scenario": scenario.describe()}) for label in mine]
        excused += _noise_labels(view, policy)
        clean_steps += _clean_steps(view, mine, policy)
        deviations = view.noise
        phi = float(np.corrcoef(deviations[:-1], deviations[1:])[0, 1]) if len(deviations) > 2 else 0.0
        noise[name] = (round(float(np.percentile(np.abs(deviations), 95)), 3), round(phi, 2))
    # Event labels first: `labelled.score` gives a verdict to the first label it fits.
    return Stream(scenario.job, list(run.records), events + excused, clean_steps, [scenario.describe()], noise)


# --- a set --------------------------------------------------------------------------------------


@dataclass
class Case:
    """A scenario, its labelled stream, and the two trainer runs it was measured from."""

    scenario: Scenario
    stream: Stream
    run: Run
    twin: Run
    extra: dict[str, Any] = field(default_factory=dict)


def cases(
    wanted: Sequence[Scenario],
    workdir: Path,
    *,
    policy: Policy = DEFAULT_POLICY,
    workers: int = 2,
    cache: Path | None = None,
) -> list[Case]:
    """Run every scenario and each seed's clean twin (once), `workers` processes at a time."""
    corpora = workdir / "corpora"
    twins = {seed: Scenario("clean", seed) for seed in sorted({s.seed for s in wanted})}
    todo = {s.job: s for s in [*twins.values(), *wanted]}

    def one(s: Scenario) -> tuple[str, Run]:
        folder = workdir / s.job
        return s.job, run_trainer(trainer_config(s, folder, corpora), folder, cache=cache)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = dict(pool.map(one, todo.values()))
    out = []
    for s in wanted:
        run, twin = runs[s.job], runs[twins[s.seed].job]
        out.append(Case(s, label(s, run, twin, policy), run, twin))
    return out
