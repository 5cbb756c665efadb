"""The cross-field rules: each yields `Problem`s naming the field to change and the numbers."""

from __future__ import annotations

import math
from collections.abc import Iterator

from service.spec.context import Context, Rule, needs_model
from service.spec.fields import (
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_PARALLEL_SIZE,
    MAX_STEPS,
)
from service.spec.model import VOCAB_PADDING_MULTIPLE
from service.spec.problems import Problem, problem
from service.spec.resources import BF16_UNSUPPORTED_GPU_TYPES, FP8_GPU_TYPES

# A stage's mixture weights sum to 1 within this.
WEIGHT_SUM_TOLERANCE = 1e-6


def _divisors(number: int, limit: int) -> str:
    """`1, 2, 4`: the divisors of number up to limit, the bound of the field they are offered for.

    A suggestion never needs a divisor above the field's bound, so the work is at most `limit`
    steps however large `number` is (enumerating up to `number` hung on 2**53).
    """
    return ", ".join(str(d) for d in range(1, min(number, limit) + 1) if number % d == 0)


def _multiples_near(value: int, step: int) -> str:
    """`96 or 112`: the multiples of step on either side of value (the upper alone if below step)."""
    lower = value // step * step
    upper = lower + step
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


@needs_model
def _hidden_divisible_by_heads(context: Context) -> Iterator[Problem]:
    model = context.model
    if model.hidden_size % model.num_attention_heads:
        yield problem(
            ["model", "hidden_size"],
            f"hidden_size {model.hidden_size} is not divisible by num_attention_heads "
            f"{model.num_attention_heads}; pick a multiple of {model.num_attention_heads} such as "
            f"{_multiples_near(model.hidden_size, model.num_attention_heads)}",
        )


@needs_model
def _heads_and_groups_divisible_by_tensor(context: Context) -> Iterator[Problem]:
    tensor = context.parallel.tensor
    for name in ("num_attention_heads", "num_query_groups"):
        count = getattr(context.model, name)
        if count % tensor:
            yield problem(
                ["parallelism", "tensor"],
                f"{name} {count} is not divisible by tensor {tensor}; every tensor rank needs whole "
                f"heads, so use a tensor size that divides {count} ({_divisors(count, max(tensor, 8))})",
            )


@needs_model
def _heads_divisible_by_query_groups(context: Context) -> Iterator[Problem]:
    model = context.model
    if model.num_attention_heads % model.num_query_groups:
        yield problem(
            ["model", "num_query_groups"],
            f"num_attention_heads {model.num_attention_heads} is not divisible by num_query_groups "
            f"{model.num_query_groups}; use one of {_divisors(model.num_attention_heads, MAX_HEADS)}",
        )


@needs_model
def _layers_split_evenly_across_pipeline(context: Context) -> Iterator[Problem]:
    layers, pipeline, virtual = (
        context.model.num_layers,
        context.parallel.pipeline,
        context.parallel.virtual_pipeline,
    )
    if layers % pipeline:
        yield problem(
            ["parallelism", "pipeline"],
            f"num_layers {layers} is not divisible by pipeline {pipeline}; use a pipeline size that "
            f"divides {layers} ({_divisors(layers, MAX_PARALLEL_SIZE)})",
        )
    elif virtual is not None and (layers // pipeline) % virtual:
        per_stage = layers // pipeline
        yield problem(
            ["parallelism", "virtual_pipeline"],
            f"each pipeline stage holds {per_stage} layers (num_layers {layers} / pipeline {pipeline}), "
            f"which do not split into virtual_pipeline {virtual} chunks; use one of "
            f"{_divisors(per_stage, MAX_PARALLEL_SIZE)}",
        )


def _virtual_pipeline_needs_pipeline(context: Context) -> Iterator[Problem]:
    pipeline, virtual = context.parallel.pipeline, context.parallel.virtual_pipeline
    if virtual is None:
        return
    # megatron-core 0.16 refuses an interleaved schedule unless pipeline > 1 (older releases: > 2).
    if pipeline < 2:
        yield problem(
            ["parallelism", "virtual_pipeline"],
            f"virtual_pipeline {virtual} interleaves pipeline stages, but pipeline is {pipeline}; "
            "set pipeline to 2 or more, or remove virtual_pipeline",
        )
        return
    microbatches = context.num_microbatches
    # The interleaved schedule runs micro-batches in groups of `pipeline`; a partial group stalls.
    if microbatches is not None and microbatches % pipeline:
        yield problem(
            ["parallelism", "virtual_pipeline"],
            f"the interleaved schedule needs the micro-batches per step ({microbatches} = "
            f"global_batch_size {context.spec.batch.global_batch_size} / (micro_batch_size "
            f"{context.spec.batch.micro_batch_size} × data_parallel {context.data_parallel})) to be a "
            f"multiple of pipeline {pipeline}; change the global batch or remove virtual_pipeline",
        )


@needs_model
def _full_recompute_divides_layers(context: Context) -> Iterator[Problem]:
    recompute = context.spec.recompute
    per_chunk = context.layers_per_model_chunk()
    if recompute.mode != "full" or recompute.recompute_layers is None or per_chunk is None:
        return
    if per_chunk % recompute.recompute_layers:
        yield problem(
            ["recompute", "recompute_layers"],
            f"recompute_layers {recompute.recompute_layers} does not divide the {per_chunk} layers of "
            f"each pipeline chunk (num_layers {context.model.num_layers} / pipeline "
            f"{context.parallel.pipeline} / virtual_pipeline {context.parallel.virtual_pipeline or 1}); "
            f"use one of {_divisors(per_chunk, MAX_LAYERS)}",
        )


def _world_splits_into_model_replicas(context: Context) -> Iterator[Problem]:
    if context.data_parallel is None:
        parallel, resources = context.parallel, context.spec.resources
        yield problem(
            ["parallelism"],
            f"world size {context.world_size} (nodes {resources.nodes} × gpus_per_node "
            f"{resources.gpus_per_node}) is not divisible by tensor {parallel.tensor} × pipeline "
            f"{parallel.pipeline} × context {parallel.context} = {context.model_parallel}; change the "
            f"parallel sizes or the GPU count so that {context.model_parallel} divides the world size",
        )


def _expert_parallel_fits(context: Context) -> Iterator[Problem]:
    expert = context.parallel.expert
    moe = context.resolved_model.moe if context.resolved_model is not None else None
    if context.resolved_model is not None and moe is None and expert > 1:
        yield problem(
            ["parallelism", "expert"],
            f"expert {expert} needs a mixture-of-experts model, but the model has no moe section; "
            "set expert to 1 or add model.moe",
        )
    if moe is not None:
        if moe.num_experts % expert:
            yield problem(
                ["parallelism", "expert"],
                f"num_experts {moe.num_experts} is not divisible by expert {expert}; use one of "
                f"{_divisors(moe.num_experts, MAX_EXPERTS)}",
            )
        if moe.top_k > moe.num_experts:
            yield problem(
                ["model", "moe", "top_k"],
                f"top_k {moe.top_k} exceeds num_experts {moe.num_experts}; a token cannot be routed to "
                "more experts than exist",
            )
    data_parallel = context.data_parallel
    # megatron-core lays experts out over tensor × expert × pipeline ranks (expert tensor size =
    # tensor), so the world size must be a multiple of that, i.e. expert | data_parallel × context.
    if (
        expert > 1
        and data_parallel is not None
        and (data_parallel * context.parallel.context) % expert
    ):
        yield problem(
            ["parallelism", "expert"],
            f"expert {expert} must divide data_parallel {data_parallel} × context "
            f"{context.parallel.context} = {data_parallel * context.parallel.context}; experts are "
            "spread over the data-parallel (and context) ranks of each model replica",
        )


def _global_batch_splits_into_microbatches(context: Context) -> Iterator[Problem]:
    batch, data_parallel = context.spec.batch, context.data_parallel
    if data_parallel is None:
        return
    per_step = batch.micro_batch_size * data_parallel
    if batch.global_batch_size % per_step:
        yield problem(
            ["batch", "global_batch_size"],
            f"global_batch_size {batch.global_batch_size} is not divisible by micro_batch_size "
            f"{batch.micro_batch_size} × data_parallel {data_parallel} = {per_step} (data_parallel = "
            f"world size {context.world_size} / {context.model_parallel} ranks per model replica); "
            f"use a multiple of {per_step} such as {_multiples_near(batch.global_batch_size, per_step)}",
        )


def _sequence_parallel_needs_tensor(context: Context) -> Iterator[Problem]:
    if context.parallel.sequence_parallel and context.parallel.tensor < 2:
        yield problem(
            ["parallelism", "sequence_parallel"],
            f"sequence_parallel shards activations across tensor ranks, but tensor is "
            f"{context.parallel.tensor}; set tensor to 2 or more, or turn sequence_parallel off",
        )


def _offload_needs_distributed_optimizer(context: Context) -> Iterator[Problem]:
    if context.parallel.optimizer_offload and not context.parallel.distributed_optimizer:
        yield problem(
            ["parallelism", "optimizer_offload"],
            "optimizer_offload moves the distributed optimizer's shards to host memory; set "
            "distributed_optimizer to true as well, or turn optimizer_offload off",
        )


def _precision_supported_by_gpu(context: Context) -> Iterator[Problem]:
    dtype, gpu_type = context.spec.precision.dtype, context.spec.resources.gpu_type
    if dtype == "fp8" and gpu_type not in FP8_GPU_TYPES:
        yield problem(
            ["precision", "dtype"],
            f"fp8 needs FP8 tensor cores (Ada, Hopper or Blackwell: {', '.join(sorted(FP8_GPU_TYPES))}); "
            f"gpu_type {gpu_type} has none, so use bf16",
        )
    if dtype == "bf16" and gpu_type in BF16_UNSUPPORTED_GPU_TYPES:
        yield problem(
            ["precision", "dtype"],
            f"gpu_type {gpu_type} has no bf16 support; use fp16 with loss scaling",
        )


@needs_model
def _sequences_fit_positions(context: Context) -> Iterator[Problem]:
    limit = context.model.max_position_embeddings
    for index, stage in enumerate(context.spec.stages):
        if stage.seq_length > limit:
            yield problem(
                ["stages", index, "seq_length"],
                f"stage {stage.name!r} seq_length {stage.seq_length} exceeds the model's "
                f"max_position_embeddings {limit}; shorten the sequences or raise "
                "model.max_position_embeddings",
            )


def _sequences_split_across_context(context: Context) -> Iterator[Problem]:
    parallel = context.parallel
    # Context parallelism cuts each sequence into 2 × context chunks (for load balance under the
    # causal mask); sequence parallelism further splits every chunk across the tensor ranks.
    reasons = []
    divisor = 1
    if parallel.context > 1:
        divisor *= 2 * parallel.context
        reasons.append(f"2 × context {parallel.context}")
    if parallel.sequence_parallel and parallel.tensor > 1:
        divisor *= parallel.tensor
        reasons.append(f"tensor {parallel.tensor} for sequence_parallel")
    if divisor == 1:
        return
    for index, stage in enumerate(context.spec.stages):
        if stage.seq_length % divisor:
            yield problem(
                ["stages", index, "seq_length"],
                f"stage {stage.name!r} seq_length {stage.seq_length} is not divisible by {divisor} "
                f"({' × '.join(reasons)}); use a multiple of {divisor} such as "
                f"{_multiples_near(stage.seq_length, divisor)}",
            )


def _stage_names_unique(context: Context) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, stage in enumerate(context.spec.stages):
        if stage.name in first_index:
            yield problem(
                ["stages", index, "name"],
                f"stage name {stage.name!r} is already used by stages[{first_index[stage.name]}]; "
                "give every stage its own name",
            )
        first_index.setdefault(stage.name, index)


def _channels_unique_within_stage(context: Context) -> Iterator[Problem]:
    for stage_index, stage in enumerate(context.spec.stages):
        first_index: dict[str, int] = {}
        for index, source in enumerate(stage.data):
            if source.channel in first_index:
                yield problem(
                    ["stages", stage_index, "data", index, "channel"],
                    f"channel {source.channel!r} appears twice in stage {stage.name!r} (also at "
                    f"data[{first_index[source.channel]}]); merge the two or rename one",
                )
            first_index.setdefault(source.channel, index)


def _benchmark_tasks_unique(context: Context) -> Iterator[Problem]:
    first_index: dict[str, int] = {}
    for index, benchmark in enumerate(context.spec.evaluation.benchmarks):
        if benchmark.task in first_index:
            yield problem(
                ["evaluation", "benchmarks", index, "task"],
                f"task {benchmark.task!r} is already evaluation.benchmarks"
                f"[{first_index[benchmark.task]}]; results are stored by task, so give each its "
                "own name",
            )
        first_index.setdefault(benchmark.task, index)


def _benchmarks_have_checkpoints(context: Context) -> Iterator[Problem]:
    evaluation = context.spec.evaluation
    chosen = evaluation.checkpoints
    if evaluation.benchmarks and chosen.every is None and not (chosen.stage_ends or chosen.final):
        yield problem(
            ["evaluation", "checkpoints"],
            "benchmarks are set but no checkpoint is chosen to score; set every, stage_ends or "
            "final",
        )


def _mixture_weights_sum_to_one(context: Context) -> Iterator[Problem]:
    for index, stage in enumerate(context.spec.stages):
        total = math.fsum(source.weight for source in stage.data)
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            terms = " + ".join(f"{source.channel} {source.weight:g}" for source in stage.data)
            yield problem(
                ["stages", index, "data"],
                f"the data weights of stage {stage.name!r} sum to {total:.6g} ({terms}), not 1; "
                "scale them so that they add up to 1",
            )


def _warmup_fits(context: Context) -> Iterator[Problem]:
    schedule, first = context.spec.schedule, context.spec.stages[0]
    if schedule.warmup_tokens >= first.tokens:
        # A warmup this long also overruns any decay; one problem says enough.
        yield problem(
            ["schedule", "warmup_tokens"],
            f"warmup_tokens {schedule.warmup_tokens} is not shorter than the first stage "
            f"{first.name!r} ({first.tokens} tokens); warm up over a small part of it, e.g. "
            f"{max(first.tokens // 100, 1)} tokens (1%)",
        )
        return
    total = sum(stage.tokens for stage in context.spec.stages)
    decay_tokens = round(schedule.decay_fraction * total)
    if schedule.kind == "wsd" and schedule.warmup_tokens + decay_tokens > total:
        yield problem(
            ["schedule", "decay_fraction"],
            f"warmup ({schedule.warmup_tokens} tokens) plus the WSD decay (decay_fraction "
            f"{schedule.decay_fraction:g} × {total} = {decay_tokens} tokens) exceed the job's {total} "
            "tokens; shorten the warmup or the decay",
        )


def _every_stage_trains_a_step(context: Context) -> Iterator[Problem]:
    batch = context.spec.batch
    for index, stage in enumerate(context.spec.stages):
        step = context.tokens_per_step(stage)
        if stage.tokens < step:
            yield problem(
                ["stages", index, "tokens"],
                f"stage {stage.name!r} has {stage.tokens} tokens, fewer than one step of "
                f"global_batch_size {batch.global_batch_size} × seq_length {stage.seq_length} = {step} "
                f"tokens; give it at least {step} tokens",
            )


def _run_within_max_steps(context: Context) -> Iterator[Problem]:
    # Every step field is bounded by MAX_STEPS; a run longer than that could not be supervised.
    total = 0
    for index, stage in enumerate(context.spec.stages):
        total += stage.tokens // context.tokens_per_step(stage)
        if total > MAX_STEPS:
            yield problem(
                ["stages", index, "tokens"],
                f"the run reaches {total} steps by the end of stage {stage.name!r}, more than "
                f"{MAX_STEPS}; train fewer tokens or raise global_batch_size or seq_length",
            )
            return


@needs_model
def _model_vocab_holds_tokenizer(context: Context) -> Iterator[Problem]:
    tokenizer = context.spec.tokenizer
    if tokenizer is None or tokenizer.vocab_size is None:
        return
    needed = tokenizer.vocab_size + tokenizer.extra_vocab_size
    if context.model.vocab_size < needed:
        padded = math.ceil(needed / VOCAB_PADDING_MULTIPLE) * VOCAB_PADDING_MULTIPLE
        yield problem(
            ["model", "vocab_size"],
            f"model vocab_size {context.model.vocab_size} is smaller than tokenizer vocab_size "
            f"{tokenizer.vocab_size} + extra_vocab_size {tokenizer.extra_vocab_size} = {needed}; raise "
            f"it to at least {needed} ({padded} keeps it a multiple of {VOCAB_PADDING_MULTIPLE})",
        )


def _min_lr_not_above_lr(context: Context) -> Iterator[Problem]:
    optimizer = context.spec.optimizer
    if optimizer.min_lr > optimizer.lr:
        yield problem(
            ["optimizer", "min_lr"],
            f"min_lr {optimizer.min_lr:g} is above lr {optimizer.lr:g}; the schedule decays from lr "
            "down to min_lr, so set min_lr at most lr (commonly lr / 10)",
        )


def _corrupt_steps_inside_their_stage(context: Context) -> Iterator[Problem]:
    # A range outside the stage that names the channel would silently inject nothing.
    first_step = 0
    for stage_index, stage in enumerate(context.spec.stages):
        last_step = first_step + stage.tokens // context.tokens_per_step(stage)
        for source_index, source in enumerate(stage.data):
            for range_index, (start, end) in enumerate(source.corrupt_steps):
                if not first_step <= start < end <= last_step:
                    yield problem(
                        ["stages", stage_index, "data", source_index, "corrupt_steps", range_index],
                        f"[{start}, {end}) is not a non-empty range inside stage {stage.name!r}, "
                        f"which trains steps [{first_step}, {last_step})",
                    )
        first_step = last_step


# Run in this order; every rule runs, so one response lists every problem.
RULES: tuple[Rule, ...] = (
    _hidden_divisible_by_heads,
    _heads_and_groups_divisible_by_tensor,
    _heads_divisible_by_query_groups,
    _layers_split_evenly_across_pipeline,
    _virtual_pipeline_needs_pipeline,
    _full_recompute_divides_layers,
    _world_splits_into_model_replicas,
    _expert_parallel_fits,
    _global_batch_splits_into_microbatches,
    _sequence_parallel_needs_tensor,
    _offload_needs_distributed_optimizer,
    _precision_supported_by_gpu,
    _sequences_fit_positions,
    _sequences_split_across_context,
    _stage_names_unique,
    _channels_unique_within_stage,
    _benchmark_tasks_unique,
    _benchmarks_have_checkpoints,
    _mixture_weights_sum_to_one,
    _warmup_fits,
    _every_stage_trains_a_step,
    _run_within_max_steps,
    _corrupt_steps_inside_their_stage,
    _model_vocab_holds_tokenizer,
    _min_lr_not_above_lr,
)
