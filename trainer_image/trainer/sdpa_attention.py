"""Core attention through `torch.nn.functional.scaled_dot_product_attention` for the local spec.

Megatron's local `DotProductAttention` materialises the [b, heads, s, s] scores: baddbmm, a
causal mask built per call, masked_fill, softmax, bmm, each with its backward. On CPU (and on
GPUs without Transformer Engine) PyTorch's SDPA does the same in one fused kernel.
`SDPACoreAttention` is a drop-in subclass: the same constructor, the same forward contract
(query [sq, b, np, hn], key/value [sk, b, ng, hn] not yet expanded to the query heads,
returning [sq, b, np·hn]), no parameters of its own, so checkpoints do not change. What it
cannot do the same way (sliding windows, softmax offsets, packed sequences) goes to the
parent's implementation.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.utils import is_layer_window_attention

__all__ = ["SDPACoreAttention", "use_sdpa_core_attention"]


class SDPACoreAttention(DotProductAttention):
    """`DotProductAttention` with the scores, mask, softmax and context fused by SDPA."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The parent divides its scale by the layer number under query-key layer scaling and
        # has its softmax multiply it back; SDPA takes the product at once.
        coeff = self.layer_number if self.config.apply_query_key_layer_scaling else 1
        self.sdpa_scale = self.softmax_scale * coeff
        self.sdpa_supported = self.softmax_offset is None and not is_layer_window_attention(
            self.config.window_size, self.config.window_attn_skip_freq, self.layer_number
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if not self.sdpa_supported or attention_bias is not None or packed_seq_params is not None:
            return super().forward(
                query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params
            )
        sq, b, heads, head_dim = query.shape
        # Key and value stay at [sk, b, ng, hn]: SDPA shares each among its group's query heads
        # (`enable_gqa`), as the parent's repeat_interleave does, without the copy.
        gqa = key.shape[2] != heads
        # Megatron's boolean mask marks what is hidden; SDPA's marks what is seen. Like the
        # parent, an explicit mask wins over the mask type, and without one a causal layer
        # masks the future (a single query, as in decoding, sees everything).
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal and sq > 1
        visible = None if attention_mask is None else ~attention_mask
        dropout = self.attention_dropout.p if self.training else 0.0
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        # Dropout draws from the tensor-parallel RNG tracker, as the parent's does.
        tracked = dropout > 0 and not self.config.sequence_parallel
        with tensor_parallel.get_cuda_rng_tracker().fork() if tracked else contextlib.nullcontext():
            context = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=visible,
                dropout_p=dropout,
                is_causal=causal,
                scale=self.sdpa_scale,
                enable_gqa=gqa,
            )
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * head_dim)


def use_sdpa_core_attention(layer_spec: ModuleSpec) -> ModuleSpec:
    """A copy of a local layer spec whose core attention is `SDPACoreAttention`.

    Only megatron's own `DotProductAttention` is replaced: a Transformer Engine spec already
    has a fused attention and comes back unchanged (as a copy).
    """
    spec = copy.deepcopy(layer_spec)
    attention = getattr(getattr(spec, "submodules", None), "self_attention", None)
    submodules = getattr(attention, "submodules", None)
    core = getattr(submodules, "core_attention", None)
    if core is DotProductAttention:
        submodules.core_attention = SDPACoreAttention
    elif isinstance(core, ModuleSpec) and core.module is DotProductAttention:
        core.module = SDPACoreAttention
    return spec
