"""Named model architectures a job spec can start from (`model: {preset: qwen2-7b}`).

The Qwen2 entries copy the published Hugging Face `config.json` of each base model,
renamed to Megatron-core's vocabulary: num_hidden_layers → num_layers,
num_key_value_heads → num_query_groups, intermediate_size → ffn_hidden_size,
rope_theta → rope_base, rms_norm_eps → norm_eps, tie_word_embeddings → tie_embeddings,
moe_intermediate_size → moe_ffn_hidden_size,
shared_expert_intermediate_size → shared_expert_ffn_hidden_size.
The `tiny` sizes exist so that a whole job runs on a laptop CPU in seconds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt


class MoEArch(BaseModel):
    """Mixture-of-experts feed-forward layers: every layer routes to `top_k` of `num_experts`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_experts: PositiveInt = Field(description="Routed experts per MoE layer.")
    top_k: PositiveInt = Field(description="Experts each token is routed to.")
    moe_ffn_hidden_size: PositiveInt = Field(
        description="Hidden size of each routed expert's SwiGLU MLP."
    )
    shared_expert_ffn_hidden_size: NonNegativeInt = Field(
        default=0, description="Hidden size of the always-active shared expert; 0 means none."
    )


class ModelArch(BaseModel):
    """A decoder-only transformer with RoPE, RMSNorm, SwiGLU and grouped-query attention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers: PositiveInt = Field(description="Transformer layers.")
    hidden_size: PositiveInt = Field(description="Model width.")
    num_attention_heads: PositiveInt = Field(description="Query heads per layer.")
    num_query_groups: PositiveInt = Field(
        description="Key/value heads (grouped-query attention); equal to the heads for multi-head attention."
    )
    ffn_hidden_size: PositiveInt = Field(description="Hidden size of the dense SwiGLU MLP.")
    vocab_size: PositiveInt = Field(
        description="Rows of the embedding table (padded tokenizer vocabulary)."
    )
    max_position_embeddings: PositiveInt = Field(description="Longest sequence the model supports.")
    rope_base: PositiveFloat = Field(default=10000.0, description="RoPE base frequency (theta).")
    norm_eps: PositiveFloat = Field(default=1e-5, description="RMSNorm epsilon.")
    tie_embeddings: bool = Field(
        default=False, description="Share the input embedding with the output layer."
    )
    qkv_bias: bool = Field(
        default=False, description="Add a bias to the query, key and value projections."
    )
    moe: MoEArch | None = Field(
        default=None, description="Mixture-of-experts layers; null for a dense model."
    )

    @property
    def head_dim(self) -> int:
        """Width of one attention head (Megatron's kv_channels)."""
        return self.hidden_size // self.num_attention_heads


def _qwen2(**overrides: object) -> ModelArch:
    """A Qwen2 architecture: biased QKV, RoPE base 1e6, RMSNorm eps 1e-6, 128k positions."""
    family = dict(
        max_position_embeddings=131072, rope_base=1_000_000.0, norm_eps=1e-6, qkv_bias=True
    )
    return ModelArch.model_validate(family | overrides)


PRESETS: dict[str, ModelArch] = {
    # huggingface.co/Qwen/Qwen2-0.5B/blob/main/config.json
    "qwen2-0.5b": _qwen2(
        num_layers=24,
        hidden_size=896,
        num_attention_heads=14,
        num_query_groups=2,
        ffn_hidden_size=4864,
        vocab_size=151936,
        tie_embeddings=True,
    ),
    # huggingface.co/Qwen/Qwen2-1.5B/blob/main/config.json
    "qwen2-1.5b": _qwen2(
        num_layers=28,
        hidden_size=1536,
        num_attention_heads=12,
        num_query_groups=2,
        ffn_hidden_size=8960,
        vocab_size=151936,
        tie_embeddings=True,
    ),
    # huggingface.co/Qwen/Qwen2-7B/blob/main/config.json
    "qwen2-7b": _qwen2(
        num_layers=28,
        hidden_size=3584,
        num_attention_heads=28,
        num_query_groups=4,
        ffn_hidden_size=18944,
        vocab_size=152064,
    ),
    # huggingface.co/Qwen/Qwen2-72B/blob/main/config.json (the base model uses eps 1e-5)
    "qwen2-72b": _qwen2(
        num_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_query_groups=8,
        ffn_hidden_size=29568,
        vocab_size=152064,
        norm_eps=1e-5,
    ),
    # huggingface.co/Qwen/Qwen2-57B-A14B/blob/main/config.json: every layer is MoE
    # (decoder_sparse_step 1); ffn_hidden_size is kept for fidelity but no layer uses it.
    "qwen2-57b-a14b": _qwen2(
        num_layers=28,
        hidden_size=3584,
        num_attention_heads=28,
        num_query_groups=4,
        ffn_hidden_size=18944,
        vocab_size=151936,
        moe=MoEArch(
            num_experts=64, top_k=8, moe_ffn_hidden_size=2560, shared_expert_ffn_hidden_size=20480
        ),
    ),
    # About 1.8M parameters: a CPU step takes milliseconds, so tests and the demo train for real.
    "tiny": ModelArch(
        num_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=352,
        vocab_size=8192,
        max_position_embeddings=1024,
        rope_base=10000.0,
        norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
    ),
    # The tiny model with 8 small routed experts and a shared one, to exercise MoE paths on CPU.
    "tiny-moe": ModelArch(
        num_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=352,
        vocab_size=8192,
        max_position_embeddings=1024,
        rope_base=10000.0,
        norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
        moe=MoEArch(
            num_experts=8, top_k=2, moe_ffn_hidden_size=64, shared_expert_ffn_hidden_size=128
        ),
    ),
}


def get_preset(name: str) -> ModelArch:
    """The named architecture; KeyError naming the known presets when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
