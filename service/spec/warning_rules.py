"""Warnings: things in a spec that will run, but perhaps not as intended."""

from __future__ import annotations

from collections.abc import Iterator

from service.spec.context import Context, Rule, needs_model
from service.spec.problems import Problem, problem


def _warn_tokens_rounded_to_steps(context: Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        step = context.tokens_per_step(stage)
        steps = stage.tokens // step
        if stage.tokens % step:
            yield problem(
                ["stages", index, "tokens"],
                f"stage {stage.name!r} asks for {stage.tokens} tokens, not a whole number of steps of "
                f"{context.spec.batch.global_batch_size} × {stage.seq_length} = {step} tokens; it will "
                f"train {steps} steps = {steps * step} tokens ({steps + 1} steps = "
                f"{(steps + 1) * step} tokens would cover the request)",
            )


def _warn_ignored_settings(context: Context) -> Iterator[Problem]:
    spec = context.spec
    if "loss_scale" in spec.precision.model_fields_set and spec.precision.dtype != "fp16":
        yield problem(
            ["precision", "loss_scale"],
            f"loss_scale only applies to fp16; it is ignored with {spec.precision.dtype}",
        )
    if spec.schedule.kind != "wsd":
        for name in ("decay_fraction", "decay_shape"):
            if name not in spec.schedule.model_fields_set:
                continue
            yield problem(
                ["schedule", name],
                f"{name} only applies to the wsd schedule; it is ignored with {spec.schedule.kind}",
            )
    if spec.recompute.recompute_layers is not None and spec.recompute.mode != "full":
        yield problem(
            ["recompute", "recompute_layers"],
            f"recompute_layers only applies to mode full; it is ignored with {spec.recompute.mode}",
        )


@needs_model
def _warn_rope_base_falls_back(context: Context) -> Iterator[Problem]:
    # A stage without rope_base uses the model's, not the previous stage's: an anneal after a
    # long-context stage that forgets to repeat the larger base would silently shrink it again.
    previous: tuple[str, float] | None = None
    for index, stage in enumerate(context.spec.stages):
        rope_base = stage.rope_base or context.model.rope_base
        if previous is not None and stage.rope_base is None and rope_base < previous[1]:
            yield problem(
                ["stages", index, "rope_base"],
                f"stage {stage.name!r} sets no rope_base, so it returns to the model's {rope_base:g} "
                f"after stage {previous[0]!r} trained with {previous[1]:g}; set rope_base on this "
                "stage if that is not intended",
            )
        previous = (stage.name, rope_base)


def _warn_fault_injection(context: Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        for source_index, source in enumerate(stage.data):
            if source.corrupt_steps:
                spans = ", ".join(f"[{start}, {end})" for start, end in source.corrupt_steps)
                yield problem(
                    ["stages", index, "data", source_index, "corrupt_steps"],
                    f"channel {source.channel!r} trains on random tokens at steps {spans} on "
                    "purpose (fault injection); remove corrupt_steps for a real run",
                )


def _warn_hang_injection(context: Context) -> Iterator[Problem]:
    step = context.spec.faults.hang_at_step
    if step is not None:
        yield problem(
            ["faults", "hang_at_step"],
            f"the first attempt hangs at step {step} on purpose (fault injection); remove "
            "faults.hang_at_step for a real run",
        )


def _warn_rollback_target_may_be_pruned(context: Context) -> Iterator[Problem]:
    # The attempt keeps saving (and pruning to keep_last) until the controller stops it, so the
    # checkpoint a rollback picks (at least rollback_margin_steps before the onset, found
    # recover_window_steps after it) must outlive about one more interval of saves.
    spec = context.spec
    if spec.watchdog.rollback != "auto":
        return
    checkpoint, watchdog = spec.checkpoint, spec.watchdog
    reach = watchdog.rollback_margin_steps + watchdog.recover_window_steps + 2 * checkpoint.interval_steps
    kept = checkpoint.keep_last * checkpoint.interval_steps
    if kept < reach:
        yield problem(
            ["checkpoint", "keep_last"],
            f"keep_last {checkpoint.keep_last} × interval_steps {checkpoint.interval_steps} = {kept} steps "
            f"of checkpoints, but a rollback reaches back about {reach} steps (rollback_margin_steps "
            f"{watchdog.rollback_margin_steps} + recover_window_steps {watchdog.recover_window_steps} "
            f"+ two intervals); the checkpoint it needs may already be deleted: keep at least "
            f"{-(-reach // checkpoint.interval_steps)}",
        )


WARNINGS: tuple[Rule, ...] = (
    _warn_fault_injection,
    _warn_hang_injection,
    _warn_rollback_target_may_be_pruned,
    _warn_tokens_rounded_to_steps,
    _warn_ignored_settings,
    _warn_rope_base_falls_back,
)
