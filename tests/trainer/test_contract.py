"""The trainer and the service agree: the FLOPs the trainer reports are the planner's."""

from __future__ import annotations

import pytest

from service.planner import flops_per_token as planner_flops_per_token
from service.presets import get_preset
from trainer.config import ModelConfig, MoEConfig, config_to_dict, example_config
from trainer.model import flops_per_token as trainer_flops_per_token


@pytest.mark.parametrize("preset", ["qwen2-0.5b", "qwen2-7b", "qwen2-57b-a14b", "tiny"])
@pytest.mark.parametrize("seq", [128, 4096])
def test_trainer_mfu_uses_the_planners_flop_count(preset, seq):
    arch = get_preset(preset)
    config = example_config()
    moe = arch.moe
    config.model = ModelConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        ffn_hidden_size=arch.ffn_hidden_size,
        vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_position_embeddings,
        moe=MoEConfig(
            num_experts=moe.num_experts,
            top_k=moe.top_k,
            moe_ffn_hidden_size=moe.moe_ffn_hidden_size,
            shared_expert_ffn_hidden_size=moe.shared_expert_ffn_hidden_size,
        )
        if moe
        else None,
    )
    assert config_to_dict(config)["model"]["num_layers"] == arch.num_layers
    expected = planner_flops_per_token(arch, seq=seq, vocab_rows=arch.vocab_size)
    assert trainer_flops_per_token(config, seq) == pytest.approx(expected, rel=1e-12)
