"""FLOPs and wall-clock time: Megatron's FLOP count per stage at the job's MFU."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from service.planner.params import Params, Vocab, kv_width, query_width
from service.presets import ModelArch
from service.spec import JobSpec, ValidatedSpec

SECONDS_PER_DAY = 86_400


class StageEstimate(BaseModel):
    """Steps, tokens and compute of one stage."""

    name: str
    seq_length: int
    tokens_per_step: int
    train_iters: int
    warmup_iters: int = Field(description="Warmup steps that fall in this stage.")
    tokens: int = Field(description="Tokens trained: train_iters × tokens_per_step.")
    flops: float = Field(description="Megatron's count for this stage.")
    flops_6nd: float
    gpu_hours: float
    days: float


class Compute(BaseModel):
    """FLOPs and wall-clock time of the whole job."""

    n_for_6nd: Literal["non_embedding", "total", "active"]
    n_params_6nd: int
    tokens: int = Field(description="Tokens trained over all stages.")
    flops_6nd: float
    flops: float = Field(description="Megatron's num_floating_point_operations, all stages.")
    flops_per_token: float = Field(description="flops / tokens (all stages).")
    attention_causal_halved: bool = True
    mfu: float
    peak_tflops: float
    achieved_tflops: float = Field(description="peak_tflops × mfu per GPU.")
    gpu_hours: float
    days: float = Field(description="Wall-clock days on the job's world size.")
    tokens_per_second_needed: float = Field(
        description="Tokens per second the whole job runs at to finish in `days`."
    )


def budget_flops(gpus: int, days: float, achieved_tflops: float) -> float:
    """FLOPs that `gpus` deliver in `days` at `achieved_tflops` each."""
    return gpus * days * SECONDS_PER_DAY * achieved_tflops * 1e12


def split_warmup(warmup_iters: int, stage_iters: list[int]) -> list[int]:
    """Warmup steps falling in each stage, the warmup running on across stage boundaries."""
    remaining, split = warmup_iters, []
    for iters in stage_iters:
        split.append(min(iters, remaining))
        remaining -= split[-1]
    return split


def flops_per_token(model: ModelArch, *, seq: int, vocab_rows: int) -> float:
    """Megatron's num_floating_point_operations for one token at sequence length `seq`.

    3 (forward, weight-gradient and data-gradient GEMMs) × 2 (multiply-add) × the GEMM sizes:
    QKV and output projections, the attention scores QKᵀ and scores·V over seq/2 keys (the
    causal mask: megatron-core halves it since mid-2025), SwiGLU's three h × ffn matrices (MoE:
    top_k routed experts + the shared expert), and the logits over the allocated vocabulary.
    Norms, biases and the router are not counted, as in Megatron.
    """
    hidden, query, kv = model.hidden_size, query_width(model), kv_width(model)
    moe = model.moe
    if moe is None:
        mlp = 3 * hidden * model.ffn_hidden_size
    else:
        mlp = 3 * hidden * (moe.top_k * moe.moe_ffn_hidden_size + moe.shared_expert_ffn_hidden_size)
    attention = hidden * (query + 2 * kv) + query * seq / 2 * 2 + query * hidden
    return 6 * (model.num_layers * (mlp + attention) + hidden * vocab_rows)


def achieved_flops_per_second(spec: JobSpec) -> float:
    peak = spec.resources.peak_tflops
    assert peak is not None  # filled from the GPU table by ResourcesSpec
    return peak * 1e12 * spec.mfu


def estimate_stages(validated: ValidatedSpec, params: Params, vocab: Vocab) -> list[StageEstimate]:
    spec, derived = validated.spec, validated.derived
    rate = achieved_flops_per_second(spec)
    warmup = split_warmup(derived.warmup_iters, [stage.train_iters for stage in derived.stages])
    estimates = []
    for stage, warmup_iters in zip(derived.stages, warmup, strict=True):
        flops = (
            flops_per_token(validated.model, seq=stage.seq_length, vocab_rows=vocab.allocated)
            * stage.tokens_trained
        )
        gpu_hours = flops / rate / 3600
        estimates.append(
            StageEstimate(
                name=stage.stage,
                seq_length=stage.seq_length,
                tokens_per_step=stage.tokens_per_step,
                train_iters=stage.train_iters,
                warmup_iters=warmup_iters,
                tokens=stage.tokens_trained,
                flops=flops,
                flops_6nd=6 * params.active * stage.tokens_trained,
                gpu_hours=gpu_hours,
                days=gpu_hours / derived.world_size / 24,
            )
        )
    return estimates


def estimate_compute(validated: ValidatedSpec, params: Params, stages: list[StageEstimate]) -> Compute:
    spec = validated.spec
    tokens = sum(stage.tokens for stage in stages)
    flops = math.fsum(stage.flops for stage in stages)
    gpu_hours = math.fsum(stage.gpu_hours for stage in stages)
    days = gpu_hours / validated.derived.world_size / 24
    peak = spec.resources.peak_tflops
    assert peak is not None
    return Compute(
        n_for_6nd="active",
        n_params_6nd=params.active,
        tokens=tokens,
        flops_6nd=6 * params.active * tokens,
        flops=flops,
        flops_per_token=flops / tokens,
        mfu=spec.mfu,
        peak_tflops=peak,
        achieved_tflops=peak * spec.mfu,
        gpu_hours=gpu_hours,
        days=days,
        tokens_per_second_needed=tokens / (days * SECONDS_PER_DAY),
    )
