"""The architecture: a preset, explicit fields or both, resolved into a ModelArch; its tokenizer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.presets import PRESETS, ModelArch, MoEArch
from service.spec.fields import (
    MAX_EXPERTS,
    MAX_FFN_HIDDEN_SIZE,
    MAX_HEADS,
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_SEQUENCE_LENGTH,
    MAX_VOCAB_SIZE,
    Flag,
    PositiveFloat,
    Section,
    SpecPath,
    integer,
)
from service.spec.problems import Problem

# Megatron pads the embedding table to a multiple of this (times the tensor size).
VOCAB_PADDING_MULTIPLE = 128


class MoESpec(Section):
    """Mixture-of-experts layers; fields left out come from the preset."""

    num_experts: integer(gt=0, le=MAX_EXPERTS) | None = Field(
        None, description="Routed experts per MoE layer."
    )
    top_k: integer(gt=0, le=MAX_EXPERTS) | None = Field(
        None, description="Experts each token is routed to."
    )
    moe_ffn_hidden_size: integer(gt=0, le=MAX_FFN_HIDDEN_SIZE) | None = Field(
        None, description="Hidden size of each routed expert's SwiGLU MLP."
    )
    shared_expert_ffn_hidden_size: integer(ge=0, le=MAX_FFN_HIDDEN_SIZE) | None = Field(
        None, description="Hidden size of the always-active shared expert; 0 means none (default)."
    )


class ModelSpec(Section):
    """A preset architecture, explicit fields, or a preset with some fields overridden."""

    preset: str | None = Field(
        None,
        description="Named architecture to start from (see service/presets.py).",
        examples=list(PRESETS),
    )
    num_layers: integer(gt=0, le=MAX_LAYERS) | None = Field(None, description="Transformer layers.")
    hidden_size: integer(gt=0, le=MAX_HIDDEN_SIZE) | None = Field(None, description="Model width.")
    num_attention_heads: integer(gt=0, le=MAX_HEADS) | None = Field(
        None, description="Query heads per layer."
    )
    num_query_groups: integer(gt=0, le=MAX_HEADS) | None = Field(
        None, description="Key/value heads (grouped-query attention); equal to the heads for MHA."
    )
    ffn_hidden_size: integer(gt=0, le=MAX_FFN_HIDDEN_SIZE) | None = Field(
        None, description="Hidden size of the dense SwiGLU MLP."
    )
    vocab_size: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="Rows of the embedding table (the padded tokenizer vocabulary)."
    )
    max_position_embeddings: integer(gt=0, le=MAX_SEQUENCE_LENGTH) | None = Field(
        None, description="Longest sequence the model supports."
    )
    rope_base: PositiveFloat | None = Field(
        None, description="RoPE base frequency (theta); default 10000."
    )
    norm_eps: PositiveFloat | None = Field(None, description="RMSNorm epsilon; default 1e-5.")
    tie_embeddings: Flag | None = Field(
        None, description="Share the input embedding with the output layer; default false."
    )
    qkv_bias: Flag | None = Field(
        None, description="Bias on the query, key and value projections; default false."
    )
    moe: MoESpec | None = Field(
        None, description="Mixture-of-experts layers; absent for a dense model."
    )


class TokenizerSpec(Section):
    """The tokenizer the data was (or will be) encoded with."""

    path: SpecPath = Field(
        description="Tokenizer location: a directory, file or URI; a local path lies under an "
        "allowed root (relative: under the data root)."
    )
    vocab_size: integer(gt=0, le=MAX_VOCAB_SIZE) | None = Field(
        None, description="Tokens the tokenizer produces."
    )
    extra_vocab_size: integer(ge=0, le=MAX_VOCAB_SIZE) = Field(
        0, description="Tokens added on top of the tokenizer (special or reserved tokens)."
    )


_REQUIRED_ARCH_FIELDS = tuple(name for name, f in ModelArch.model_fields.items() if f.is_required())
_REQUIRED_MOE_FIELDS = tuple(name for name, f in MoEArch.model_fields.items() if f.is_required())


def resolve_model(model: ModelSpec) -> tuple[ModelArch | None, list[Problem]]:
    """The preset merged with the explicit fields, or the problems that prevent it."""
    base: dict[str, Any] = {}
    if model.preset is not None:
        if model.preset not in PRESETS:
            msg = f"unknown preset {model.preset!r}; known presets: {', '.join(PRESETS)}"
            return None, [Problem(loc=["model", "preset"], msg=msg)]
        base = PRESETS[model.preset].model_dump()
    merged = base | model.model_dump(exclude={"preset", "moe"}, exclude_none=True)
    hint = f"set it, or start from a preset ({', '.join(PRESETS)})"
    problems = [
        Problem(
            loc=["model", name],
            msg=f"model.{name} is required without a preset; {hint}",
            type="missing",
        )
        for name in _REQUIRED_ARCH_FIELDS
        if name not in merged
    ]
    if model.moe is not None:
        merged["moe"] = (base.get("moe") or {}) | model.moe.model_dump(exclude_none=True)
        problems += [
            Problem(
                loc=["model", "moe", name],
                msg=f"model.moe.{name} is required: there are no preset MoE layers to take it from",
                type="missing",
            )
            for name in _REQUIRED_MOE_FIELDS
            if name not in merged["moe"]
        ]
    if problems:
        return None, problems
    return ModelArch.model_validate(merged), []
