"""Job spec parsing, per-field checks and every cross-field rule, each refused and accepted."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.spec import (
    JobSpec,
    Problem,
    SpecInvalid,
    ValidatedSpec,
    parse_spec_text,
    validate_spec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def base_spec(**sections: Any) -> dict[str, Any]:
    """A small valid job: tiny model on 8 H100s, 10 steps of 16 × 128 tokens; sections replace."""
    spec: dict[str, Any] = {
        "name": "unit-test",
        "model": {"preset": "tiny"},
        "resources": {"nodes": 1, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": 80},
        "parallelism": {"tensor": 1, "pipeline": 1},
        "precision": "bf16",
        "batch": {"micro_batch_size": 2, "global_batch_size": 16},
        "schedule": {"kind": "wsd", "warmup_tokens": 2048},
        "stages": [
            {
                "name": "pretrain",
                "tokens": 20480,
                "seq_length": 128,
                "data": [
                    {"channel": "en", "path": "embedded://en", "weight": 0.5},
                    {"channel": "code", "path": "embedded://code", "weight": 0.5},
                ],
            }
        ],
    }
    spec.update(copy.deepcopy(sections))
    return spec


def with_changes(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The spec with dotted paths set: with_changes(s, **{"parallelism.tensor": 2})."""
    spec = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value
    return spec


def problems_of(raw: Any) -> list[Problem]:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(raw)
    return caught.value.problems


def problem_at(raw: Any, loc: list[str | int]) -> Problem:
    """The one problem at loc; fails listing all problems when there is none."""
    problems = problems_of(raw)
    matching = [problem for problem in problems if problem.loc == loc]
    assert matching, f"no problem at {loc}; got {[str(p) for p in problems]}"
    return matching[0]


def assert_mentions(problem: Problem, *numbers: object) -> None:
    for number in numbers:
        assert str(number) in problem.msg, f"{number!r} missing from {problem.msg!r}"


def accepted(raw: dict[str, Any]) -> ValidatedSpec:
    try:
        return validate_spec(raw)
    except SpecInvalid as error:  # pragma: no cover - the message is the point
        pytest.fail(str(error))


# ---------------------------------------------------------------- the base and the examples


def test_base_spec_is_accepted_with_derived_numbers() -> None:
    validated = accepted(base_spec())
    derived = validated.derived
    assert (derived.world_size, derived.data_parallel, derived.num_microbatches) == (8, 8, 1)
    assert derived.stages[0].tokens_per_step == 2048
    assert derived.stages[0].train_iters == 10
    assert derived.total_train_iters == 10
    assert derived.warmup_iters == 1
    assert validated.warnings == []


def load_example(name: str) -> ValidatedSpec:
    return validate_spec(parse_spec_text((EXAMPLES / name).read_text()))


def test_tiny_cpu_example_is_a_valid_tiny_cpu_job() -> None:
    validated = load_example("tiny-cpu.yaml")
    spec = validated.spec
    assert spec.model.preset == "tiny"
    assert (spec.resources.nodes, spec.resources.gpus_per_node, spec.resources.gpu_type) == (
        1,
        2,
        "cpu",
    )
    assert spec.schedule.kind == "wsd"
    assert {source.channel for source in spec.stages[0].data} == {"code", "en", "zh"}
    assert all(
        source.path.startswith("embedded://") for stage in spec.stages for source in stage.data
    )
    assert all(stage.seq_length == 128 for stage in spec.stages)
    assert 100_000 <= sum(stage.tokens for stage in spec.stages) <= 1_000_000
    assert validated.warnings == []


def test_qwen2_7b_example_runs_pretrain_then_long_context_then_anneal() -> None:
    validated = load_example("qwen2-7b-pretrain.yaml")
    plans = validated.derived.stages
    assert [plan.stage for plan in plans] == ["pretrain", "long-context", "anneal"]
    assert plans[0].tokens_trained > 1_000_000_000_000
    assert all(10_000_000_000 <= plan.tokens_trained < 100_000_000_000 for plan in plans[1:])
    assert plans[1].seq_length == 32768
    assert plans[1].rope_base > plans[0].rope_base
    assert validated.spec.parallelism.distributed_optimizer
    assert validated.spec.recompute.mode == "selective"
    assert validated.warnings == []


# ---------------------------------------------------------------- parsing JSON and YAML


def test_json_and_yaml_texts_parse_to_the_same_mapping() -> None:
    spec = base_spec()
    from_json = parse_spec_text(json.dumps(spec))
    from_yaml = parse_spec_text(yaml.safe_dump(spec))
    assert from_json == from_yaml == spec
    accepted(from_json)


def test_bytes_are_parsed_as_utf8() -> None:
    assert parse_spec_text(json.dumps(base_spec()).encode()) == base_spec()


def test_yaml_reads_exponent_numbers_without_a_dot_as_floats() -> None:
    parsed = parse_spec_text("optimizer:\n  lr: 3e-4\nstages:\n  - tokens: 2e12\n")
    assert parsed["optimizer"]["lr"] == pytest.approx(3e-4)
    assert parsed["stages"][0]["tokens"] == 2e12


def test_yaml_token_counts_in_scientific_notation_validate_as_integers() -> None:
    text = yaml.safe_dump(base_spec()).replace("tokens: 20480", "tokens: 2.048e4")
    assert accepted(parse_spec_text(text)).spec.stages[0].tokens == 20480


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: [unclosed\n", "invalid YAML at line"),
        ('{"name": "x",', "invalid JSON at line 1"),
        ("- a\n- b\n", "not a list"),
        ("just a string", "not a string"),
        ("", "empty"),
        (b"\xff\xfe name: x", "not UTF-8"),
    ],
)
def test_unreadable_text_is_reported_at_body(text: str | bytes, fragment: str) -> None:
    with pytest.raises(SpecInvalid) as caught:
        parse_spec_text(text)
    [problem] = caught.value.problems
    assert problem.loc == ["body"]
    assert fragment in problem.msg


def test_yaml_aliases_that_expand_without_bound_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    with pytest.raises(SpecInvalid) as caught:
        parse_spec_text("\n".join(lines))
    assert caught.value.problems[0].loc == ["body"]
    assert "aliases" in caught.value.problems[0].msg


def test_yaml_anchors_may_repeat_a_mixture_across_stages() -> None:
    stages = """
stages:
  - name: pretrain
    tokens: 20480
    seq_length: 128
    data: &mixture
      - {channel: en, path: "embedded://en", weight: 0.5}
      - {channel: code, path: "embedded://code", weight: 0.5}
  - name: anneal
    tokens: 20480
    seq_length: 128
    data: *mixture
"""
    raw = {**base_spec(), **parse_spec_text(stages)}
    assert accepted(raw).spec.stages[1].data == accepted(raw).spec.stages[0].data


def test_absurdly_nested_documents_are_reported_at_body() -> None:
    with pytest.raises(SpecInvalid) as caught:
        parse_spec_text("[" * 100_000 + "]" * 100_000)
    assert caught.value.problems[0].loc == ["body"]


def test_validate_refuses_a_document_that_is_not_a_mapping() -> None:
    [problem] = problems_of(["not", "a", "mapping"])
    assert problem.loc == ["body"]


# ---------------------------------------------------------------- per-field checks


def test_rejects_unknown_top_level_key_with_its_path() -> None:
    problem = problem_at(base_spec(colour="blue"), ["colour"])
    assert problem.type == "extra_forbidden"
    assert "unknown field 'colour'" in problem.msg


def test_rejects_misspelled_nested_key_and_suggests_the_field() -> None:
    problem = problem_at(base_spec(parallelism={"tenser": 2}), ["parallelism", "tenser"])
    assert "did you mean 'tensor'?" in problem.msg


def test_rejects_unknown_key_inside_a_list_item_with_its_index() -> None:
    spec = with_changes(base_spec(), **{"stages.0.data.1.wieght": 0.5})
    problem = problem_at(spec, ["stages", 0, "data", 1, "wieght"])
    assert "did you mean 'weight'?" in problem.msg


def test_rejects_non_positive_sizes_quoting_the_value() -> None:
    problem = problem_at(
        with_changes(base_spec(), **{"batch.micro_batch_size": 0}), ["batch", "micro_batch_size"]
    )
    assert "batch.micro_batch_size should be greater than 0" in problem.msg
    assert "(got 0)" in problem.msg


def test_rejects_missing_required_sections_individually() -> None:
    raw = base_spec()
    del raw["resources"], raw["batch"]
    locs = [problem.loc for problem in problems_of(raw)]
    assert ["resources"] in locs and ["batch"] in locs


@pytest.mark.parametrize("name", ["Bad_Name", "9lives", "ends-with-", "x" * 49])
def test_rejects_names_that_cannot_become_kubernetes_names(name: str) -> None:
    problem_at(base_spec(name=name), ["name"])


def test_accepts_a_dns_style_name() -> None:
    assert accepted(base_spec(name="qwen2-7b-run3")).spec.name == "qwen2-7b-run3"


def test_rejects_a_kind_that_is_neither_pretrain_nor_tokenizer() -> None:
    problem = problem_at(base_spec(kind="finetune"), ["kind"])
    assert "pretrain" in problem.msg and "tokenizer" in problem.msg


def test_reports_precision_dtype_errors_without_pydantic_internal_segments() -> None:
    assert problem_at(base_spec(precision="bf32"), ["precision", "dtype"])
    assert problem_at(base_spec(precision={"dtype": "bf32"}), ["precision", "dtype"])


def test_rejects_a_section_given_as_a_number() -> None:
    problem = problem_at(base_spec(recompute=5), ["recompute"])
    assert "mapping" in problem.msg


def test_rejects_nan_numbers() -> None:
    problem_at(base_spec(optimizer={"lr": float("nan")}), ["optimizer", "lr"])


def test_rejects_betas_outside_zero_to_one() -> None:
    problem_at(base_spec(optimizer={"adam_beta2": 1.0}), ["optimizer", "adam_beta2"])


def test_rejects_empty_stages_and_empty_mixtures() -> None:
    problem_at(base_spec(stages=[]), ["stages"])
    problem_at(with_changes(base_spec(), **{"stages.0.data": []}), ["stages", 0, "data"])


def test_rejects_a_negative_mixture_weight() -> None:
    problem_at(
        with_changes(base_spec(), **{"stages.0.data.0.weight": -0.5}),
        ["stages", 0, "data", 0, "weight"],
    )


def test_gpu_type_is_case_insensitive_and_defaults_peak_tflops() -> None:
    spec = accepted(with_changes(base_spec(), **{"resources.gpu_type": "h100"})).spec
    assert spec.resources.gpu_type == "H100"
    assert spec.resources.peak_tflops == 989.0


def test_rejects_an_unknown_gpu_type_listing_known_ones() -> None:
    problem = problem_at(
        with_changes(base_spec(), **{"resources.gpu_type": "X100"}), ["resources", "gpu_type"]
    )
    assert "'H100'" in problem.msg


# ---------------------------------------------------------------- shapes and defaults


def test_precision_accepts_the_plain_string_and_the_mapping() -> None:
    assert accepted(base_spec(precision="fp16")).spec.precision.dtype == "fp16"
    spec = accepted(
        base_spec(precision={"dtype": "fp16", "loss_scale": {"initial_scale": 4096}})
    ).spec
    assert spec.precision.loss_scale.initial_scale == 4096


def test_fp16_loss_scale_has_sane_defaults() -> None:
    loss_scale = accepted(base_spec(precision="fp16")).spec.precision.loss_scale
    assert loss_scale.initial_scale == 65536
    assert loss_scale.min_scale == 1
    assert loss_scale.growth_interval == 1000
    assert loss_scale.hysteresis == 2
    assert loss_scale.backoff_factor == 0.5


def test_recompute_accepts_the_plain_string_and_the_mapping() -> None:
    assert accepted(base_spec(recompute="selective")).spec.recompute.mode == "selective"
    spec = accepted(base_spec(recompute={"mode": "full", "recompute_layers": 2})).spec
    assert (spec.recompute.mode, spec.recompute.recompute_layers) == ("full", 2)


def test_optional_sections_take_documented_defaults() -> None:
    spec = accepted(base_spec()).spec
    assert (spec.optimizer.lr, spec.optimizer.min_lr, spec.optimizer.weight_decay) == (
        3e-4,
        3e-5,
        0.1,
    )
    assert (spec.optimizer.adam_beta1, spec.optimizer.adam_beta2, spec.optimizer.adam_eps) == (
        0.9,
        0.95,
        1e-8,
    )
    assert (
        spec.optimizer.clip_grad,
        spec.optimizer.z_loss,
        spec.optimizer.embedding_grad_scale,
    ) == (1.0, 0.0, 1.0)
    assert spec.schedule.decay_fraction == 0.1
    assert spec.eval.samples_per_channel == 200
    assert spec.watchdog.spike_threshold == 0.15
    assert spec.watchdog.drop_threshold == 0.25
    assert spec.watchdog.rollback == "auto"
    assert spec.watchdog.max_rollbacks == 3
    assert (spec.allow_over_memory, spec.mfu) == (False, 0.4)
    assert spec.stages[0].lr_scale == 1.0


def test_job_spec_json_schema_documents_every_field() -> None:
    schema = JobSpec.model_json_schema()
    undocumented = [
        f"{model_name}.{field}"
        for model_name, definition in {"JobSpec": schema, **schema["$defs"]}.items()
        for field, field_schema in definition.get("properties", {}).items()
        if "description" not in field_schema
    ]
    assert undocumented == []
    assert {"enum": ["bf16", "fp16", "fp8"], "type": "string"} in schema["properties"]["precision"][
        "anyOf"
    ]


# ---------------------------------------------------------------- model resolution


def test_preset_fields_can_be_overridden() -> None:
    spec = with_changes(
        base_spec(),
        **{
            "model.max_position_embeddings": 4096,
            "stages.0.seq_length": 2048,
            "stages.0.tokens": 16 * 2048 * 2,
        },
    )
    model = accepted(spec).model
    assert model.max_position_embeddings == 4096
    assert model.hidden_size == 128


def test_moe_preset_fields_can_be_overridden_one_by_one() -> None:
    spec = base_spec(model={"preset": "tiny-moe", "moe": {"top_k": 1}})
    moe = accepted(spec).model.moe
    assert moe is not None and (moe.top_k, moe.num_experts) == (1, 8)


def test_explicit_architecture_without_preset_is_accepted_with_defaults() -> None:
    model = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_query_groups": 4,
        "ffn_hidden_size": 176,
        "vocab_size": 512,
        "max_position_embeddings": 256,
    }
    resolved = accepted(base_spec(model=model)).model
    assert (resolved.rope_base, resolved.tie_embeddings, resolved.qkv_bias) == (
        10000.0,
        False,
        False,
    )


def test_rejects_missing_architecture_fields_without_preset_one_by_one() -> None:
    problems = problems_of(base_spec(model={"hidden_size": 128}))
    missing = {problem.loc[-1] for problem in problems if problem.loc[:1] == ["model"]}
    assert missing == {
        "num_layers",
        "num_attention_heads",
        "num_query_groups",
        "ffn_hidden_size",
        "vocab_size",
        "max_position_embeddings",
    }
    assert all(problem.type == "missing" for problem in problems)


def test_rejects_incomplete_moe_on_a_dense_preset() -> None:
    problems = problems_of(base_spec(model={"preset": "tiny", "moe": {"num_experts": 4}}))
    assert {tuple(problem.loc) for problem in problems} == {
        ("model", "moe", "top_k"),
        ("model", "moe", "moe_ffn_hidden_size"),
    }


def test_rejects_unknown_preset_listing_known_ones() -> None:
    problem = problem_at(base_spec(model={"preset": "qwen2-8b"}), ["model", "preset"])
    assert "qwen2-7b" in problem.msg and "tiny" in problem.msg


# ---------------------------------------------------------------- rule 1: hidden / heads


def test_rejects_hidden_size_not_divisible_by_heads() -> None:
    problem = problem_at(
        base_spec(model={"preset": "tiny", "hidden_size": 130}), ["model", "hidden_size"]
    )
    assert_mentions(problem, 130, 4, 128, 132)


def test_accepts_hidden_size_divisible_by_heads() -> None:
    accepted(base_spec(model={"preset": "tiny", "hidden_size": 132}))


# ---------------------------------------------------------------- rule 2: heads, groups / tensor


def test_rejects_heads_not_divisible_by_tensor() -> None:
    spec = base_spec(
        model={"preset": "tiny", "hidden_size": 192, "num_attention_heads": 6},
        parallelism={"tensor": 4},
    )
    problems = [p for p in problems_of(spec) if p.loc == ["parallelism", "tensor"]]
    heads = next(p for p in problems if "num_attention_heads" in p.msg)
    assert_mentions(heads, 6, "tensor 4")


def test_rejects_query_groups_not_divisible_by_tensor() -> None:
    spec = base_spec(model={"preset": "tiny", "num_attention_heads": 8}, parallelism={"tensor": 4})
    [problem] = problems_of(spec)
    assert problem.loc == ["parallelism", "tensor"]
    assert_mentions(problem, "num_query_groups 2", "tensor 4")


def test_accepts_heads_and_groups_divisible_by_tensor() -> None:
    accepted(base_spec(parallelism={"tensor": 2}))


# ---------------------------------------------------------------- rule 3: heads / groups


def test_rejects_heads_not_divisible_by_query_groups() -> None:
    problem = problem_at(
        base_spec(model={"preset": "tiny", "num_query_groups": 3}), ["model", "num_query_groups"]
    )
    assert_mentions(problem, "num_attention_heads 4", "num_query_groups 3")


def test_accepts_multi_head_attention_with_groups_equal_to_heads() -> None:
    accepted(base_spec(model={"preset": "tiny", "num_query_groups": 4}))


# ---------------------------------------------------------------- rule 4: layers / pipeline, virtual pipeline


def six_gpus(spec: dict[str, Any]) -> dict[str, Any]:
    return with_changes(spec, **{"resources.gpus_per_node": 6, "batch.global_batch_size": 24})


def test_rejects_layers_not_divisible_by_pipeline() -> None:
    problem = problem_at(
        six_gpus(base_spec(parallelism={"pipeline": 3})), ["parallelism", "pipeline"]
    )
    assert_mentions(problem, "num_layers 4", "pipeline 3")


def test_accepts_layers_divisible_by_pipeline() -> None:
    assert accepted(base_spec(parallelism={"pipeline": 4})).derived.data_parallel == 2


def test_rejects_layers_per_stage_not_divisible_by_virtual_pipeline() -> None:
    spec = base_spec(parallelism={"pipeline": 2, "virtual_pipeline": 4})
    problem = problem_at(spec, ["parallelism", "virtual_pipeline"])
    assert_mentions(problem, "2 layers", "virtual_pipeline 4")


def test_accepts_layers_per_stage_divisible_by_virtual_pipeline() -> None:
    accepted(base_spec(parallelism={"pipeline": 2, "virtual_pipeline": 2}))


def test_rejects_virtual_pipeline_without_pipeline() -> None:
    problem = problem_at(
        base_spec(parallelism={"virtual_pipeline": 2}), ["parallelism", "virtual_pipeline"]
    )
    assert_mentions(problem, "pipeline is 1")


def test_rejects_interleaving_when_microbatches_are_not_a_multiple_of_pipeline() -> None:
    spec = base_spec(
        parallelism={"pipeline": 2, "virtual_pipeline": 2},
        batch={"micro_batch_size": 2, "global_batch_size": 24},
    )
    problem = problem_at(spec, ["parallelism", "virtual_pipeline"])
    assert_mentions(problem, "3 = global_batch_size 24", "pipeline 2")


# ---------------------------------------------------------------- rule 5: full recompute


def test_rejects_recompute_layers_not_dividing_layers_per_stage() -> None:
    problem = problem_at(
        base_spec(recompute={"mode": "full", "recompute_layers": 3}),
        ["recompute", "recompute_layers"],
    )
    assert_mentions(problem, "recompute_layers 3", "4 layers")


def test_rejects_recompute_layers_not_dividing_layers_per_virtual_chunk() -> None:
    spec = base_spec(
        parallelism={"pipeline": 2, "virtual_pipeline": 2},
        recompute={"mode": "full", "recompute_layers": 2},
    )
    assert_mentions(problem_at(spec, ["recompute", "recompute_layers"]), "the 1 layers")


def test_accepts_recompute_layers_dividing_layers_per_stage() -> None:
    accepted(base_spec(recompute={"mode": "full", "recompute_layers": 2}))


# ---------------------------------------------------------------- rule 6: world / model parallel


def test_rejects_world_size_not_divisible_by_model_parallel_size() -> None:
    spec = with_changes(base_spec(parallelism={"pipeline": 4}), **{"resources.gpus_per_node": 6})
    problem = problem_at(spec, ["parallelism"])
    assert_mentions(problem, "world size 6", "nodes 1", "gpus_per_node 6", "= 4")


def test_accepts_world_size_divisible_by_model_parallel_size() -> None:
    spec = with_changes(
        base_spec(parallelism={"tensor": 2, "pipeline": 2}), **{"resources.nodes": 2}
    )
    assert accepted(spec).derived.data_parallel == 4


# ---------------------------------------------------------------- rule 7: experts


def test_rejects_expert_parallel_on_a_dense_model() -> None:
    problem = problem_at(base_spec(parallelism={"expert": 2}), ["parallelism", "expert"])
    assert_mentions(problem, "expert 2", "moe")


def test_rejects_experts_not_divisible_by_expert_parallel() -> None:
    spec = six_gpus(base_spec(model={"preset": "tiny-moe"}, parallelism={"expert": 3}))
    [problem] = problems_of(spec)
    assert problem.loc == ["parallelism", "expert"]
    assert_mentions(problem, "num_experts 8", "expert 3")


def test_rejects_expert_parallel_not_dividing_data_parallel_times_context() -> None:
    spec = base_spec(
        model={"preset": "tiny-moe"}, parallelism={"tensor": 2, "pipeline": 2, "expert": 4}
    )
    [problem] = problems_of(spec)
    assert problem.loc == ["parallelism", "expert"]
    assert_mentions(problem, "expert 4", "data_parallel 2", "context 1")


def test_accepts_expert_parallel_dividing_experts_and_data_parallel() -> None:
    accepted(
        base_spec(
            model={"preset": "tiny-moe"}, parallelism={"tensor": 2, "pipeline": 2, "expert": 2}
        )
    )


def test_rejects_top_k_above_the_number_of_experts() -> None:
    problem = problem_at(
        base_spec(model={"preset": "tiny-moe", "moe": {"top_k": 9}}), ["model", "moe", "top_k"]
    )
    assert_mentions(problem, "top_k 9", "num_experts 8")


# ---------------------------------------------------------------- rule 8: global batch


def test_rejects_global_batch_not_divisible_by_micro_batch_times_data_parallel() -> None:
    problem = problem_at(
        base_spec(batch={"micro_batch_size": 2, "global_batch_size": 20}),
        ["batch", "global_batch_size"],
    )
    assert_mentions(
        problem, "global_batch_size 20", "micro_batch_size 2", "data_parallel 8", "= 16", "16 or 32"
    )


def test_accepts_global_batch_divisible_by_micro_batch_times_data_parallel() -> None:
    assert (
        accepted(
            base_spec(batch={"micro_batch_size": 2, "global_batch_size": 32})
        ).derived.num_microbatches
        == 2
    )


# ---------------------------------------------------------------- rule 9: sequence parallel


def test_rejects_sequence_parallel_without_tensor_parallel() -> None:
    problem = problem_at(
        base_spec(parallelism={"sequence_parallel": True}), ["parallelism", "sequence_parallel"]
    )
    assert_mentions(problem, "tensor is 1")


def test_accepts_sequence_parallel_with_tensor_parallel() -> None:
    accepted(base_spec(parallelism={"tensor": 2, "sequence_parallel": True}))


# ---------------------------------------------------------------- rule 10: optimizer offload


def test_rejects_optimizer_offload_without_distributed_optimizer() -> None:
    problem_at(
        base_spec(parallelism={"optimizer_offload": True}), ["parallelism", "optimizer_offload"]
    )


def test_accepts_optimizer_offload_with_distributed_optimizer() -> None:
    accepted(base_spec(parallelism={"optimizer_offload": True, "distributed_optimizer": True}))


# ---------------------------------------------------------------- rule 11: precision and GPU


@pytest.mark.parametrize("gpu_type", ["A100", "V100", "cpu"])
def test_rejects_fp8_on_a_gpu_without_fp8(gpu_type: str) -> None:
    spec = with_changes(base_spec(precision="fp8"), **{"resources.gpu_type": gpu_type})
    assert_mentions(problem_at(spec, ["precision", "dtype"]), f"gpu_type {gpu_type}", "H100")


@pytest.mark.parametrize("gpu_type", ["H100", "H200", "H800", "H20", "L40S", "B200"])
def test_accepts_fp8_on_hopper_ada_and_blackwell(gpu_type: str) -> None:
    accepted(with_changes(base_spec(precision="fp8"), **{"resources.gpu_type": gpu_type}))


def test_rejects_bf16_on_v100() -> None:
    spec = with_changes(base_spec(precision="bf16"), **{"resources.gpu_type": "V100"})
    assert_mentions(problem_at(spec, ["precision", "dtype"]), "V100", "fp16")


# ---------------------------------------------------------------- rule 12: sequence length


def test_rejects_seq_length_beyond_max_position_embeddings() -> None:
    spec = with_changes(
        base_spec(), **{"stages.0.seq_length": 2048, "stages.0.tokens": 16 * 2048 * 4}
    )
    problem = problem_at(spec, ["stages", 0, "seq_length"])
    assert_mentions(problem, "seq_length 2048", "max_position_embeddings 1024")


def test_accepts_seq_length_equal_to_max_position_embeddings() -> None:
    accepted(
        with_changes(base_spec(), **{"stages.0.seq_length": 1024, "stages.0.tokens": 16 * 1024 * 4})
    )


# ---------------------------------------------------------------- rule 13: mixture weights


def test_rejects_mixture_weights_not_summing_to_one() -> None:
    spec = with_changes(base_spec(), **{"stages.0.data.1.weight": 0.4})
    problem = problem_at(spec, ["stages", 0, "data"])
    assert_mentions(problem, "sum to 0.9", "en 0.5", "code 0.4")


def test_accepts_mixture_weights_summing_to_one_within_tolerance() -> None:
    accepted(
        with_changes(
            base_spec(),
            **{"stages.0.data.0.weight": 0.3333333, "stages.0.data.1.weight": 0.6666667},
        )
    )


# ---------------------------------------------------------------- rule 14: warmup


def test_rejects_warmup_not_shorter_than_first_stage() -> None:
    problem = problem_at(
        base_spec(schedule={"warmup_tokens": 20480}), ["schedule", "warmup_tokens"]
    )
    assert_mentions(problem, "warmup_tokens 20480", "'pretrain'", "20480 tokens")


def test_accepts_warmup_shorter_than_first_stage() -> None:
    assert accepted(base_spec(schedule={"warmup_tokens": 4096})).derived.warmup_iters == 2


def test_rejects_warmup_and_wsd_decay_that_overlap() -> None:
    spec = base_spec(schedule={"kind": "wsd", "warmup_tokens": 18432, "decay_fraction": 0.5})
    problem = problem_at(spec, ["schedule", "decay_fraction"])
    assert_mentions(problem, "18432", "10240", "20480")


# ---------------------------------------------------------------- rule 15: at least one step per stage


def test_rejects_a_stage_shorter_than_one_step() -> None:
    problem = problem_at(
        with_changes(base_spec(), **{"stages.0.tokens": 2000}), ["stages", 0, "tokens"]
    )
    assert_mentions(problem, "2000 tokens", "global_batch_size 16", "seq_length 128", "= 2048")


def test_accepts_a_stage_of_exactly_one_step() -> None:
    spec = with_changes(base_spec(schedule={"warmup_tokens": 0}), **{"stages.0.tokens": 2048})
    assert accepted(spec).derived.stages[0].train_iters == 1


def test_warns_when_stage_tokens_are_not_a_whole_number_of_steps() -> None:
    validated = accepted(with_changes(base_spec(), **{"stages.0.tokens": 20580}))
    [warning] = validated.warnings
    assert warning.loc == ["stages", 0, "tokens"]
    assert warning.type == "warning"
    assert_mentions(warning, "20580", "10 steps = 20480 tokens", "11 steps = 22528 tokens")
    assert validated.derived.stages[0].tokens_trained == 20480


# ---------------------------------------------------------------- further rules


def test_rejects_model_vocab_smaller_than_tokenizer_vocab_plus_extra() -> None:
    spec = base_spec(tokenizer={"path": "tok", "vocab_size": 8100, "extra_vocab_size": 200})
    problem = problem_at(spec, ["model", "vocab_size"])
    assert_mentions(problem, "vocab_size 8192", "8100", "extra_vocab_size 200", "= 8300", "8320")


def test_accepts_model_vocab_holding_tokenizer_vocab_plus_extra() -> None:
    accepted(base_spec(tokenizer={"path": "tok", "vocab_size": 8000, "extra_vocab_size": 192}))


def test_rejects_seq_length_not_divisible_by_twice_the_context_parallel_size() -> None:
    spec = with_changes(
        base_spec(parallelism={"context": 2}),
        **{"stages.0.seq_length": 130, "stages.0.tokens": 16 * 130 * 10},
    )
    problem = problem_at(spec, ["stages", 0, "seq_length"])
    assert_mentions(problem, "seq_length 130", "divisible by 4", "2 × context 2")


def test_accepts_seq_length_divisible_by_twice_the_context_parallel_size() -> None:
    accepted(base_spec(parallelism={"context": 2}))


def test_rejects_seq_length_not_divisible_by_tensor_under_sequence_parallel() -> None:
    spec = with_changes(
        base_spec(parallelism={"tensor": 2, "sequence_parallel": True}),
        **{"stages.0.seq_length": 129, "stages.0.tokens": 16 * 129 * 10},
    )
    assert_mentions(problem_at(spec, ["stages", 0, "seq_length"]), "tensor 2 for sequence_parallel")


def test_rejects_duplicate_stage_names() -> None:
    spec = base_spec()
    spec["stages"].append(copy.deepcopy(spec["stages"][0]))
    problem = problem_at(spec, ["stages", 1, "name"])
    assert_mentions(problem, "'pretrain'", "stages[0]")


def test_accepts_distinct_stage_names() -> None:
    spec = base_spec()
    spec["stages"].append({**copy.deepcopy(spec["stages"][0]), "name": "anneal"})
    assert accepted(spec).derived.total_train_iters == 20


def test_rejects_duplicate_channels_within_a_stage() -> None:
    spec = with_changes(base_spec(), **{"stages.0.data.1.channel": "en"})
    problem = problem_at(spec, ["stages", 0, "data", 1, "channel"])
    assert_mentions(problem, "'en'", "data[0]")


def test_accepts_the_same_channel_in_different_stages() -> None:
    spec = base_spec()
    spec["stages"].append({**copy.deepcopy(spec["stages"][0]), "name": "anneal"})
    accepted(spec)


def test_rejects_min_lr_above_lr() -> None:
    problem = problem_at(base_spec(optimizer={"lr": 1e-4, "min_lr": 2e-4}), ["optimizer", "min_lr"])
    assert_mentions(problem, "0.0002", "0.0001")


def test_accepts_min_lr_equal_to_lr() -> None:
    accepted(base_spec(optimizer={"lr": 1e-4, "min_lr": 1e-4}))


# ---------------------------------------------------------------- all problems at once


def test_reports_every_cross_field_problem_together() -> None:
    spec = base_spec(
        model={"preset": "tiny", "hidden_size": 130},
        parallelism={"sequence_parallel": True, "optimizer_offload": True},
        batch={"micro_batch_size": 2, "global_batch_size": 20},
        schedule={"warmup_tokens": 10**9},
        optimizer={"min_lr": 1.0},
    )
    spec["stages"][0]["data"][0]["weight"] = 0.1
    locs = [problem.loc for problem in problems_of(spec)]
    assert locs == [
        ["model", "hidden_size"],
        ["batch", "global_batch_size"],
        ["parallelism", "sequence_parallel"],
        ["parallelism", "optimizer_offload"],
        ["stages", 0, "data"],
        ["schedule", "warmup_tokens"],
        ["optimizer", "min_lr"],
    ]


def test_reports_every_field_problem_together() -> None:
    spec = base_spec(batch={"micro_batch_size": 0, "global_batch_size": -1}, extra=1)
    locs = {tuple(problem.loc) for problem in problems_of(spec)}
    assert locs == {("batch", "micro_batch_size"), ("batch", "global_batch_size"), ("extra",)}


def test_spec_invalid_message_summarises_every_problem() -> None:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(base_spec(parallelism={"sequence_parallel": True, "optimizer_offload": True}))
    text = str(caught.value)
    assert "2 problems" in text
    assert "parallelism.sequence_parallel:" in text and "parallelism.optimizer_offload:" in text
    assert caught.value.status_code == 422


# ---------------------------------------------------------------- warnings for settings that do nothing


def test_warns_that_loss_scale_is_ignored_without_fp16() -> None:
    validated = accepted(
        base_spec(precision={"dtype": "bf16", "loss_scale": {"initial_scale": 1024}})
    )
    assert [warning.loc for warning in validated.warnings] == [["precision", "loss_scale"]]


def test_warns_that_decay_settings_are_ignored_without_wsd() -> None:
    validated = accepted(
        base_spec(schedule={"kind": "cosine", "warmup_tokens": 2048, "decay_shape": "cosine"})
    )
    assert [warning.loc for warning in validated.warnings] == [["schedule", "decay_shape"]]


def test_warns_when_a_later_stage_falls_back_to_a_smaller_rope_base() -> None:
    spec = base_spec()
    spec["stages"][0]["rope_base"] = 1_000_000
    spec["stages"].append({**copy.deepcopy(spec["stages"][0]), "name": "anneal", "rope_base": None})
    validated = accepted(spec)
    [warning] = validated.warnings
    assert warning.loc == ["stages", 1, "rope_base"]
    assert_mentions(warning, "10000", "1e+06")
    assert [plan.rope_base for plan in validated.derived.stages] == [1_000_000, 10_000]


# ---------------------------------------------------------------- fault injection


def test_demo_example_injects_garbage_into_one_channel_and_says_so() -> None:
    validated = load_example("demo.yaml")
    corrupt = {s.channel: s.corrupt_steps for s in validated.spec.stages[0].data}
    assert corrupt == {"code": [], "en": [(60, 76)], "zh": []}
    (warning,) = [w for w in validated.warnings if w.loc[-1] == "corrupt_steps"]
    assert warning.loc == ["stages", 0, "data", 1, "corrupt_steps"]
    assert "'en'" in warning.msg and "[60, 76)" in warning.msg and "on purpose" in warning.msg


def test_corrupt_steps_outside_their_stage_are_refused_with_the_stage_steps() -> None:
    spec = base_spec()  # one stage of 10 steps
    spec["stages"][0]["data"][0]["corrupt_steps"] = [[2, 4], [8, 12]]
    problem = problem_at(spec, ["stages", 0, "data", 0, "corrupt_steps", 1])
    assert_mentions(problem, "[8, 12)", "'pretrain'", "[0, 10)")
    assert all(p.loc[-1] != 0 for p in problems_of(spec) if "corrupt_steps" in p.loc)


def test_corrupt_steps_of_a_later_stage_count_from_its_first_step() -> None:
    stage = copy.deepcopy(base_spec()["stages"][0])
    spec = base_spec(stages=[stage, {**copy.deepcopy(stage), "name": "anneal"}])
    spec["stages"][1]["data"][1]["corrupt_steps"] = [[5, 7]]
    problem = problem_at(spec, ["stages", 1, "data", 1, "corrupt_steps", 0])
    assert_mentions(problem, "[10, 20)")
    spec["stages"][1]["data"][1]["corrupt_steps"] = [[12, 14]]
    assert accepted(spec).spec.stages[1].data[1].corrupt_steps == [(12, 14)]


@pytest.mark.parametrize("bounds", [[5, 5], [6, 3], [-1, 2], [1], [1, 2, 3], ["a", 2]])
def test_malformed_corrupt_steps_are_refused_at_the_field(bounds) -> None:
    spec = base_spec()
    spec["stages"][0]["data"][0]["corrupt_steps"] = [bounds]
    problems = problems_of(spec)
    assert problems and all(p.loc[:5] == ["stages", 0, "data", 0, "corrupt_steps"] for p in problems)


def test_a_keep_last_too_short_for_a_rollback_to_find_its_checkpoint_is_warned() -> None:
    spec = base_spec(
        checkpoint={"interval_steps": 10, "keep_last": 2},
        watchdog={"rollback_margin_steps": 10, "recover_window_steps": 10},
    )
    (warning,) = [w for w in accepted(spec).warnings if w.loc == ["checkpoint", "keep_last"]]
    assert_mentions(warning, "20 steps", "40 steps", "keep at least 4")
    spec["checkpoint"]["keep_last"] = 4
    assert [w for w in accepted(spec).warnings if w.loc == ["checkpoint", "keep_last"]] == []
    spec["checkpoint"]["keep_last"] = 2
    spec["watchdog"]["rollback"] = "alert_only"
    assert [w for w in accepted(spec).warnings if w.loc == ["checkpoint", "keep_last"]] == []


# ---------------------------------------------------------------- queues, grace periods, stalls


def test_queue_priority_and_grace_period_are_accepted_and_default_to_unset() -> None:
    spec = accepted(base_spec()).spec
    assert (spec.resources.queue, spec.resources.priority, spec.resources.termination_grace_s) == (None, None, None)
    assert (spec.watchdog.stall_timeout_s, spec.watchdog.max_stall_restarts) == (None, 3)
    spec = accepted(
        with_changes(
            base_spec(),
            **{"resources.queue": "team-a", "resources.priority": "high-priority", "resources.termination_grace_s": 600,
               "watchdog.stall_timeout_s": 300.0, "watchdog.max_stall_restarts": 0},
        )  # fmt: skip
    ).spec
    assert (spec.resources.queue, spec.resources.priority, spec.resources.termination_grace_s) == ("team-a", "high-priority", 600)
    assert (spec.watchdog.stall_timeout_s, spec.watchdog.max_stall_restarts) == (300.0, 0)


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("resources.queue", "Team_A", "a Kubernetes name"),
        ("resources.queue", "q" * 64, "at most 63"),
        ("resources.priority", "-high", "a Kubernetes name"),
        ("resources.termination_grace_s", 0, "greater than or equal to 1"),
        ("resources.termination_grace_s", "60", "not a string"),
        ("watchdog.stall_timeout_s", 0, "greater than 0"),
        ("watchdog.max_stall_restarts", -1, "greater than or equal to 0"),
        ("faults.hang_at_step", -1, "greater than or equal to 0"),
    ],
)
def test_a_bad_queue_grace_or_stall_field_is_refused_at_its_path(path: str, value: Any, says: str) -> None:
    problem = problem_at(with_changes(base_spec(), **{path: value}), path.split("."))
    assert says in problem.msg


def test_a_hang_injected_on_purpose_warns() -> None:
    validated = accepted(with_changes(base_spec(), **{"faults.hang_at_step": 4}))
    (warning,) = [w for w in validated.warnings if w.loc == ["faults", "hang_at_step"]]
    assert "hangs at step 4 on purpose" in warning.msg
