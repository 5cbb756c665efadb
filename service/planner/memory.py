"""Memory per GPU: model state per most-loaded shard, activations per stage, overhead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from service.planner.params import Params, Vocab, kv_width, query_width
from service.presets import ModelArch
from service.spec import JobSpec, ValidatedSpec

GIB = 2**30


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
    hidden, query, kv = model.hidden_size, query_width(model), kv_width(model)
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


def estimate_memory(validated: ValidatedSpec, params: Params, vocab: Vocab) -> Memory:
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
