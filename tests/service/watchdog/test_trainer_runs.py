"""Real trainer runs, labelled by the definitions: the detector raises exactly their labels.

Short CPU runs (`trainer_runs.py`) of one seed: a clean one (the others' twin), a window of
random ids on one channel, a NaN step; and the clean run of another seed, where the detector is
known to roll back on noise. bench/detector_trainer.py scores the full set.
"""

from __future__ import annotations

import pytest

from service.watchdog.detector import Detector
from tests.service.watchdog import labelled, trainer_runs

pytestmark = pytest.mark.slow

SEED = 1
# A clean run whose code channel has batches +13% and +18% above its trend 23 steps apart: the
# detector calls the second one a divergence of the first (bench/detector_trainer.py: clean-7).
NOISY_SEED = 7


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, trainer_runs.Case]:
    wanted = [trainer_runs.scenario(kind, SEED) for kind in ("clean", "spike", "nan")]
    wanted.append(trainer_runs.scenario("clean", NOISY_SEED))
    return {case.scenario.job: case for case in trainer_runs.cases(wanted, tmp_path_factory.mktemp("trainer-runs"))}


@pytest.fixture(scope="module")
def real(runs) -> dict[str, trainer_runs.Case]:
    return {kind: runs[f"{kind}-{SEED}"] for kind in ("clean", "spike", "nan")}


def required(case: trainer_runs.Case) -> list[labelled.Label]:
    return [label for label in case.stream.labels if not label.dont_care]


def verdicts(case: trainer_runs.Case) -> list:
    detector = Detector()
    return [v for record in case.stream.records for v in detector.observe(record)]


def test_a_faulted_run_is_its_clean_twin_until_the_fault(real):
    # Same seed, same records, though the twin ran in another process: every metric but the
    # timings, step by step (`label` checks the loss series too).
    case = real["spike"]

    def untimed(record: dict) -> dict:
        return {k: v for k, v in record["metrics"].items() if not k.startswith(("throughput/", "time/"))}

    before = [(mine, twin) for mine, twin in zip(case.run.records, case.twin.records, strict=True) if mine["step"] < case.scenario.start]
    assert len(before) == case.scenario.start
    assert all(mine["step"] == twin["step"] and untimed(mine) == untimed(twin) for mine, twin in before)


def test_a_random_id_window_is_a_spike_on_its_channel_at_its_first_step_and_no_divergence(real):
    case = real["spike"]
    scenario = case.scenario
    assert 1 <= scenario.end - scenario.start <= 3 and scenario.channel in trainer_runs.CHANNELS
    present = [
        r["step"] for r in case.run.records
        if scenario.start <= r["step"] < scenario.end and f"loss/{scenario.channel}" in r["metrics"]
    ]  # fmt: skip
    (spike,) = [label for label in required(case) if label.channel == scenario.channel]
    assert (spike.kind, spike.onset, spike.due) == ("spike", present[0], present[0] + labelled.ALERT_DUE)
    assert spike.info["effect"] > 0.3  # random ids against a model that has learned something
    assert not [label for label in case.stream.labels if label.kind == "divergence"]
    # Other channels see the same batches as the twin: at most noise, never a required label.
    assert {label.channel for label in required(case)} <= {scenario.channel, "all"}


def test_a_nan_step_is_nonfinite_on_every_series_it_reaches_and_nothing_else(real):
    case = real["nan"]
    start = case.scenario.start
    step = next(r for r in case.run.records if r["step"] == start)
    series = {"all" if name == "loss" else name.removeprefix("loss/") for name in step["metrics"] if name.startswith("loss")}
    assert all(value == "NaN" for name, value in step["metrics"].items() if name.startswith("loss"))
    assert {(label.kind, label.channel, label.onset) for label in required(case)} == {("nonfinite", s, start) for s in series}
    assert case.run.outcome["outcome"] == "completed" and start in case.run.skipped


def test_a_clean_run_requires_nothing(real):
    case = real["clean"]
    assert required(case) == [] and case.run.outcome["outcome"] == "completed"
    # What it may carry: steps where the batch alone lies beyond a band around the trend.
    assert all(label.info["why"] == "noise" for label in case.stream.labels)
    assert case.stream.clean_steps > 300


def test_the_detector_raises_exactly_the_labels_and_no_false_verdict(real):
    result = labelled.score([case.stream for case in real.values()], lambda: Detector())
    assert not result.misses, result.missed_examples
    assert not result.false, result.false_examples
    assert result.hits == {"spike/total": 1, "spike/channel": 1, "nonfinite/total": 1, "nonfinite/channel": 3}


def test_noise_on_a_clean_channel_never_becomes_a_rollback(runs):
    case = runs[f"clean-{NOISY_SEED}"]
    assert [label for label in case.stream.labels if not label.dont_care] == []
    assert [(v.kind, v.channel, v.step) for v in verdicts(case) if v.action == "rollback"] == []
