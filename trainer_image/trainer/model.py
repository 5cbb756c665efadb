"""The model: megatron-core's GPTModel with the Llama architecture (RoPE, GQA, RMSNorm, SwiGLU).

On CPU it uses the local layer spec; on GPU the Transformer Engine spec when TE is installed.
Each pipeline stage (and virtual chunk) builds only its own layers; the chunks are wrapped
in megatron's DistributedDataParallel, which the distributed optimizer shards across ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from trainer.config import TrainerConfig
from trainer.sdpa_attention import use_sdpa_core_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def transformer_config(config: TrainerConfig) -> TransformerConfig:
    """Megatron's TransformerConfig for our Llama-style architecture and parallel layout."""
    model, parallel, precision = config.model, config.parallel, config.precision
    dtype = DTYPES[precision.dtype]
    moe = model.moe
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.hidden_size // model.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        context_parallel_size=parallel.context,
        expert_model_parallel_size=parallel.expert,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        # Grads are divided by the tokens of the whole global batch, not averaged per
        # micro-batch: every layout then computes the same update.
        calculate_per_token_loss=True,
        use_cpu_initialization=not torch.cuda.is_available(),
        num_moe_experts=moe.num_experts if moe else None,
        moe_router_topk=moe.top_k if moe else 2,
        moe_ffn_hidden_size=moe.moe_ffn_hidden_size if moe else None,
        moe_shared_expert_intermediate_size=(moe.shared_expert_ffn_hidden_size or None) if moe else None,
        moe_token_dispatcher_type="alltoall" if moe else "allgather",
        moe_grouped_gemm=False,
    )


def layer_spec(config: TrainerConfig):
    """Transformer Engine's fused layers on GPU when installed; the local spec otherwise."""
    moe = config.model.moe
    if torch.cuda.is_available():
        try:
            from megatron.core.models.gpt.gpt_layer_specs import (
                get_gpt_layer_with_transformer_engine_spec,
            )

            return get_gpt_layer_with_transformer_engine_spec(
                num_experts=moe.num_experts if moe else None, moe_grouped_gemm=False
            )
        except (ImportError, AssertionError):
            pass
    # The local spec's attention materialises the score matrix; SDPA (same numerics, same
    # parameters, so checkpoints are unchanged) is ~10% faster on CPU and O(s) in memory.
    return use_sdpa_core_attention(
        get_gpt_layer_local_spec(
            num_experts=moe.num_experts if moe else None,
            moe_grouped_gemm=False,
            normalization="RMSNorm",
        )
    )


def build_model(config: TrainerConfig, *, rope_base: float) -> list[DistributedDataParallel]:
    """One DDP-wrapped GPTModel chunk per virtual pipeline stage held by this rank."""
    tconfig = transformer_config(config)
    spec = layer_spec(config)
    chunks = config.parallel.virtual_pipeline or 1
    model_chunks = []
    for vp_stage in range(chunks):
        vp = vp_stage if config.parallel.virtual_pipeline else None
        model = GPTModel(
            config=tconfig,
            transformer_layer_spec=spec,
            vocab_size=config.model.vocab_size,
            max_sequence_length=config.model.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
            share_embeddings_and_output_weights=config.model.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(rope_base),
            vp_stage=vp,
        )
        if config.optimizer.embedding_grad_scale != 1.0:
            shrink_embedding_gradient(model, config.optimizer.embedding_grad_scale)
        if config.precision.dtype != "fp32":
            model = Float16Module(tconfig, model)
        model_chunks.append(model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
        overlap_grad_reduce=False,
    )
    return [
        DistributedDataParallel(tconfig, ddp_config, chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(model_chunks)
    ]


def unwrap(chunk: torch.nn.Module) -> GPTModel:
    """The GPTModel inside DDP and Float16Module wrappers."""
    while not isinstance(chunk, GPTModel):
        chunk = chunk.module
    return chunk


def set_rope_base(model_chunks: list[torch.nn.Module], base: float) -> None:
    """Switch every chunk's rotary embedding to `base` (the long-context stage raises it)."""
    for chunk in model_chunks:
        rotary = getattr(unwrap(chunk), "rotary_pos_emb", None)
        if rotary is not None:
            rebase_rotary(rotary, base)


def rebase_rotary(rotary: torch.nn.Module, base: float) -> None:
    """Recompute a RotaryEmbedding's inverse frequencies for a new base."""
    dim = rotary.inv_freq.numel() * 2
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=rotary.inv_freq.device) / dim
    rotary.inv_freq = 1.0 / (base**exponents)
    # RotaryEmbedding.forward is lru-cached per sequence length; stale entries keep the old base.
    type(rotary).forward.cache_clear()


def shrink_embedding_gradient(model: GPTModel, alpha: float) -> None:
    """GLM-130B's embedding-gradient shrink: forward unchanged, gradient times `alpha`."""
    if not model.pre_process:
        return

    def hook(_module, _inputs, output):
        return output * alpha + output.detach() * (1 - alpha)

    model.embedding.register_forward_hook(hook)


def flops_per_token(config: TrainerConfig, seq_length: int) -> float:
    """Megatron's num_floating_point_operations per token, the count the service's planner uses.

    3 GEMM passes (forward, weight and data gradient) × 2 (multiply-add) × the GEMM sizes:
    QKV and output projections, attention scores and scores·V over seq/2 keys (causal), the
    three SwiGLU matrices (MoE: top_k experts + shared expert), and the logits. A test holds
    it equal to `service.planner.flops_per_token`.
    """
    arch = config.model
    hidden = arch.hidden_size
    head_dim = hidden // arch.num_attention_heads
    query, kv = arch.num_attention_heads * head_dim, arch.num_query_groups * head_dim
    moe = arch.moe
    if moe is None:
        mlp = 3 * hidden * arch.ffn_hidden_size
    else:
        mlp = 3 * hidden * (moe.top_k * moe.moe_ffn_hidden_size + moe.shared_expert_ffn_hidden_size)
    attention = hidden * (query + 2 * kv) + query * seq_length + query * hidden
    return 6 * (arch.num_layers * (mlp + attention) + hidden * arch.vocab_size)
