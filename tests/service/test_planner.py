"""The planner reproduces Megatron's and the published scaling laws' arithmetic, by hand."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from service.planner import (
    GIB,
    Plan,
    budget_flops,
    chinchilla_loss,
    compute_optimal_tokens,
    critical_batch_tokens,
    flops_per_token,
    memory_problems,
    pad_vocab,
    plan_job,
    split_warmup,
)
from service.presets import get_preset
from service.spec import ValidatedSpec, parse_spec_text, validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Qwen2-7B's shape, for the hand computations below.
H, HEADS, GROUPS, HEAD_DIM, FFN, LAYERS, VOCAB_7B = 3584, 28, 4, 128, 18944, 28, 152064
Q, KV = HEADS * HEAD_DIM, GROUPS * HEAD_DIM
# One Qwen2-7B layer: Q, K, V with biases, output projection, SwiGLU MLP, two RMSNorms.
LAYER_7B = (H * (Q + 2 * KV) + (Q + 2 * KV) + Q * H) + 3 * H * FFN + 2 * H
TRANSFORMER_7B = LAYERS * LAYER_7B + H  # + final norm
EMBEDDING_7B = VOCAB_7B * H


def job(**sections: Any) -> dict[str, Any]:
    """Qwen2-7B on one node of eight 80 GiB H100s, 4k sequences; sections replace."""
    spec: dict[str, Any] = {
        "name": "plan-test",
        "model": {"preset": "qwen2-7b"},
        "resources": {"nodes": 1, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80},
        "parallelism": {"tensor": 1, "pipeline": 1},
        "precision": "bf16",
        "recompute": "selective",
        "batch": {"micro_batch_size": 1, "global_batch_size": 64},
        "schedule": {"kind": "wsd", "warmup_tokens": 100 * 64 * 4096},
        "stages": [
            {
                "name": "pretrain",
                "tokens": 10_000 * 64 * 4096,
                "seq_length": 4096,
                "data": [{"channel": "en", "path": "s3://corpus/en", "weight": 1.0}],
            }
        ],
    }
    spec.update(copy.deepcopy(sections))
    return spec


def planned(spec: dict[str, Any], **kwargs: Any) -> tuple[ValidatedSpec, Plan]:
    validated = validate_spec(spec)
    return validated, plan_job(validated, **kwargs)


def preset_job(preset: str) -> dict[str, Any]:
    return job(model={"preset": preset}, stages=[_stage("pretrain", 4096, 10_000)])


def _stage(name: str, seq: int, steps: int, global_batch: int = 64, **extra: Any) -> dict:
    return {
        "name": name,
        "tokens": steps * global_batch * seq,
        "seq_length": seq,
        "data": [{"channel": "en", "path": "s3://corpus/en", "weight": 1.0}],
    } | extra


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("preset", "total"),
    [
        ("qwen2-0.5b", 494_032_768),
        ("qwen2-1.5b", 1_543_714_304),
        ("qwen2-7b", 7_615_616_512),
        ("qwen2-72b", 72_706_203_648),
        ("qwen2-57b-a14b", 57_408_658_944),
    ],
)
def test_plan_counts_the_published_qwen2_totals(preset: str, total: int) -> None:
    _, plan = planned(preset_job(preset))
    assert plan.params.total == total


def test_plan_counts_14_2b_active_parameters_for_qwen2_57b_a14b() -> None:
    _, plan = planned(preset_job("qwen2-57b-a14b"))
    assert plan.params.active == 14_249_270_784
    # 6ND counts the active parameters of an MoE model.
    assert plan.compute.n_for_6nd == "active"
    assert plan.compute.flops_6nd == 6 * 14_249_270_784 * plan.compute.tokens


def test_dense_model_is_all_active() -> None:
    _, plan = planned(job())
    assert plan.params.active == plan.params.total == 7_615_616_512


def test_non_embedding_excludes_the_one_tied_table() -> None:
    _, plan = planned(preset_job("qwen2-0.5b"))
    assert plan.params.embedding == 151936 * 896
    assert plan.params.non_embedding == 494_032_768 - 151936 * 896


def test_non_embedding_excludes_both_untied_tables() -> None:
    _, plan = planned(job())
    assert plan.params.non_embedding == 7_615_616_512 - 2 * VOCAB_7B * H
    assert plan.params.non_embedding == TRANSFORMER_7B


# ---------------------------------------------------------------- vocabulary


def test_vocab_pads_to_128_times_tensor_as_megatron() -> None:
    assert pad_vocab(151646, 4) == math.ceil(151646 / 512) * 512 == 152064
    assert pad_vocab(151646, 1) == math.ceil(151646 / 128) * 128 == 151680
    assert pad_vocab(151680, 1) == 151680


def test_vocab_with_few_spare_rows_warns() -> None:
    spec = job(
        tokenizer={"path": "s3://tok", "vocab_size": 151646},
        parallelism={"tensor": 4, "pipeline": 1},
    )
    _, plan = planned(spec)
    assert (plan.vocab.tokenizer, plan.vocab.padded, plan.vocab.allocated) == (
        151646,
        152064,
        152064,
    )
    assert plan.vocab.spare == 152064 - 151646 == 418
    assert any("418 spare embedding rows" in warning for warning in plan.warnings)


def test_no_spare_row_warning_when_the_tokenizer_size_is_unknown() -> None:
    spec = job()
    spec.pop("tokenizer", None)
    _, plan = planned(spec)
    assert not any("spare" in warning for warning in plan.warnings)


def test_vocab_spare_counts_extra_tokens_and_model_rows_beyond_the_padding() -> None:
    spec = job(
        model={"preset": "qwen2-0.5b"},
        tokenizer={"path": "s3://tok", "vocab_size": 148000, "extra_vocab_size": 2000},
    )
    _, plan = planned(spec)
    assert plan.vocab.padded == math.ceil((148000 + 2000) / 128) * 128
    assert plan.vocab.allocated == 151936  # the model's table is larger than the padding
    assert plan.vocab.spare == 151936 - 150000
    assert not any("spare" in warning for warning in plan.warnings)


# ---------------------------------------------------------------- weights and optimizer


def test_model_state_tp1_pp1_dp8_without_distributed_optimizer() -> None:
    _, plan = planned(job())
    # Most loaded shard: the whole transformer + embedding + untied output layer (pp == 1).
    shard = (TRANSFORMER_7B / 1 + EMBEDDING_7B + EMBEDDING_7B) / 1
    assert plan.memory.params_per_gpu == shard
    assert plan.memory.weights_and_optimizer_gib == pytest.approx(18 * shard / GIB)
    breakdown = plan.memory.breakdown
    assert breakdown.weights == pytest.approx(2 * shard / GIB)
    assert breakdown.gradients == pytest.approx(4 * shard / GIB)
    assert breakdown.optimizer_state == pytest.approx(12 * shard / GIB)


def test_model_state_tp2_pp1_dp4_with_distributed_optimizer() -> None:
    spec = job(parallelism={"tensor": 2, "pipeline": 1, "distributed_optimizer": True})
    _, plan = planned(spec)
    shard = (TRANSFORMER_7B / 1 + EMBEDDING_7B + EMBEDDING_7B) / 2
    data_parallel = 8 // 2
    assert plan.memory.weights_and_optimizer_gib == pytest.approx(
        (6 + 12 / data_parallel) * shard / GIB
    )
    assert plan.memory.breakdown.optimizer_state == pytest.approx(12 / data_parallel * shard / GIB)


def test_model_state_tp4_pp2_puts_the_untied_embedding_on_the_first_stage_only() -> None:
    spec = job(
        resources={"nodes": 2, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80},
        parallelism={"tensor": 4, "pipeline": 2, "distributed_optimizer": True},
    )
    _, plan = planned(spec)
    data_parallel = 16 // (4 * 2)
    shard = (TRANSFORMER_7B / 2 + EMBEDDING_7B) / 4
    assert plan.memory.params_per_gpu == round(shard)
    assert plan.memory.weights_and_optimizer_gib == pytest.approx(
        (6 + 12 / data_parallel) * shard / GIB
    )


def test_model_state_shards_expert_optimizer_over_expert_data_parallel_ranks() -> None:
    spec = job(
        model={"preset": "qwen2-57b-a14b"},
        parallelism={"tensor": 1, "pipeline": 1, "expert": 4, "distributed_optimizer": True},
    )
    _, plan = planned(spec)
    moe = get_preset("qwen2-57b-a14b").moe
    assert moe is not None
    routed = LAYERS * moe.num_experts * 3 * H * moe.moe_ffn_hidden_size
    embedding = 151936 * H  # 151936 is already a multiple of 128: allocated as is
    transformer_without_experts = 57_408_658_944 - 2 * embedding - routed
    dense = transformer_without_experts / 1 + embedding + embedding  # untied, pp == 1
    experts = routed / (1 * 1 * 4)  # pipeline × tensor × expert
    data_parallel, expert_data_parallel = 8, 8 // 4
    expected = 6 * (dense + experts) + 12 * (dense / data_parallel + experts / expert_data_parallel)
    assert plan.memory.weights_and_optimizer_gib == pytest.approx(expected / GIB)


def test_optimizer_offload_moves_the_state_to_host() -> None:
    spec = job(parallelism={"distributed_optimizer": True, "optimizer_offload": True})
    _, plan = planned(spec)
    shard = TRANSFORMER_7B + 2 * EMBEDDING_7B
    assert plan.memory.breakdown.optimizer_state == 0
    assert plan.memory.host.optimizer_state == pytest.approx(12 / 8 * shard / GIB)


def test_model_state_views_are_16_18_and_20_bytes_per_parameter() -> None:
    _, plan = planned(job())
    shard = TRANSFORMER_7B + 2 * EMBEDDING_7B
    views = plan.memory.model_state_views
    assert views.phi16.gib == pytest.approx(16 * shard / GIB)
    assert views.phi18.gib == pytest.approx(18 * shard / GIB)
    assert views.phi20.gib == pytest.approx(20 * shard / GIB)
    assert views.applies == "phi18"


# ---------------------------------------------------------------- activations

# Layout for the recompute modes: TP2, PP2, DP2 with sequence parallelism, micro-batch 1,
# 32 micro-batches per step (so 1F1B keeps pp micro-batches in flight: factor 1).
S, B, T, PP = 4096, 1, 2, 2
# Bytes per token of one layer (see service.planner.memory._layer_activations): 10h kept whole
# (split too under sequence parallelism), Q/K/V/output-projection inputs and SwiGLU's 8f split.
KEPT = 10 * H
SPLIT = 2 * (Q + 2 * KV) + 2 * Q + 8 * FFN
SCORES = 5 * HEADS * S  # unfused attention's softmax input/output and dropout mask
# On GPUs fused (flash) attention keeps no score matrix, so a layer's full activations are
# the same bytes selective recompute keeps; only the CPU path adds SCORES.
FULL_LAYER = S * B * (KEPT + SPLIT) / T
SELECTIVE_LAYER = S * B * (KEPT + SPLIT) / T
EMBEDDING_ACTIVATIONS = PP * S * B * (8 + H / T)  # token ids + dropout mask, pp in flight


def recompute_job(mode: str) -> dict[str, Any]:
    return job(
        parallelism={"tensor": T, "pipeline": PP, "sequence_parallel": True},
        recompute=mode,
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", LAYERS * FULL_LAYER + EMBEDDING_ACTIVATIONS),
        ("selective", LAYERS * SELECTIVE_LAYER + EMBEDDING_ACTIVATIONS),
        # One 2sbh/t input per layer, plus one layer recomputed in full during backward.
        ("full", LAYERS * 2 * S * B * H / T + EMBEDDING_ACTIVATIONS + FULL_LAYER),
        # Activations on the host; two layers on the GPU (computing, in transfer).
        ("offload", EMBEDDING_ACTIVATIONS + 2 * FULL_LAYER),
    ],
)
def test_activation_memory_of_each_recompute_mode(mode: str, expected: float) -> None:
    validated, plan = planned(recompute_job(mode))
    assert validated.derived.num_microbatches == 64 // (B * 2)
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_cpu_without_recompute_also_keeps_the_attention_scores() -> None:
    spec = recompute_job("none")
    spec["resources"] = {**spec["resources"], "gpu_type": "cpu"}
    _, plan = planned(spec)
    unfused_layer = S * B * (KEPT + SPLIT + SCORES) / T
    expected = LAYERS * unfused_layer + EMBEDDING_ACTIVATIONS
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_offload_keeps_the_activations_in_host_memory() -> None:
    _, plan = planned(recompute_job("offload"))
    assert plan.memory.host.activations == pytest.approx(LAYERS * FULL_LAYER / GIB)


def test_full_recompute_in_chunks_keeps_one_input_per_chunk() -> None:
    spec = recompute_job("full") | {"recompute": {"mode": "full", "recompute_layers": 2}}
    _, plan = planned(spec)
    expected = LAYERS / 2 * 2 * S * B * H / T + EMBEDDING_ACTIVATIONS + 2 * FULL_LAYER
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_fewer_microbatches_than_stages_scale_activations_down() -> None:
    spec = recompute_job("selective") | {"batch": {"micro_batch_size": 1, "global_batch_size": 2}}
    spec["stages"] = [_stage("pretrain", S, 10_000, global_batch=2)]
    spec["schedule"] = {"warmup_tokens": 2 * S * 10}
    validated, plan = planned(spec)
    assert validated.derived.num_microbatches == 1
    expected = (LAYERS * SELECTIVE_LAYER + EMBEDDING_ACTIVATIONS) * min(1, 1 / PP)
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_interleaved_pipeline_adds_megatrons_penalty() -> None:
    spec = recompute_job("selective")
    spec["parallelism"] |= {"virtual_pipeline": 7}
    _, plan = planned(spec)
    penalty = 1 + (PP - 1) / (PP * 7)
    expected = (LAYERS * SELECTIVE_LAYER + EMBEDDING_ACTIVATIONS) * penalty
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_single_stage_pipeline_also_holds_logits_without_sequence_parallel() -> None:
    _, plan = planned(job(parallelism={"tensor": 2, "pipeline": 1}))
    layer = S * B * (KEPT + SPLIT / T)  # without sequence parallelism the 10h stays whole
    embedding = 1 * S * B * (8 + H)
    logits = 4 * S * B * (H + VOCAB_7B / T)  # output-layer input and fp32 logits
    expected = LAYERS * layer + embedding + logits
    assert plan.memory.breakdown.activations == pytest.approx(expected / GIB)


def test_context_parallel_divides_sequence_activations() -> None:
    base = job(
        resources={"nodes": 2, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80},
        parallelism={"tensor": 2, "pipeline": 2, "sequence_parallel": True},
    )
    with_context = copy.deepcopy(base)
    with_context["parallelism"]["context"] = 2
    _, plain = planned(base)
    _, split = planned(with_context)
    assert split.memory.breakdown.activations == pytest.approx(
        plain.memory.breakdown.activations / 2
    )


def test_long_context_stage_raises_activations_and_sets_the_job_figure() -> None:
    spec = job(
        parallelism={"tensor": 4, "pipeline": 1, "sequence_parallel": True},
        stages=[_stage("pretrain", 4096, 10_000), _stage("long-context", 32768, 100)],
    )
    _, plan = planned(spec)
    short, long = plan.memory.stages
    assert (short.seq_length, long.seq_length) == (4096, 32768)
    assert long.activations_gib > 7 * short.activations_gib
    assert plan.memory.worst_stage == "long-context"
    assert plan.memory.per_gpu_gib == long.per_gpu_gib
    assert plan.memory.breakdown.activations == long.activations_gib


def test_overhead_is_a_fixed_figure_plus_a_share_of_the_rest() -> None:
    _, plan = planned(job(parallelism={"tensor": 2, "distributed_optimizer": True}))
    b = plan.memory.breakdown
    payload = b.weights + b.gradients + b.optimizer_state + b.activations
    assert b.overhead == pytest.approx(3.0 + 0.08 * payload)
    assert plan.memory.per_gpu_gib == pytest.approx(payload + b.overhead)


# ---------------------------------------------------------------- fitting


def test_qwen2_7b_on_one_node_without_distributed_optimizer_does_not_fit() -> None:
    validated, plan = planned(job())
    assert not plan.memory.fits
    assert plan.memory.utilisation == plan.memory.per_gpu_gib / 80
    [problem] = memory_problems(validated, plan)
    assert problem.loc == ["resources", "gpu_memory_gib"]
    assert problem.type == "memory"
    assert f"needs {plan.memory.per_gpu_gib:.1f} GiB of 80 GiB" in problem.msg
    optimizer = plan.memory.breakdown.optimizer_state
    assert f"mostly optimizer state ({optimizer:.1f} GiB)" in problem.msg
    assert "would fit with:" in problem.msg


def test_memory_problem_suggests_a_single_change_that_fits() -> None:
    validated, plan = planned(job(recompute="full"))
    [problem] = memory_problems(validated, plan)
    _, changed = planned(job(recompute="full", parallelism={"distributed_optimizer": True}))
    assert changed.memory.fits
    assert f"distributed_optimizer ({changed.memory.per_gpu_gib:.1f} GiB)" in problem.msg


def test_memory_problem_suggests_the_pair_when_no_single_change_fits() -> None:
    stages = [_stage("pretrain", 8192, 1000)]
    validated, plan = planned(job(stages=stages))
    [problem] = memory_problems(validated, plan)
    _, paired = planned(
        job(stages=stages, parallelism={"tensor": 2, "distributed_optimizer": True})
    )
    fixes = problem.msg.split("would fit with: ")[1]
    assert f"distributed_optimizer + tensor 2 ({paired.memory.per_gpu_gib:.1f} GiB)" in fixes
    # No single knob fits at 8k, so every suggestion pairs two.
    assert all(" + " in fix for fix in fixes.split(", "))


def test_memory_problem_lists_at_most_four_fixes_including_do_with_tp2() -> None:
    validated, plan = planned(job())
    [problem] = memory_problems(validated, plan)
    fixes = problem.msg.split("would fit with: ")[1].split(", ")
    assert 1 <= len(fixes) <= 4
    assert any(fix.startswith("distributed_optimizer + tensor 2 (") for fix in fixes)


def test_qwen2_7b_with_distributed_optimizer_and_tensor_2_fits() -> None:
    validated, plan = planned(job(parallelism={"tensor": 2, "distributed_optimizer": True}))
    assert plan.memory.fits
    assert plan.memory.per_gpu_gib <= 0.95 * 80
    assert memory_problems(validated, plan) == []


def test_allow_over_memory_gives_no_problem_but_a_warning() -> None:
    validated, plan = planned(job(allow_over_memory=True))
    assert not plan.memory.fits
    assert memory_problems(validated, plan) == []
    assert any("allow_over_memory" in warning for warning in plan.warnings)


# ---------------------------------------------------------------- compute


def test_flops_follow_megatron_with_causal_attention_halved() -> None:
    seq = 4096
    attention = H * (Q + 2 * KV) + Q * seq / 2 * 2 + Q * H
    per_token = 6 * (LAYERS * (3 * H * FFN + attention) + H * VOCAB_7B)
    assert flops_per_token(get_preset("qwen2-7b"), seq=seq, vocab_rows=VOCAB_7B) == per_token
    _, plan = planned(job())
    tokens = 10_000 * 64 * 4096
    assert plan.compute.flops == pytest.approx(per_token * tokens)
    assert plan.stages[0].flops == pytest.approx(per_token * tokens)


def test_moe_flops_count_top_k_and_the_shared_expert() -> None:
    model = get_preset("qwen2-57b-a14b")
    moe = model.moe
    assert moe is not None
    seq, vocab = 4096, 151936
    mlp = 3 * H * (moe.top_k * moe.moe_ffn_hidden_size + moe.shared_expert_ffn_hidden_size)
    attention = H * (Q + 2 * KV) + Q * seq + Q * H
    assert flops_per_token(model, seq=seq, vocab_rows=vocab) == 6 * (
        LAYERS * (mlp + attention) + H * vocab
    )


def test_time_follows_from_flops_peak_and_mfu() -> None:
    _, plan = planned(job(mfu=0.5))
    compute = plan.compute
    assert compute.peak_tflops == 989.0
    assert compute.gpu_hours == pytest.approx(compute.flops / (989e12 * 0.5) / 3600)
    assert compute.days == pytest.approx(compute.gpu_hours / 8 / 24)
    assert compute.tokens_per_second_needed == pytest.approx(
        compute.tokens / (compute.days * 86400)
    )
    assert compute.flops_6nd == 6 * 7_615_616_512 * compute.tokens


def test_seed_100_gpus_for_30_days_at_210_tflops_is_5_4e22_flops() -> None:
    assert budget_flops(100, 30, 210) == pytest.approx(100 * 30 * 86400 * 210e12)
    assert budget_flops(100, 30, 210) == pytest.approx(5.4e22, rel=0.01)
    _, plan = planned(job(mfu=210 / 989), gpus=100, days=30)
    budget = plan.inverse.tokens_for_budget
    assert budget is not None
    assert budget.tokens * plan.inverse.flops_per_token == pytest.approx(5.4e22, rel=0.01)


def test_tokens_per_day_at_the_jobs_own_size() -> None:
    _, plan = planned(job())
    expected = 8 * 989e12 * 0.4 * 86400 / plan.compute.flops_per_token
    assert plan.inverse.tokens_per_day == pytest.approx(expected)
    assert plan.inverse.tokens_for_budget is None
    assert plan.inverse.gpus_for_deadline is None


def test_gpus_for_a_deadline_round_up_to_nodes_and_model_replicas() -> None:
    spec = job(
        resources={"nodes": 2, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80},
        parallelism={"tensor": 4, "pipeline": 4},
    )
    _, plan = planned(spec, token_budget=2 * 10**12, deadline_days=30)
    deadline = plan.inverse.gpus_for_deadline
    assert deadline is not None
    exact = 2e12 * plan.compute.flops_per_token / (989e12 * 0.4 * 30 * 86400)
    assert deadline.gpus_exact == pytest.approx(exact)
    assert deadline.granularity == math.lcm(4 * 4, 8) == 16
    assert deadline.gpus == math.ceil(exact / 16) * 16
    assert deadline.nodes == deadline.gpus // 8


# ---------------------------------------------------------------- steps


def test_stage_iterations_and_warmup_per_stage() -> None:
    spec = job(
        schedule={"kind": "wsd", "warmup_tokens": 3 * 64 * 4096 + 1},
        stages=[_stage("pretrain", 4096, 1000), _stage("long-context", 16384, 50)],
    )
    _, plan = planned(spec)
    assert [(s.name, s.train_iters, s.warmup_iters) for s in plan.stages] == [
        ("pretrain", 1000, 4),  # ceil of 3 steps and one token
        ("long-context", 50, 0),
    ]
    assert [s.tokens for s in plan.stages] == [1000 * 64 * 4096, 50 * 64 * 16384]


def test_warmup_runs_on_across_a_stage_boundary() -> None:
    assert split_warmup(10, [6, 8, 5]) == [6, 4, 0]
    assert split_warmup(30, [6, 8, 5]) == [6, 8, 5]
    assert split_warmup(0, [6, 8]) == [0, 0]


# ---------------------------------------------------------------- advice


@pytest.mark.parametrize("loss", [2.0, 2.5, 3.2])
def test_minicpm_critical_batch_law(loss: float) -> None:
    assert critical_batch_tokens(loss) == pytest.approx(1.2110e9 / loss**6.2393)


def test_minicpm_critical_batch_at_loss_2_is_16_million_tokens() -> None:
    assert critical_batch_tokens(2.0) == pytest.approx(1.2110e9 / 2**6.2393)
    assert 15e6 < critical_batch_tokens(2.0) < 17e6


@pytest.mark.parametrize("flops", [1e21, 3.8e25, 6e23])
def test_llama3_compute_optimal_tokens_law(flops: float) -> None:
    assert compute_optimal_tokens(flops) == pytest.approx(0.299 * flops**0.537)


def test_llama3_law_gives_about_16_trillion_tokens_at_llama3_405b_budget() -> None:
    # The paper's flagship: 3.8e25 FLOPs, 402B parameters on 16.55T tokens.
    assert compute_optimal_tokens(3.8e25) == pytest.approx(16.5e12, rel=0.05)


def test_advice_uses_the_specs_target_loss() -> None:
    _, plan = planned(job(target_loss=2.5))
    advice = plan.advice
    assert (advice.target_loss, advice.target_loss_source) == (2.5, "spec")
    assert advice.critical_batch_tokens == pytest.approx(1.2110e9 / 2.5**6.2393)
    assert advice.batch_tokens == 64 * 4096
    assert advice.batch_ratio == pytest.approx(64 * 4096 / (1.2110e9 / 2.5**6.2393))


def test_advice_predicts_the_loss_with_chinchilla_when_none_is_given() -> None:
    _, plan = planned(job())
    tokens = 10_000 * 64 * 4096
    expected = 1.69 + 406.4 / 7_615_616_512**0.34 + 410.7 / tokens**0.28
    assert chinchilla_loss(7_615_616_512, tokens) == pytest.approx(expected)
    assert plan.advice.target_loss == pytest.approx(expected)
    assert plan.advice.target_loss_source == "chinchilla"


def test_advice_flags_a_batch_far_below_the_critical_batch() -> None:
    _, plan = planned(job(target_loss=2.0))
    assert plan.advice.batch_ratio < 0.25
    assert any("far below" in note for note in plan.advice.notes)


def test_advice_compute_optimal_budget_uses_6nd() -> None:
    _, plan = planned(job())
    c = plan.compute.flops_6nd
    assert plan.advice.compute_optimal_tokens == pytest.approx(0.299 * c**0.537)
    assert plan.advice.compute_optimal_params == pytest.approx(
        c / (6 * plan.advice.compute_optimal_tokens)
    )


def test_mixture_advice_splits_later_stages_into_general_domain_instruction() -> None:
    later = _stage("anneal", 4096, 100) | {
        "data": [
            {"channel": "web-en", "path": "s3://a", "weight": 0.5},
            {"channel": "code", "path": "s3://b", "weight": 0.2},
            {"channel": "math", "path": "s3://c", "weight": 0.2},
            {"channel": "sft_chat", "path": "s3://d", "weight": 0.1},
        ]
    }
    _, plan = planned(job(stages=[_stage("pretrain", 4096, 1000), later]))
    [split] = plan.advice.mixture_splits
    assert (split.general, split.domain, split.instruction) == pytest.approx((0.7, 0.2, 0.1))
    assert split.channels == {
        "web-en": "general",
        "code": "general",
        "math": "domain",
        "sft_chat": "instruction",
    }
    assert "near the 7 : 2 : 1" in plan.advice.mixture[0]


def test_mixture_advice_notes_a_later_stage_far_from_7_2_1() -> None:
    later = _stage("domain-boost", 4096, 100) | {
        "data": [{"channel": "legal", "path": "s3://a", "weight": 1.0}]
    }
    _, plan = planned(job(stages=[_stage("pretrain", 4096, 1000), later]))
    assert "far from 7 : 2 : 1" in plan.advice.mixture[0]


# ---------------------------------------------------------------- the whole plan


def test_plan_of_the_example_serialises_with_every_documented_key() -> None:
    validated = validate_spec(parse_spec_text((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text()))
    data = plan_job(validated, gpus=100, days=30, deadline_days=60).model_dump(mode="json")
    for path in [
        "params.total",
        "params.non_embedding",
        "params.active",
        "params.embedding",
        "vocab.tokenizer",
        "vocab.padded",
        "vocab.spare",
        "memory.per_gpu_gib",
        "memory.breakdown.weights",
        "memory.breakdown.gradients",
        "memory.breakdown.optimizer_state",
        "memory.breakdown.activations",
        "memory.breakdown.overhead",
        "memory.capacity_gib",
        "memory.utilisation",
        "memory.fits",
        "memory.stages",
        "memory.model_state_views.phi18.gib",
        "compute.flops_6nd",
        "compute.n_for_6nd",
        "compute.flops",
        "compute.gpu_hours",
        "compute.days",
        "compute.mfu",
        "compute.peak_tflops",
        "compute.tokens_per_second_needed",
        "advice.critical_batch_tokens",
        "advice.batch_tokens",
        "advice.compute_optimal_tokens",
        "advice.compute_optimal_params",
        "advice.mixture",
        "inverse.tokens_per_day",
        "inverse.tokens_for_budget.tokens",
        "inverse.gpus_for_deadline.gpus",
        "warnings",
    ]:
        node: Any = data
        for key in path.split("."):
            assert key in node, path
            node = node[key]
    assert [stage["name"] for stage in data["stages"]] == ["pretrain", "long-context", "anneal"]
    assert {"train_iters", "warmup_iters", "tokens", "seq_length", "flops"} <= set(
        data["stages"][0]
    )
    assert data["memory"]["fits"] is True


def test_tiny_cpu_example_fits_its_4_gib_processes() -> None:
    validated = validate_spec(parse_spec_text((EXAMPLES / "tiny-cpu.yaml").read_text()))
    plan = plan_job(validated)
    assert plan.memory.fits
    assert plan.memory.breakdown.overhead >= 0.5
    assert memory_problems(validated, plan) == []


def test_the_grace_period_is_a_step_plus_twice_the_checkpoint_write_within_its_bounds() -> None:
    from service.planner import (
        CHECKPOINT_BYTES_PER_PARAMETER,
        GIB,
        MAX_TERMINATION_GRACE_S,
        MIN_TERMINATION_GRACE_S,
        WRITE_GIB_PER_S_PER_NODE,
        grace_period_s,
    )

    _, plan = planned(job())
    checkpoint = plan.checkpoint
    assert checkpoint.size_gib == pytest.approx(plan.params.total * CHECKPOINT_BYTES_PER_PARAMETER / GIB)
    assert checkpoint.write_s == pytest.approx(checkpoint.per_node_gib / WRITE_GIB_PER_S_PER_NODE)
    # Qwen2-7B: ~99 GiB written by one node at 1 GiB/s, twice over, plus a step of a few seconds.
    assert checkpoint.termination_grace_s == math.ceil(checkpoint.step_s + 2 * checkpoint.write_s)
    assert 200 < checkpoint.termination_grace_s < 260
    _, spread = planned(job(resources={"nodes": 4, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80}))
    assert spread.checkpoint.per_node_gib == pytest.approx(checkpoint.size_gib / 4)
    assert grace_period_s(step_s=0.5, write_s=1.0) == MIN_TERMINATION_GRACE_S
    assert grace_period_s(step_s=10.0, write_s=10_000.0) == MAX_TERMINATION_GRACE_S
