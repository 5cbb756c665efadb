"""Parameter counts, exact, and the embedding rows Megatron allocates for the vocabulary."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.presets import ModelArch
from service.spec import VOCAB_PADDING_MULTIPLE, ValidatedSpec


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


def pad_vocab(size: int, tensor: int) -> int:
    """Megatron's `_vocab_size_with_padding`: round up to a multiple of 128 × tensor."""
    multiple = VOCAB_PADDING_MULTIPLE * tensor
    return -(-size // multiple) * multiple


def _attention_params(model: ModelArch) -> int:
    hidden, query, kv = model.hidden_size, query_width(model), kv_width(model)
    bias = query + 2 * kv if model.qkv_bias else 0
    return hidden * (query + 2 * kv) + bias + query * hidden


def query_width(model: ModelArch) -> int:
    return model.num_attention_heads * model.head_dim


def kv_width(model: ModelArch) -> int:
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


def count_params(model: ModelArch) -> Params:
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


def vocab_for(validated: ValidatedSpec) -> Vocab:
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
