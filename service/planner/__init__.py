"""Before launch, from the spec alone: parameters, memory per GPU, FLOPs, time and batch advice.

Pure arithmetic over a `ValidatedSpec`: no I/O. The memory model follows Megatron-LM's
`megatron/training/theoretical_memory_usage.py` (weights and optimizer per most-loaded shard)
and Korthikanti et al. 2022 (arXiv 2205.05198, Table 2) for activations, generalised to
grouped-query attention and SwiGLU; the FLOP count follows Megatron-LM's
`num_floating_point_operations`. The advice uses published fits: Hoffmann et al. 2022
(Chinchilla loss), MiniCPM (critical batch size) and Llama 3 (compute-optimal tokens).

Modelling choices, each stated once here and used everywhere below:

- Parameters are counted exactly, with the model's `vocab_size` (the published totals);
  memory and FLOPs use the embedding rows actually allocated (`Vocab.allocated`).
- 6ND uses N = active parameters (all of them for a dense model, as Hoffmann et al. count;
  only the routed-to experts for MoE), D = tokens actually trained (whole steps).
- Megatron-core (since mid-2025, so in the 0.16 era) halves the attention-score FLOPs for the
  causal mask; `compute.flops` does too.
- Dense weights shard their optimizer state over data × context parallel ranks (megatron-core's
  `dp_cp` group); routed experts over the expert-data-parallel group, data × context / expert.
- Overhead = a fixed figure (CUDA context, NCCL communicators and buffers, cuBLAS/TE
  workspaces) plus a share of everything else for allocator fragmentation and temporaries.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.presets import ModelArch
from service.spec import (
    VOCAB_PADDING_MULTIPLE,
    JobSpec,
    Problem,
    SpecInvalid,
    ValidatedSpec,
    validate_spec,
)

GIB = 2**30
SECONDS_PER_DAY = 86_400
# A plan fits when its worst stage needs at most this share of the accelerator's memory.
FIT_FRACTION = 0.95
# Overhead rule: fixed GiB per process plus this share of weights, state and activations.
# On a GPU ~0.5-1 GiB is the CUDA context, ~1-2 GiB NCCL communicators and their buffers, and
# the rest cuBLAS / Transformer Engine workspaces; a CPU process only carries the interpreter,
# torch and gloo buffers.
OVERHEAD_FIXED_GIB = {"gpu": 3.0, "cpu": 0.5}
OVERHEAD_FRAGMENTATION = 0.08
# Bytes per parameter of mixed-precision Adam in Megatron: 16-bit weights, fp32 main gradients,
# fp32 master weights + first and second moments.
WEIGHT_BYTES, GRADIENT_BYTES, OPTIMIZER_BYTES = 2, 4, 12
# A refusal lists at most this many ways to fit, single knobs first.
MAX_SUGGESTED_FIXES = 4
# Fewer spare embedding rows than this leaves little room for tokens added in later alignment.
MIN_SPARE_VOCAB = 1000

# Hoffmann et al. 2022, approach 3: L(N, D) = E + A / N^alpha + B / D^beta.
CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28
# MiniCPM (Hu et al. 2024): critical batch size in tokens = 1.2110e9 / L^6.2393.
MINICPM_BATCH_COEFFICIENT, MINICPM_BATCH_EXPONENT = 1.2110e9, 6.2393
# Llama 3 (Dubey et al. 2024): compute-optimal training tokens N*(C) = 0.299 C^0.537.
LLAMA3_TOKENS_COEFFICIENT, LLAMA3_TOKENS_EXPONENT = 0.299, 0.537
# The spec's batch is "far" from the critical batch outside these ratios.
BATCH_RATIO_LOW, BATCH_RATIO_HIGH = 0.25, 4.0
# Continued pretraining mixes general : domain : instruction data near 7 : 2 : 1.
MIXTURE_TARGET = {"general": 0.7, "domain": 0.2, "instruction": 0.1}
MIXTURE_TOLERANCE = 0.1
INSTRUCTION_WORDS = frozenset({"instruct", "instruction", "instructions", "sft", "chat", "qa"})
GENERAL_WORDS = frozenset({"general", "web", "en", "zh", "code", "books", "book", "wiki"})
# Sequences at least this long make context parallelism worth trying when memory is short.
LONG_SEQUENCE = 8192


# ---------------------------------------------------------------- the plan


class Params(BaseModel):
    """Parameter counts, exact, with the model's vocab_size."""

    total: int = Field(description="All weights, as the released checkpoint stores them.")
    non_embedding: int = Field(description="total − input embedding − untied output layer.")
    active: int = Field(description="Weights one token passes through (MoE: top_k experts).")
    embedding: int = Field(description="Input embedding: vocab_size × hidden_size.")
    output_layer: int = Field(description="Untied output layer (0 when tied).")
    routed_experts: int = Field(description="Weights of all routed experts (0 for dense).")


class Vocab(BaseModel):
    """Tokenizer vocabulary against the embedding table."""

    tokenizer: int = Field(description="Tokens the tokenizer produces (else model vocab_size).")
    extra: int = Field(description="Tokens added on top of the tokenizer.")
    model: int = Field(description="The model's vocab_size.")
    padded: int = Field(
        description="Megatron's padding of tokenizer + extra to a multiple of 128 × tensor."
    )
    allocated: int = Field(
        description="Embedding rows allocated: the larger of model vocab_size and padded; "
        "memory and FLOPs use it."
    )
    spare: int = Field(description="Rows free for new tokens: allocated − (tokenizer + extra).")


class MemoryBreakdown(BaseModel):
    """GiB per GPU on the worst stage, by component (all on the device)."""

    weights: float = Field(description="16-bit weights: 2 bytes per parameter (fp8 too).")
    gradients: float = Field(description="fp32 main gradients: 4 bytes per parameter.")
    optimizer_state: float = Field(
        description="fp32 master weights, Adam m and v: 12 bytes per parameter, / DP when "
        "distributed; 0 when offloaded."
    )
    activations: float = Field(description="Activations of the worst stage.")
    overhead: float = Field(description="Fixed GiB + a share for fragmentation (see notes).")


class HostMemory(BaseModel):
    """GiB per process kept in host memory instead of on the GPU."""

    optimizer_state: float = Field(description="Optimizer state with optimizer_offload.")
    activations: float = Field(description="Activations with recompute mode offload.")


class StageMemory(BaseModel):
    """Memory per GPU while one training stage runs."""

    stage: str
    seq_length: int
    activations_gib: float
    overhead_gib: float
    per_gpu_gib: float
    fits: bool


class ModelStateView(BaseModel):
    """Weights, gradients and optimizer state per GPU under one bytes-per-parameter convention."""

    bytes_per_parameter: int = Field(description="Before any distributed-optimizer sharding.")
    composition: str
    gib: float


class ModelStateViews(BaseModel):
    """The 16Φ / 18Φ / 20Φ conventions of mixed-precision Adam, for this GPU's shard."""

    phi16: ModelStateView
    phi18: ModelStateView
    phi20: ModelStateView
    applies: Literal["phi16", "phi18", "phi20"]
    note: str


class Memory(BaseModel):
    """Memory per GPU: the worst stage against the accelerator's capacity."""

    per_gpu_gib: float = Field(description="Worst stage: weights + state + activations + overhead.")
    capacity_gib: float
    utilisation: float = Field(description="per_gpu_gib / capacity_gib.")
    fits: bool = Field(description=f"utilisation ≤ {FIT_FRACTION}.")
    fit_fraction: float = FIT_FRACTION
    worst_stage: str
    breakdown: MemoryBreakdown
    weights_and_optimizer_gib: float = Field(
        description="Megatron's compute_weight_and_optimizer_memory: weights + gradients + "
        "optimizer state, wherever the state lives."
    )
    params_per_gpu: int = Field(description="Parameters on the most loaded GPU's shard.")
    host: HostMemory
    stages: list[StageMemory]
    model_state_views: ModelStateViews
    notes: list[str] = Field(description="Assumptions behind the figures.")


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


class MixtureSplit(BaseModel):
    """One later stage's data mixture by kind of data."""

    stage: str
    general: float
    domain: float
    instruction: float
    channels: dict[str, Literal["general", "domain", "instruction"]]


class Advice(BaseModel):
    """What the scaling laws say about the batch size, the token budget and the mixture."""

    target_loss: float
    target_loss_source: Literal["spec", "chinchilla"]
    critical_batch_tokens: float
    batch_tokens: int = Field(description="global_batch_size × seq_length of the first stage.")
    batch_ratio: float = Field(description="batch_tokens / critical_batch_tokens.")
    compute_budget: Literal["flops_6nd"] = "flops_6nd"
    compute_optimal_tokens: float
    compute_optimal_params: float
    notes: list[str]
    mixture: list[str]
    mixture_splits: list[MixtureSplit]


class TokensForBudget(BaseModel):
    """Tokens this model can see on `gpus` for `days` at `mfu`."""

    gpus: int
    days: float
    mfu: float
    flops: float
    tokens: float


class GpusForDeadline(BaseModel):
    """GPUs needed to train `token_budget` tokens within `deadline_days`."""

    token_budget: int
    deadline_days: float
    gpus_exact: float
    gpus: int = Field(description="Rounded up to whole nodes and whole model replicas.")
    nodes: int
    granularity: int = Field(description="lcm(tensor × pipeline × context, gpus_per_node).")


class Inverse(BaseModel):
    """The plan read backwards: tokens for a budget, GPUs for a deadline."""

    flops_per_token: float = Field(description="The job's average, all stages.")
    tokens_per_day: float = Field(description="At the job's world size and mfu.")
    tokens_for_budget: TokensForBudget | None
    gpus_for_deadline: GpusForDeadline | None


class Plan(BaseModel):
    """Everything the planner works out for a spec before launch."""

    params: Params
    vocab: Vocab
    memory: Memory
    compute: Compute
    stages: list[StageEstimate]
    advice: Advice
    inverse: Inverse
    warnings: list[str]


# ---------------------------------------------------------------- scaling laws


def chinchilla_loss(params: float, tokens: float) -> float:
    """Predicted final loss, Hoffmann et al. 2022: E + A/N^α + B/D^β."""
    return (
        CHINCHILLA_E
        + CHINCHILLA_A / params**CHINCHILLA_ALPHA
        + CHINCHILLA_B / tokens**CHINCHILLA_BETA
    )


def critical_batch_tokens(loss: float) -> float:
    """MiniCPM's critical batch size in tokens for a target loss."""
    return MINICPM_BATCH_COEFFICIENT / loss**MINICPM_BATCH_EXPONENT


def compute_optimal_tokens(flops: float) -> float:
    """Llama 3's compute-optimal training tokens for a FLOP budget."""
    return LLAMA3_TOKENS_COEFFICIENT * flops**LLAMA3_TOKENS_EXPONENT


def budget_flops(gpus: int, days: float, achieved_tflops: float) -> float:
    """FLOPs that `gpus` deliver in `days` at `achieved_tflops` each."""
    return gpus * days * SECONDS_PER_DAY * achieved_tflops * 1e12


def pad_vocab(size: int, tensor: int) -> int:
    """Megatron's `_vocab_size_with_padding`: round up to a multiple of 128 × tensor."""
    multiple = VOCAB_PADDING_MULTIPLE * tensor
    return -(-size // multiple) * multiple


def split_warmup(warmup_iters: int, stage_iters: list[int]) -> list[int]:
    """Warmup steps falling in each stage, the warmup running on across stage boundaries."""
    remaining, split = warmup_iters, []
    for iters in stage_iters:
        split.append(min(iters, remaining))
        remaining -= split[-1]
    return split


# ---------------------------------------------------------------- parameters


def _attention_params(model: ModelArch) -> int:
    hidden, query, kv = model.hidden_size, _query_width(model), _kv_width(model)
    bias = query + 2 * kv if model.qkv_bias else 0
    return hidden * (query + 2 * kv) + bias + query * hidden


def _query_width(model: ModelArch) -> int:
    return model.num_attention_heads * model.head_dim


def _kv_width(model: ModelArch) -> int:
    return model.num_query_groups * model.head_dim


def _mlp_params(model: ModelArch, *, active: bool) -> tuple[int, int]:
    """(routed expert weights, all other MLP weights) of one layer: SwiGLU is 3 × h × ffn."""
    hidden, moe = model.hidden_size, model.moe
    if moe is None:
        return 0, 3 * hidden * model.ffn_hidden_size
    experts = moe.top_k if active else moe.num_experts
    routed = experts * 3 * hidden * moe.moe_ffn_hidden_size
    shared = 3 * hidden * moe.shared_expert_ffn_hidden_size
    shared_gate = hidden if moe.shared_expert_ffn_hidden_size else 0
    router = hidden * moe.num_experts
    return routed, shared + shared_gate + router


def _count_params(model: ModelArch) -> Params:
    hidden, layers = model.hidden_size, model.num_layers
    norms = 2 * hidden  # two RMSNorms per layer
    routed, other_mlp = _mlp_params(model, active=False)
    routed_active, _ = _mlp_params(model, active=True)
    layer_base = _attention_params(model) + other_mlp + norms
    embedding = model.vocab_size * hidden
    output_layer = 0 if model.tie_embeddings else embedding
    final_norm = hidden
    total = layers * (layer_base + routed) + final_norm + embedding + output_layer
    active = layers * (layer_base + routed_active) + final_norm + embedding + output_layer
    return Params(
        total=total,
        non_embedding=total - embedding - output_layer,
        active=active,
        embedding=embedding,
        output_layer=output_layer,
        routed_experts=layers * routed,
    )


def _vocab(validated: ValidatedSpec) -> Vocab:
    spec, model = validated.spec, validated.model
    tokenizer = spec.tokenizer
    size = tokenizer.vocab_size if tokenizer and tokenizer.vocab_size else model.vocab_size
    extra = tokenizer.extra_vocab_size if tokenizer else 0
    padded = pad_vocab(size + extra, spec.parallelism.tensor)
    allocated = max(model.vocab_size, padded)
    return Vocab(
        tokenizer=size,
        extra=extra,
        model=model.vocab_size,
        padded=padded,
        allocated=allocated,
        spare=allocated - size - extra,
    )


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class _ModelState:
    """Bytes of model state on the most loaded GPU."""

    dense_params: float
    expert_params: float
    weights: float
    gradients: float
    optimizer: float
    dense_shard: int
    expert_shard: int


def _model_state(validated: ValidatedSpec, params: Params, vocab: Vocab) -> _ModelState:
    """Megatron's compute_weight_and_optimizer_memory, split into parts and into dense / experts.

    The most loaded shard is the first pipeline stage: 1/pp of the transformer block (final
    norm included) plus the input embedding, plus the output layer too when it is untied and
    pp == 1 (with pp > 1 the last stage holds the output layer and is no heavier). Everything
    divides by tensor (Megatron's formula ignores the few replicated norm weights); routed
    experts also divide by expert. Parameters are exact (QKV biases included), with the
    allocated embedding rows.
    """
    spec, model = validated.spec, validated.model
    parallel = spec.parallelism
    tensor, pipeline = parallel.tensor, parallel.pipeline
    embedding = vocab.allocated * model.hidden_size
    transformer_dense = params.non_embedding - params.routed_experts
    dense = transformer_dense / pipeline + embedding
    if not model.tie_embeddings and pipeline == 1:
        dense += embedding
    dense /= tensor
    experts = params.routed_experts / (pipeline * tensor * parallel.expert)
    data_context = validated.derived.data_parallel * parallel.context
    dense_shard = data_context if parallel.distributed_optimizer else 1
    expert_shard = data_context // parallel.expert if parallel.distributed_optimizer else 1
    return _ModelState(
        dense_params=dense,
        expert_params=experts,
        weights=WEIGHT_BYTES * (dense + experts),
        gradients=GRADIENT_BYTES * (dense + experts),
        optimizer=OPTIMIZER_BYTES * (dense / dense_shard + experts / expert_shard),
        dense_shard=dense_shard,
        expert_shard=expert_shard,
    )


@dataclass(frozen=True)
class _LayerActivations:
    """Bytes of one transformer layer's activations for one micro-batch on one GPU."""

    full: float  # everything autograd keeps without recompute
    selective: float  # without the attention-score terms (recomputed)
    checkpoint: float  # the layer input, all that full recompute keeps


def _layer_activations(
    model: ModelArch,
    *,
    seq: int,
    micro_batch: int,
    tensor: int,
    context: int,
    sp: bool,
    materialised_scores: bool,
) -> _LayerActivations:
    """Korthikanti et al. Table 2, generalised to grouped-query attention and SwiGLU (bf16).

    Bytes per token of one layer, h = hidden, q = heads × head_dim, kv = groups × head_dim,
    f = ffn (Korthikanti's GPT with q = kv = h, f = 4h, GeLU gives his 34 h):
      kept whole on every tensor rank (the "10" of "10 + 24/t"):
        the two norm inputs 2h + 2h, QKV input 2h, attention dropout mask h,
        MLP (fc1) input 2h, MLP dropout mask h                                        = 10h
      split across tensor ranks:
        Q 2q, K 2kv, V 2kv, output-projection input 2q                     = 2(q + 2kv) + 2q
        SwiGLU: fc1 output gate+up 4f, silu(gate) 2f, silu × up (fc2 input) 2f       = 8f
      attention scores (unfused softmax input/output, dropout mask): 5 × heads × seq,
        split across tensor ranks, dropped by selective recompute. Only the CPU path (the local
        spec's unfused attention) materialises them; on GPUs the trainer runs Transformer
        Engine's fused (flash) attention, which keeps only per-row softmax statistics, so
        counting them there would refuse long-context jobs that fit.
    MoE: the MLP width is top_k × moe_ffn + shared_ffn (each token's activations are kept once
    per expert it is routed to, balanced routing assumed) plus the top_k routed copies of the
    MLP input, 2h each, counted with the split part.
    Sequence parallelism splits the "10h" part too; context parallelism divides every sequence
    term by context (each rank holds seq/context tokens, against the whole sequence's keys).
    Full recompute keeps the layer input, 2h per token (split by tensor with sequence parallel).
    """
    hidden, query, kv = model.hidden_size, _query_width(model), _kv_width(model)
    moe = model.moe
    if moe is None:
        mlp_width, routed_inputs = model.ffn_hidden_size, 0
    else:
        mlp_width = moe.top_k * moe.moe_ffn_hidden_size + moe.shared_expert_ffn_hidden_size
        routed_inputs = moe.top_k * 2 * hidden
    replicated = 10 * hidden / (tensor if sp else 1)
    split = (2 * (query + 2 * kv) + 2 * query + 8 * mlp_width + routed_inputs) / tensor
    scores = 5 * model.num_attention_heads * seq / tensor if materialised_scores else 0.0
    tokens = seq * micro_batch / context
    return _LayerActivations(
        full=tokens * (replicated + split + scores),
        selective=tokens * (replicated + split),
        checkpoint=tokens * 2 * hidden / (tensor if sp else 1),
    )


@dataclass(frozen=True)
class _StageActivations:
    """Bytes of activations per GPU on the device and, with recompute offload, on the host."""

    device: float
    host: float


def _stage_activations(validated: ValidatedSpec, vocab: Vocab, seq: int) -> _StageActivations:
    """Activations of the first pipeline stage, Megatron's compute_activation_memory accounting.

    The first stage holds layers/pp layers for pp in-flight micro-batches, i.e. all layers'
    worth; 1F1B with fewer micro-batches than stages scales that by num_microbatches/pp; the
    interleaved schedule by 1 + (pp − 1)/(pp × vpp). Embedding inputs (8 bytes a token id) and
    dropout mask are held for pp micro-batches as well. With pp == 1 the same GPU also holds
    the output layer's input and the fp32 logits for the cross-entropy, 4 × (h + V) per token
    (vocab split across tensor ranks). Recompute modes:
      none:      every layer's full activations;
      selective: without the attention-score terms;
      full:      one layer input per chunk of recompute_layers layers, plus one chunk's full
                 activations while it is recomputed (one micro-batch, not scaled by pipeline);
      offload:   activations go to host memory; the GPU keeps two layers' full activations
                 (the one computing and the one being copied in or out).
    """
    spec, model = validated.spec, validated.model
    parallel = spec.parallelism
    tensor, pipeline, context = parallel.tensor, parallel.pipeline, parallel.context
    sp = parallel.sequence_parallel
    micro_batch = spec.batch.micro_batch_size
    layer = _layer_activations(
        model,
        seq=seq,
        micro_batch=micro_batch,
        tensor=tensor,
        context=context,
        sp=sp,
        materialised_scores=spec.resources.gpu_type == "cpu",
    )
    layers = model.num_layers
    mode = spec.recompute.mode
    host = 0.0
    transient = 0.0
    if mode == "none":
        stored = layers * layer.full
    elif mode == "selective":
        stored = layers * layer.selective
    elif mode == "full":
        chunk = spec.recompute.recompute_layers or 1
        stored = layers / chunk * layer.checkpoint
        transient = chunk * layer.full
    else:  # offload
        stored = 0.0
        host = layers * layer.full
        transient = 2 * layer.full
    tokens = seq * micro_batch / context
    embedding = pipeline * tokens * (8 + model.hidden_size / (tensor if sp else 1))
    factor = _pipeline_factor(validated)
    device = (stored + embedding) * factor + transient
    if pipeline == 1:
        hidden_part = model.hidden_size / (tensor if sp else 1)
        device += 4 * tokens * (hidden_part + vocab.allocated / tensor)
    return _StageActivations(device=device, host=host * factor)


def _pipeline_factor(validated: ValidatedSpec) -> float:
    parallel = validated.spec.parallelism
    pipeline, virtual = parallel.pipeline, parallel.virtual_pipeline
    if virtual is not None:
        return 1 + (pipeline - 1) / (pipeline * virtual)
    if pipeline > 1:
        return min(1.0, validated.derived.num_microbatches / pipeline)
    return 1.0


def _overhead(spec: JobSpec, payload_bytes: float) -> float:
    fixed = OVERHEAD_FIXED_GIB["cpu" if spec.resources.gpu_type == "cpu" else "gpu"]
    return fixed * GIB + OVERHEAD_FRAGMENTATION * payload_bytes


def _model_state_views(state: _ModelState, spec: JobSpec) -> ModelStateViews:
    params = state.dense_params + state.expert_params
    sharded_optimizer = state.optimizer

    def view(gradient_bytes: int, composition: str) -> ModelStateView:
        gib = ((WEIGHT_BYTES + gradient_bytes) * params + sharded_optimizer) / GIB
        return ModelStateView(
            bytes_per_parameter=WEIGHT_BYTES + gradient_bytes + OPTIMIZER_BYTES,
            composition=composition,
            gib=gib,
        )

    sharding = (
        f", the 12 divided over {state.dense_shard} data×context ranks by the distributed optimizer"
        if spec.parallelism.distributed_optimizer
        else ""
    )
    note = (
        "18Φ applies and is what the breakdown counts: megatron-core keeps 16-bit weights, "
        "fp32 main gradients in its DDP buffer (grad_reduce_in_fp32, as Megatron-LM sets for "
        f"bf16) and fp32 master weights + Adam m, v{sharding}. 16Φ is the ZeRO paper's fp16 "
        "view (16-bit gradients only), a lower bound; 20Φ is what fp16 costs when gradients are "
        "reduced in 16 bits and copied to fp32 for the optimizer."
    )
    if spec.precision.dtype == "fp16":
        note += " With fp16, keep grad_reduce_in_fp32 on or expect the 20Φ figure."
    return ModelStateViews(
        phi16=view(2, "fp16 weights 2 + fp16 gradients 2 + fp32 master, m, v 12"),
        phi18=view(4, "16-bit weights 2 + fp32 main gradients 4 + fp32 master, m, v 12"),
        phi20=view(6, "fp16 weights 2 + fp16 gradients 2 + fp32 gradients 4 + master, m, v 12"),
        applies="phi18",
        note=note,
    )


def _memory(validated: ValidatedSpec, params: Params, vocab: Vocab) -> Memory:
    spec = validated.spec
    parallel = spec.parallelism
    capacity = spec.resources.gpu_memory_gib
    state = _model_state(validated, params, vocab)
    optimizer_device = 0.0 if parallel.optimizer_offload else state.optimizer
    model_state_device = state.weights + state.gradients + optimizer_device
    stages: list[StageMemory] = []
    activations_by_stage: list[_StageActivations] = []
    for stage in spec.stages:
        activations = _stage_activations(validated, vocab, stage.seq_length)
        overhead = _overhead(spec, model_state_device + activations.device)
        per_gpu = (model_state_device + activations.device + overhead) / GIB
        stages.append(
            StageMemory(
                stage=stage.name,
                seq_length=stage.seq_length,
                activations_gib=activations.device / GIB,
                overhead_gib=overhead / GIB,
                per_gpu_gib=per_gpu,
                fits=per_gpu <= FIT_FRACTION * capacity,
            )
        )
        activations_by_stage.append(activations)
    worst_index = max(range(len(stages)), key=lambda index: stages[index].per_gpu_gib)
    worst, worst_activations = stages[worst_index], activations_by_stage[worst_index]
    return Memory(
        per_gpu_gib=worst.per_gpu_gib,
        capacity_gib=capacity,
        utilisation=worst.per_gpu_gib / capacity,
        fits=worst.fits,
        worst_stage=worst.stage,
        breakdown=MemoryBreakdown(
            weights=state.weights / GIB,
            gradients=state.gradients / GIB,
            optimizer_state=optimizer_device / GIB,
            activations=worst.activations_gib,
            overhead=worst.overhead_gib,
        ),
        weights_and_optimizer_gib=(state.weights + state.gradients + state.optimizer) / GIB,
        params_per_gpu=round(state.dense_params + state.expert_params),
        host=HostMemory(
            optimizer_state=(state.optimizer - optimizer_device) / GIB,
            activations=worst_activations.host / GIB,
        ),
        stages=stages,
        model_state_views=_model_state_views(state, spec),
        notes=_memory_notes(validated),
    )


def _memory_notes(validated: ValidatedSpec) -> list[str]:
    spec = validated.spec
    fixed = OVERHEAD_FIXED_GIB["cpu" if spec.resources.gpu_type == "cpu" else "gpu"]
    notes = [
        f"overhead = {fixed:g} GiB fixed (CUDA context, NCCL buffers, workspaces) + "
        f"{OVERHEAD_FRAGMENTATION:.0%} of weights, state and activations (allocator "
        "fragmentation, temporaries)",
        "activations follow Korthikanti et al. 2022 Table 2 generalised to GQA and SwiGLU; "
        "the attention-score terms (5·heads·seq bytes a token without recompute) count only on "
        "CPU, whose unfused attention keeps them: on GPUs fused (flash) attention does not",
    ]
    if spec.precision.dtype == "fp8":
        notes.append(
            "fp8: Megatron keeps the weights in bf16 and casts per GEMM, so weights still count "
            "2 bytes a parameter; fp8 activation savings are not counted"
        )
    if spec.parallelism.optimizer_offload:
        notes.append("optimizer_offload: the optimizer state is in host memory, not counted here")
    if spec.recompute.mode == "offload":
        notes.append(
            "recompute offload: activations live in host memory; the GPU keeps two layers' "
            "worth (one computing, one in transfer)"
        )
    if validated.model.moe is not None:
        notes.append(
            "MoE: optimizer state of routed experts is sharded over data × context / expert "
            "ranks; expert activations assume balanced routing"
        )
    return notes


# ---------------------------------------------------------------- compute


def flops_per_token(model: ModelArch, *, seq: int, vocab_rows: int) -> float:
    """Megatron's num_floating_point_operations for one token at sequence length `seq`.

    3 (forward, weight-gradient and data-gradient GEMMs) × 2 (multiply-add) × the GEMM sizes:
    QKV and output projections, the attention scores QKᵀ and scores·V over seq/2 keys (the
    causal mask: megatron-core halves it since mid-2025), SwiGLU's three h × ffn matrices (MoE:
    top_k routed experts + the shared expert), and the logits over the allocated vocabulary.
    Norms, biases and the router are not counted, as in Megatron.
    """
    hidden, query, kv = model.hidden_size, _query_width(model), _kv_width(model)
    moe = model.moe
    if moe is None:
        mlp = 3 * hidden * model.ffn_hidden_size
    else:
        mlp = 3 * hidden * (moe.top_k * moe.moe_ffn_hidden_size + moe.shared_expert_ffn_hidden_size)
    attention = hidden * (query + 2 * kv) + query * seq / 2 * 2 + query * hidden
    return 6 * (model.num_layers * (mlp + attention) + hidden * vocab_rows)


def _achieved_flops_per_second(spec: JobSpec) -> float:
    peak = spec.resources.peak_tflops
    assert peak is not None  # filled from the GPU table by ResourcesSpec
    return peak * 1e12 * spec.mfu


def _stage_estimates(validated: ValidatedSpec, params: Params, vocab: Vocab) -> list[StageEstimate]:
    spec, derived = validated.spec, validated.derived
    rate = _achieved_flops_per_second(spec)
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


def _compute(validated: ValidatedSpec, params: Params, stages: list[StageEstimate]) -> Compute:
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


# ---------------------------------------------------------------- advice


def _classify_channel(name: str) -> Literal["general", "domain", "instruction"]:
    words = set(re.split(r"[-_]+", name))
    if words & INSTRUCTION_WORDS:
        return "instruction"
    if words & GENERAL_WORDS:
        return "general"
    return "domain"


def _mixture(spec: JobSpec) -> tuple[list[MixtureSplit], list[str]]:
    splits, notes = [], []
    for stage in spec.stages[1:]:
        shares = {"general": 0.0, "domain": 0.0, "instruction": 0.0}
        channels = {}
        for source in stage.data:
            kind = _classify_channel(source.channel)
            channels[source.channel] = kind
            shares[kind] += source.weight
        split = MixtureSplit(stage=stage.name, channels=channels, **shares)
        splits.append(split)
        ratio = " : ".join(f"{shares[kind] * 10:.1f}" for kind in MIXTURE_TARGET)
        far = [
            kind
            for kind, target in MIXTURE_TARGET.items()
            if abs(shares[kind] - target) > MIXTURE_TOLERANCE
        ]
        verdict = (
            f"far from 7 : 2 : 1 in {', '.join(far)}" if far else "near the 7 : 2 : 1 guideline"
        )
        notes.append(
            f"stage {stage.name!r}: general : domain : instruction = {ratio}, {verdict} for "
            "continued pretraining (channels classified by name)"
        )
    return splits, notes


def _advice(validated: ValidatedSpec, params: Params, compute: Compute) -> Advice:
    spec = validated.spec
    target = getattr(spec, "target_loss", None)
    source: Literal["spec", "chinchilla"] = "spec"
    notes = []
    if target is None:
        target = chinchilla_loss(params.active, compute.tokens)
        source = "chinchilla"
        notes.append(
            f"target loss {target:.3f} predicted by Hoffmann et al.'s fit with N = "
            f"{params.active:,} {'active' if validated.model.moe else 'total'} parameters (they "
            f"counted all parameters) and D = {compute.tokens:,} tokens; set target_loss to "
            "size the batch for another goal"
        )
    critical = critical_batch_tokens(target)
    first = spec.stages[0]
    batch = spec.batch.global_batch_size * first.seq_length
    ratio = batch / critical
    if ratio < BATCH_RATIO_LOW:
        notes.append(
            f"batch of {batch:,} tokens is {ratio:.2f}× the critical batch {critical:,.0f} "
            f"(MiniCPM, at loss {target:.3f}): far below, so more data parallelism per step would "
            "cost little in tokens"
        )
    elif ratio > BATCH_RATIO_HIGH:
        notes.append(
            f"batch of {batch:,} tokens is {ratio:.1f}× the critical batch {critical:,.0f} "
            f"(MiniCPM, at loss {target:.3f}): far above, so tokens are spent inefficiently"
        )
    optimal_tokens = compute_optimal_tokens(compute.flops_6nd)
    optimal_params = compute.flops_6nd / (6 * optimal_tokens)
    notes.append(
        f"for C = 6ND = {compute.flops_6nd:.3g} FLOPs the Llama 3 fit suggests "
        f"{optimal_tokens:.3g} tokens on {optimal_params:.3g} parameters; this job trains "
        f"{compute.tokens:.3g} tokens ({compute.tokens / optimal_tokens:.2g}×) on "
        f"{params.active:.3g} ({params.active / optimal_params:.2g}×)"
    )
    splits, mixture = _mixture(spec)
    return Advice(
        target_loss=target,
        target_loss_source=source,
        critical_batch_tokens=critical,
        batch_tokens=batch,
        batch_ratio=ratio,
        compute_optimal_tokens=optimal_tokens,
        compute_optimal_params=optimal_params,
        notes=notes,
        mixture=mixture,
        mixture_splits=splits,
    )


# ---------------------------------------------------------------- inverse questions


def _inverse(
    validated: ValidatedSpec,
    compute: Compute,
    *,
    gpus: int | None,
    days: float | None,
    token_budget: int | None,
    deadline_days: float | None,
) -> Inverse:
    spec, derived = validated.spec, validated.derived
    rate = _achieved_flops_per_second(spec)
    per_token = compute.flops_per_token
    tokens_per_day = derived.world_size * rate * SECONDS_PER_DAY / per_token
    for_budget = None
    if gpus is not None and days is not None:
        flops = budget_flops(gpus, days, rate / 1e12)
        for_budget = TokensForBudget(
            gpus=gpus, days=days, mfu=spec.mfu, flops=flops, tokens=flops / per_token
        )
    for_deadline = None
    if deadline_days is not None:
        budget = compute.tokens if token_budget is None else token_budget
        exact = budget * per_token / (rate * deadline_days * SECONDS_PER_DAY)
        parallel = spec.parallelism
        model_parallel = parallel.tensor * parallel.pipeline * parallel.context
        granularity = math.lcm(model_parallel, spec.resources.gpus_per_node)
        needed = max(granularity, math.ceil(exact / granularity) * granularity)
        for_deadline = GpusForDeadline(
            token_budget=budget,
            deadline_days=deadline_days,
            gpus_exact=exact,
            gpus=needed,
            nodes=needed // spec.resources.gpus_per_node,
            granularity=granularity,
        )
    return Inverse(
        flops_per_token=per_token,
        tokens_per_day=tokens_per_day,
        tokens_for_budget=for_budget,
        gpus_for_deadline=for_deadline,
    )


# ---------------------------------------------------------------- entry points


def plan_job(
    validated: ValidatedSpec,
    *,
    gpus: int | None = None,
    days: float | None = None,
    token_budget: int | None = None,
    deadline_days: float | None = None,
) -> Plan:
    """The plan of a validated spec; `gpus`/`days` and `deadline_days` add inverse answers."""
    for name, value in (
        ("gpus", gpus),
        ("days", days),
        ("token_budget", token_budget),
        ("deadline_days", deadline_days),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    params = _count_params(validated.model)
    vocab = _vocab(validated)
    memory = _memory(validated, params, vocab)
    stages = _stage_estimates(validated, params, vocab)
    compute = _compute(validated, params, stages)
    warnings = []
    # Without a tokenizer size the spare rows are unknown, not zero: say nothing then.
    tokenizer_known = bool(validated.spec.tokenizer and validated.spec.tokenizer.vocab_size)
    if tokenizer_known and vocab.spare < MIN_SPARE_VOCAB:
        warnings.append(
            f"only {vocab.spare} spare embedding rows ({vocab.allocated} allocated for "
            f"{vocab.tokenizer} tokenizer + {vocab.extra} extra tokens); fewer than "
            f"{MIN_SPARE_VOCAB} are left for tokens added in later alignment stages, so raise "
            f"model.vocab_size to at least {vocab.tokenizer + vocab.extra + MIN_SPARE_VOCAB} now"
        )
    if not memory.fits and validated.spec.allow_over_memory:
        warnings.append(
            f"memory estimate {memory.per_gpu_gib:.1f} GiB exceeds {FIT_FRACTION:.0%} of "
            f"{memory.capacity_gib:g} GiB; accepted because allow_over_memory is set"
        )
    return Plan(
        params=params,
        vocab=vocab,
        memory=memory,
        compute=compute,
        stages=stages,
        advice=_advice(validated, params, compute),
        inverse=_inverse(
            validated,
            compute,
            gpus=gpus,
            days=days,
            token_budget=token_budget,
            deadline_days=deadline_days,
        ),
        warnings=warnings,
    )


_COMPONENT_NAMES = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
    "overhead": "overhead",
}


def memory_problems(validated: ValidatedSpec, plan: Plan) -> list[Problem]:
    """One problem when the plan does not fit in GPU memory (unless allow_over_memory).

    The message quotes need against capacity, the biggest component, and the changes that
    would make it fit (single knobs, then the distributed optimizer paired with tensor,
    pipeline or recompute), each re-validated and re-planned at the same world size.
    """
    memory = plan.memory
    if memory.fits or validated.spec.allow_over_memory:
        return []
    breakdown = memory.breakdown.model_dump()
    biggest = max(breakdown, key=breakdown.__getitem__)
    msg = (
        f"needs {memory.per_gpu_gib:.1f} GiB of {memory.capacity_gib:g} GiB "
        f"({memory.utilisation:.0%}; at most {FIT_FRACTION:.0%} fits)"
    )
    if len(memory.stages) > 1:
        worst = next(stage for stage in memory.stages if stage.stage == memory.worst_stage)
        msg += f" in stage {worst.stage!r} (seq_length {worst.seq_length})"
    msg += f", mostly {_COMPONENT_NAMES[biggest]} ({breakdown[biggest]:.1f} GiB)"
    fixes = _fixes_that_fit(validated)
    if fixes:
        msg += "; would fit with: " + ", ".join(f"{label} ({gib:.1f} GiB)" for label, gib in fixes)
    else:
        msg += (
            "; no single change of distributed optimizer, tensor, pipeline, recompute, micro "
            "batch, optimizer offload or context fits at this world size: use more GPUs or "
            "combine several"
        )
    return [Problem(loc=["resources", "gpu_memory_gib"], msg=msg, type="memory")]


def _fixes_that_fit(validated: ValidatedSpec) -> list[tuple[str, float]]:
    spec = validated.spec
    raw = spec.model_dump(mode="json", exclude_unset=True)
    parallel = spec.parallelism
    changes: list[tuple[str, dict[str, Any]]] = []
    if not parallel.distributed_optimizer:
        changes.append(("distributed_optimizer", {"parallelism.distributed_optimizer": True}))
    changes.append((f"tensor {parallel.tensor * 2}", {"parallelism.tensor": parallel.tensor * 2}))
    changes.append(
        (f"pipeline {parallel.pipeline * 2}", {"parallelism.pipeline": parallel.pipeline * 2})
    )
    if spec.recompute.mode == "none":
        changes.append(("recompute selective", {"recompute.mode": "selective"}))
    if spec.recompute.mode in ("none", "selective"):
        changes.append(("recompute full", {"recompute.mode": "full"}))
    micro = spec.batch.micro_batch_size
    if micro > 1:
        changes.append((f"micro_batch_size {micro // 2}", {"batch.micro_batch_size": micro // 2}))
    if not parallel.optimizer_offload:
        offload = {"parallelism.optimizer_offload": True, "parallelism.distributed_optimizer": True}
        label = "optimizer_offload"
        if not parallel.distributed_optimizer:
            label = "distributed_optimizer + optimizer_offload"
        changes.append((label, offload))
    if max(stage.seq_length for stage in spec.stages) >= LONG_SEQUENCE:
        changes.append(
            (f"context {parallel.context * 2}", {"parallelism.context": parallel.context * 2})
        )
    if not parallel.distributed_optimizer:
        # The distributed optimizer costs nothing in step time, so pair it with the other knobs.
        sharded = {"parallelism.distributed_optimizer": True}
        changes += [
            (f"distributed_optimizer + {label}", {**sharded, **change})
            for label, change in changes
            if label.startswith(("tensor", "pipeline", "recompute"))
        ]
    return _fitting(raw, changes)[:MAX_SUGGESTED_FIXES]


def _fitting(raw: dict, changes: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float]]:
    fitting = []
    for label, change in changes:
        modified = copy.deepcopy(raw)
        for path, value in change.items():
            *parents, last = path.split(".")
            node = modified
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        try:
            candidate = validate_spec(modified)
        except SpecInvalid:
            continue
        params = _count_params(candidate.model)
        memory = _memory(candidate, params, _vocab(candidate))
        if memory.fits:
            fitting.append((label, memory.per_gpu_gib))
    return fitting
