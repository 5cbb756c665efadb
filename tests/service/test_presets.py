"""The named architectures reproduce the published Qwen2 models, parameter for parameter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.presets import PRESETS, ModelArch, get_preset


def count_parameters(arch: ModelArch, *, active_only: bool = False) -> int:
    """Weights of a Qwen2-style decoder, counted the way Hugging Face's checkpoints store them."""
    hidden, kv_width = arch.hidden_size, arch.num_query_groups * arch.head_dim
    query_bias, kv_bias = (hidden, kv_width) if arch.qkv_bias else (0, 0)
    attention = (hidden * hidden + query_bias) + 2 * (hidden * kv_width + kv_bias) + hidden * hidden
    if arch.moe is None:
        mlp = 3 * hidden * arch.ffn_hidden_size
    else:
        moe = arch.moe
        experts = moe.top_k if active_only else moe.num_experts
        shared = 3 * hidden * moe.shared_expert_ffn_hidden_size
        shared_gate = hidden if moe.shared_expert_ffn_hidden_size else 0
        router = hidden * moe.num_experts
        mlp = experts * 3 * hidden * moe.moe_ffn_hidden_size + shared + router + shared_gate
    per_layer = attention + mlp + 2 * hidden
    embeddings = arch.vocab_size * hidden * (1 if arch.tie_embeddings else 2)
    return arch.num_layers * per_layer + embeddings + hidden


# The totals of the released checkpoints.
PUBLISHED_TOTALS = {
    "qwen2-0.5b": 494_032_768,
    "qwen2-1.5b": 1_543_714_304,
    "qwen2-7b": 7_615_616_512,
    "qwen2-72b": 72_706_203_648,
}


@pytest.mark.parametrize("name", PUBLISHED_TOTALS)
def test_dense_qwen2_presets_match_published_parameter_counts(name: str) -> None:
    assert count_parameters(get_preset(name)) == PUBLISHED_TOTALS[name]


def test_qwen2_57b_a14b_counts_57_4b_total_and_14_2b_active_parameters() -> None:
    arch = get_preset("qwen2-57b-a14b")
    # 57,408,658,944 follows from the published config.json. A figure of 57,409,215,488 also
    # circulates, but no 28-layer model with hidden size 3584 can have it: every term (each
    # layer's weights × 28, embeddings and norms as multiples of 3584 = 28 × 128) is a multiple
    # of 28, while 57,409,215,488 leaves a remainder of 16.
    assert count_parameters(arch) == 57_408_658_944
    assert 57_409_215_488 % 28 == 16
    assert count_parameters(arch, active_only=True) == 14_249_270_784


def test_qwen2_57b_a14b_has_64_experts_routing_to_8_with_a_shared_expert() -> None:
    moe = get_preset("qwen2-57b-a14b").moe
    assert moe is not None
    assert (moe.num_experts, moe.top_k) == (64, 8)
    assert (moe.moe_ffn_hidden_size, moe.shared_expert_ffn_hidden_size) == (2560, 20480)


@pytest.mark.parametrize(
    ("name", "vocab_size", "tied"),
    [
        ("qwen2-0.5b", 151936, True),
        ("qwen2-1.5b", 151936, True),
        ("qwen2-7b", 152064, False),
        ("qwen2-72b", 152064, False),
        ("qwen2-57b-a14b", 151936, False),
    ],
)
def test_qwen2_presets_carry_published_vocab_and_embedding_tying(
    name: str, vocab_size: int, tied: bool
) -> None:
    arch = get_preset(name)
    assert (arch.vocab_size, arch.tie_embeddings) == (vocab_size, tied)
    assert arch.qkv_bias is True
    assert arch.rope_base == 1_000_000.0
    assert arch.max_position_embeddings == 131072


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_splits_heads_evenly(name: str) -> None:
    arch = get_preset(name)
    assert arch.hidden_size % arch.num_attention_heads == 0
    assert arch.num_attention_heads % arch.num_query_groups == 0


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_tiny_presets_are_small_enough_for_cpu_tests(name: str) -> None:
    arch = get_preset(name)
    assert count_parameters(arch) < 3_000_000
    assert arch.max_position_embeddings == 1024


def test_tiny_moe_has_experts_and_tiny_has_none() -> None:
    assert get_preset("tiny").moe is None
    assert get_preset("tiny-moe").moe is not None


def test_get_preset_names_the_known_presets_when_the_name_is_unknown() -> None:
    with pytest.raises(KeyError, match="qwen2-7b"):
        get_preset("qwen2-8b")


def test_presets_cannot_be_modified_in_place() -> None:
    with pytest.raises(ValidationError):
        get_preset("tiny").num_layers = 8  # type: ignore[misc]
