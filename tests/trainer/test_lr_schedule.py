"""Learning-rate schedules against hand-computed tables, and the run-wide lr across stages."""

from __future__ import annotations

import pytest

from trainer.config import (
    DataSourceConfig,
    ScheduleConfig,
    StageConfig,
    TrainerConfig,
    example_config,
)
from trainer.lr_schedule import (
    LRScheduler,
    constant,
    cosine,
    lr_at,
    multiplier_at,
    phase_at,
    stage_at,
    warmup_stable_decay,
)

# warmup 4, stable 3, decay 4, min_lr_ratio 0.2: step s takes the value at s + 1, so warmup is
# 1/4 … 4/4 and the decay's progress at steps 7..10 is 1/4 … 4/4.
WSD = {"warmup": 4, "stable": 3, "decay": 4, "min_lr_ratio": 0.2}
WARMUP_AND_STABLE = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
WSD_DECAY = {
    # 0.2 + 0.8 (1 - p)
    "linear": [0.8, 0.6, 0.4, 0.2, 0.2, 0.2],
    # 0.2 + 0.8 · ½(1 + cos πp)
    "cosine": [0.88284271, 0.6, 0.31715729, 0.2, 0.2, 0.2],
    # 0.2 + 0.8 (1 - √p)
    "1-sqrt": [0.6, 0.43431458, 0.30717968, 0.2, 0.2, 0.2],
}


@pytest.mark.parametrize("shape", sorted(WSD_DECAY))
def test_warmup_stable_decay_matches_the_table(shape: str) -> None:
    expected = WARMUP_AND_STABLE + WSD_DECAY[shape]
    got = [warmup_stable_decay(s, **WSD, decay_shape=shape) for s in range(len(expected))]
    assert got == pytest.approx(expected, abs=1e-8)


def test_warmup_stable_decay_first_step_trains_and_last_decay_step_reaches_the_floor() -> None:
    kwargs = {"warmup": 10, "stable": 80, "decay": 10, "decay_shape": "linear", "min_lr_ratio": 0.1}
    assert warmup_stable_decay(0, **kwargs) == pytest.approx(0.1)
    assert warmup_stable_decay(9, **kwargs) == 1.0
    assert warmup_stable_decay(89, **kwargs) == 1.0
    assert warmup_stable_decay(90, **kwargs) == pytest.approx(0.91)
    assert warmup_stable_decay(99, **kwargs) == pytest.approx(0.1)
    assert warmup_stable_decay(10_000, **kwargs) == pytest.approx(0.1)


def test_warmup_stable_decay_without_warmup_starts_at_the_peak() -> None:
    assert (
        warmup_stable_decay(0, warmup=0, stable=5, decay=5, decay_shape="cosine", min_lr_ratio=0)
        == 1.0
    )


def test_warmup_stable_decay_without_decay_stays_at_the_peak() -> None:
    values = [
        warmup_stable_decay(s, warmup=2, stable=3, decay=0, decay_shape="linear", min_lr_ratio=0.1)
        for s in range(8)
    ]
    assert values == [0.5] + [1.0] * 7


def test_warmup_stable_decay_can_decay_to_zero() -> None:
    got = [
        warmup_stable_decay(s, warmup=0, stable=0, decay=4, decay_shape="linear", min_lr_ratio=0)
        for s in range(5)
    ]
    assert got == pytest.approx([0.75, 0.5, 0.25, 0.0, 0.0])


def test_cosine_matches_the_table() -> None:
    # warmup 2, total 10, floor 0.1: progress (s + 1 - 2) / 8 after warmup.
    expected = {
        0: 0.5,
        1: 1.0,
        2: 0.96574579,  # 0.1 + 0.9 · ½(1 + cos π/8)
        5: 0.55,  # half way
        8: 0.13425421,  # 0.1 + 0.9 · ½(1 + cos 7π/8)
        9: 0.1,  # the last step lands on the floor
        12: 0.1,
    }
    for step, value in expected.items():
        assert cosine(step, warmup=2, total=10, min_lr_ratio=0.1) == pytest.approx(value, abs=1e-8)


def test_constant_matches_the_table() -> None:
    assert [constant(s, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [constant(s, warmup=0) for s in range(3)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize(
    ("warmup", "stable", "decay"), [(0, 0, 7), (3, 0, 5), (5, 11, 13), (1, 1, 1)]
)
def test_warmup_stable_decay_rises_holds_then_falls_within_bounds(
    shape: str, warmup: int, stable: int, decay: int
) -> None:
    ratio = 0.05
    values = [
        warmup_stable_decay(
            s, warmup=warmup, stable=stable, decay=decay, decay_shape=shape, min_lr_ratio=ratio
        )
        for s in range(warmup + stable + decay + 5)
    ]
    rising, holding = values[:warmup], values[warmup : warmup + stable]
    falling = values[warmup + stable :]
    assert all(0 < v <= 1 for v in rising)
    assert rising == sorted(rising)
    assert all(v == 1.0 for v in holding)
    assert falling == sorted(falling, reverse=True)
    assert all(ratio - 1e-12 <= v < 1 for v in falling)
    assert falling[decay - 1] == pytest.approx(ratio)


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 9), (4, 30), (10, 10)])
def test_cosine_rises_then_falls_to_its_floor(warmup: int, total: int) -> None:
    values = [cosine(s, warmup=warmup, total=total, min_lr_ratio=0.1) for s in range(total + 3)]
    assert values[:warmup] == sorted(values[:warmup])
    assert values[warmup:] == sorted(values[warmup:], reverse=True)
    # Without warmup even step 0 is past the peak: it takes the value at the end of its interval.
    assert max(values) == (1.0 if warmup else values[0])
    assert values[total - 1] == pytest.approx(0.1 if total > warmup else 1.0)


def test_shapes_order_as_expected_mid_decay() -> None:
    # At a quarter of the decay, cosine has fallen least and 1-sqrt most.
    at = {
        shape: warmup_stable_decay(
            0, warmup=0, stable=0, decay=4, decay_shape=shape, min_lr_ratio=0
        )
        for shape in ("linear", "cosine", "1-sqrt")
    }
    assert at["1-sqrt"] < at["linear"] < at["cosine"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: constant(-1, warmup=2), "step must not be negative"),
        (lambda: constant(0, warmup=-2), "warmup must not be negative"),
        (lambda: cosine(0, warmup=0, total=0, min_lr_ratio=0), "total must be at least 1"),
        (
            lambda: cosine(0, warmup=0, total=5, min_lr_ratio=1.5),
            r"min_lr_ratio must be in \[0, 1\]",
        ),
        (
            lambda: warmup_stable_decay(
                0, warmup=1, stable=1, decay=1, decay_shape="exp", min_lr_ratio=0
            ),
            "decay_shape must be one of",
        ),
    ],
)
def test_schedules_refuse_nonsense(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- across stages


def two_stage_config(**schedule) -> TrainerConfig:
    """Stages a (6 steps) and b (4 steps, lr_scale 0.5); peak 1e-3, floor 1e-4, attempt × 0.5."""
    config = example_config()
    data = [DataSourceConfig(channel="en", path="embedded://en", weight=1.0)]
    config.stages = [
        StageConfig(name="a", steps=6, seq_length=64, data=data),
        StageConfig(name="b", steps=4, seq_length=64, lr_scale=0.5, data=data),
    ]
    config.optimizer.lr, config.optimizer.min_lr = 1e-3, 1e-4
    config.schedule = ScheduleConfig(**schedule)
    config.lr_scale = 0.5
    return config


def test_lr_at_spans_stages_and_multiplies_both_scales() -> None:
    config = two_stage_config(kind="wsd", warmup_steps=2, decay_steps=4, decay_shape="linear")
    expected = {
        0: 1e-3 * 0.5 * 1.0 * 0.5,  # warmup 1/2, stage a, attempt 0.5
        1: 1e-3 * 1.0 * 1.0 * 0.5,
        5: 1e-3 * 1.0 * 1.0 * 0.5,  # last stable step, still stage a
        6: 1e-3 * 0.775 * 0.5 * 0.5,  # decay 1/4: 0.1 + 0.9 · 3/4; stage b halves
        9: 1e-3 * 0.1 * 0.5 * 0.5,  # the floor, min_lr / lr
    }
    for step, lr in expected.items():
        assert lr_at(step, config) == pytest.approx(lr, rel=1e-12)


def test_multiplier_at_ignores_the_scales() -> None:
    config = two_stage_config(kind="wsd", warmup_steps=2, decay_steps=4)
    assert multiplier_at(9, config) == pytest.approx(0.1)
    assert multiplier_at(3, config) == 1.0


def test_lr_at_follows_the_cosine_and_constant_kinds() -> None:
    config = two_stage_config(kind="cosine", warmup_steps=0)
    assert lr_at(0, config) == pytest.approx(
        1e-3 * 0.5 * cosine(0, warmup=0, total=10, min_lr_ratio=0.1)
    )
    assert lr_at(9, config) == pytest.approx(1e-3 * 0.1 * 0.25)
    config = two_stage_config(kind="constant", warmup_steps=5)
    assert [lr_at(s, config) / 1e-3 for s in range(10)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    )


def test_stage_at_returns_the_stage_and_the_step_within_it() -> None:
    config = two_stage_config(kind="wsd")
    a, b = config.stages
    assert stage_at(0, config) == (0, a, 0)
    assert stage_at(5, config) == (0, a, 5)
    assert stage_at(6, config) == (1, b, 0)
    assert stage_at(9, config) == (1, b, 3)


@pytest.mark.parametrize("step", [-1, 10, 11])
def test_steps_outside_the_run_are_refused(step: int) -> None:
    config = two_stage_config(kind="wsd")
    with pytest.raises(ValueError, match="step"):
        stage_at(step, config)
    with pytest.raises(ValueError, match="step"):
        lr_at(step, config)


def test_phase_boundaries_of_the_example() -> None:
    config = example_config()  # wsd, warmup 5, decay 10, 50 steps
    phases = [phase_at(s, config) for s in range(50)]
    assert phases == ["warmup"] * 5 + ["stable"] * 35 + ["decay"] * 10
    assert lr_at(4, config) == config.optimizer.lr
    assert lr_at(39, config) == config.optimizer.lr
    assert lr_at(40, config) < config.optimizer.lr
    assert lr_at(49, config) == pytest.approx(config.optimizer.min_lr)


def test_phases_of_cosine_and_constant() -> None:
    cosine_config = two_stage_config(kind="cosine", warmup_steps=3)
    assert [phase_at(s, cosine_config) for s in range(10)] == ["warmup"] * 3 + ["decay"] * 7
    constant_config = two_stage_config(kind="constant", warmup_steps=3)
    assert [phase_at(s, constant_config) for s in range(10)] == ["warmup"] * 3 + ["stable"] * 7
    no_warmup = two_stage_config(kind="wsd", warmup_steps=0, decay_steps=0)
    assert {phase_at(s, no_warmup) for s in range(10)} == {"stable"}


def test_lr_is_monotone_within_each_phase_of_the_example() -> None:
    config = example_config()
    lrs = [lr_at(s, config) for s in range(config.total_steps)]
    phases = [phase_at(s, config) for s in range(config.total_steps)]
    by_phase = {p: [lr for lr, q in zip(lrs, phases, strict=True) if q == p] for p in set(phases)}
    assert by_phase["warmup"] == sorted(by_phase["warmup"])
    assert len(set(by_phase["stable"])) == 1
    assert by_phase["decay"] == sorted(by_phase["decay"], reverse=True)
    assert min(lrs) == pytest.approx(config.optimizer.min_lr)
    assert max(lrs) == config.optimizer.lr


def test_lr_at_refuses_a_wsd_that_does_not_fit_the_run() -> None:
    config = two_stage_config(kind="wsd", warmup_steps=5, decay_steps=6)
    with pytest.raises(ValueError, match="exceed the run's 10 steps"):
        lr_at(0, config)


# ---------------------------------------------------------------- the component


def test_scheduler_is_the_pure_function_plus_a_restorable_step() -> None:
    config = example_config()
    scheduler = LRScheduler(config)
    assert [scheduler.lr(s) for s in range(50)] == [lr_at(s, config) for s in range(50)]
    scheduler.step = 42
    assert scheduler.lr() == lr_at(42, config)
    assert scheduler.phase() == "decay"
    restored = LRScheduler(config)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.state_dict() == {"step": 42}
    assert restored.lr() == scheduler.lr()


@pytest.mark.parametrize("state", [{}, {"step": -1}, {"step": "3"}, {"step": 1, "epoch": 0}])
def test_scheduler_refuses_a_foreign_state(state: dict) -> None:
    with pytest.raises(ValueError, match="LRScheduler state"):
        LRScheduler(example_config()).load_state_dict(state)
