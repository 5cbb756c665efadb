"""TrainerConfig: strict parsing, overrides, rules across fields and the generated JSON Schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from trainer.config import (
    SCHEMA_VERSION,
    ConfigError,
    MoEConfig,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    data_parallel_size,
    example_config,
    json_schema,
    load_config,
    validate,
)


def example_dict() -> dict[str, Any]:
    return config_to_dict(example_config())


def minimal_dict() -> dict[str, Any]:
    """Only what has no default."""
    return {
        "model": {
            "num_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_query_groups": 2,
            "ffn_hidden_size": 176,
            "vocab_size": 512,
            "max_position_embeddings": 64,
        },
        "batch": {"micro_batch_size": 4, "global_batch_size": 8},
        "stages": [
            {
                "name": "pretrain",
                "steps": 10,
                "seq_length": 64,
                "data": [{"channel": "en", "path": "embedded://en", "weight": 1}],
            }
        ],
        "checkpoint": {"directory": "out"},
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return caught.value.problems


# ---------------------------------------------------------------- the example


def test_example_config_round_trips_through_a_dict_and_json() -> None:
    config = example_config()
    as_dict = config_to_dict(config)
    assert config_from_dict(as_dict) == config
    assert config_to_dict(config_from_dict(json.loads(json.dumps(as_dict)))) == as_dict


def test_example_config_is_the_tiny_cpu_demo() -> None:
    config = example_config()
    model = config.model
    assert (model.num_layers, model.hidden_size, model.num_attention_heads) == (2, 64, 4)
    assert (model.num_query_groups, model.ffn_hidden_size) == (2, 176)
    assert model.vocab_size == 512 and model.vocab_size >= 258
    assert (config.batch.micro_batch_size, config.batch.global_batch_size) == (4, 8)
    assert [(s.name, s.steps, s.seq_length) for s in config.stages] == [
        ("pretrain", 40, 64),
        ("anneal", 10, 64),
    ]
    for stage in config.stages:
        assert [(d.channel, d.path) for d in stage.data] == [
            ("code", "embedded://code"),
            ("en", "embedded://en"),
            ("zh", "embedded://zh"),
        ]
    assert config.schedule.kind == "wsd"
    assert config.precision.dtype == "fp32"
    assert config.data.tokenizer == "byte"
    assert Path(config.checkpoint.directory).parts[0] == "trainer-out"
    assert config.total_steps == 50


@pytest.mark.parametrize("world_size", [1, 2])
def test_example_config_passes_validation(world_size: int) -> None:
    validate(example_config(), world_size)


def test_sections_left_out_take_their_defaults() -> None:
    config = config_from_dict(minimal_dict())
    assert config.schema_version == SCHEMA_VERSION
    assert config.job.id == "local" and config.job.attempt == 0
    assert config.optimizer.lr == 3e-4 and config.schedule.kind == "wsd"
    assert config.precision.loss_scale.initial_scale == 65536.0
    assert config.metrics.url is None and config.metrics.max_buffer == 10000
    assert config.data.skip_ranges == [] and config.checkpoint.pinned == []
    assert config.lr_scale == 1.0 and config.model.moe is None
    validate(config)


def test_an_integer_is_accepted_where_a_number_is_expected() -> None:
    data = minimal_dict()
    data["optimizer"] = {"lr": 1}
    lr = config_from_dict(data).optimizer.lr
    assert lr == 1.0 and isinstance(lr, float)
    assert config_from_dict(data).stages[0].data[0].weight == 1.0


def test_moe_section_parses_and_null_means_dense() -> None:
    data = minimal_dict()
    data["model"]["moe"] = {"num_experts": 8, "top_k": 2, "moe_ffn_hidden_size": 32}
    assert config_from_dict(data).model.moe == MoEConfig(
        num_experts=8, top_k=2, moe_ffn_hidden_size=32, shared_expert_ffn_hidden_size=0
    )
    data["model"]["moe"] = None
    assert config_from_dict(data).model.moe is None


# ---------------------------------------------------------------- strictness


def test_unknown_key_is_an_error_naming_its_dotted_path() -> None:
    data = example_dict()
    data["optimizer"]["lrr"] = 1e-3
    with pytest.raises(ConfigError, match=r"^unknown key 'optimizer\.lrr'"):
        config_from_dict(data)


def test_unknown_key_suggests_the_close_one() -> None:
    data = example_dict()
    data["optimizer"]["lrr"] = 1e-3
    assert problems_of(data) == ["unknown key 'optimizer.lrr' (did you mean 'lr'?)"]


def test_unknown_key_inside_a_list_names_the_index() -> None:
    data = example_dict()
    data["stages"][1]["data"][2]["wieght"] = 1.0
    assert problems_of(data)[0].startswith("unknown key 'stages[1].data[2].wieght'")


def test_unknown_top_level_key_is_an_error() -> None:
    data = example_dict()
    data["extra"] = {}
    (problem,) = problems_of(data)
    assert problem.startswith("unknown key 'extra'")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "hidden_size", "64", "model.hidden_size: expected integer, got string '64'"),
        ("model", "num_layers", True, "model.num_layers: expected integer, got boolean"),
        ("model", "num_layers", 2.0, "model.num_layers: expected integer, got number 2.0"),
        ("optimizer", "lr", "fast", "optimizer.lr: expected number, got string 'fast'"),
        ("parallel", "sequence_parallel", 1, "parallel.sequence_parallel: expected boolean"),
        (
            "parallel",
            "virtual_pipeline",
            "2",
            "parallel.virtual_pipeline: expected integer or null",
        ),
        ("precision", "dtype", "fp8", "precision.dtype: expected one of 'fp32', 'bf16', 'fp16'"),
        ("schedule", "decay_shape", "exp", "schedule.decay_shape: expected one of 'linear'"),
        ("data", "skip_ranges", [[1, "2"]], "data.skip_ranges[0][1]: expected integer"),
        ("checkpoint", "pinned", "a", "checkpoint.pinned: expected array of string, got string"),
        ("eval", "interval_steps", None, "eval.interval_steps: expected integer, got null"),
        ("metrics", "url", 8000, "metrics.url: expected string or null, got integer 8000"),
    ],
)
def test_wrong_type_names_the_path_and_the_expected_type(
    section: str, key: str, value: Any, expected: str
) -> None:
    data = example_dict()
    data[section][key] = value
    (problem,) = problems_of(data)
    assert problem.startswith(expected)


def test_a_section_that_is_not_an_object_is_an_error() -> None:
    data = example_dict()
    data["batch"] = [4, 8]
    assert problems_of(data) == ["batch: expected object, got array"]


def test_missing_required_fields_are_errors_naming_their_paths() -> None:
    data = example_dict()
    del data["model"]["hidden_size"]
    del data["checkpoint"]["directory"]
    del data["stages"][0]["data"][1]["weight"]
    assert problems_of(data) == [
        "missing required key 'model.hidden_size'",
        "missing required key 'stages[0].data[1].weight'",
        "missing required key 'checkpoint.directory'",
    ]


def test_every_problem_is_reported_at_once() -> None:
    data = example_dict()
    data["optimizer"]["lrr"] = 1
    data["batch"]["micro_batch_size"] = "4"
    del data["stages"][1]["steps"]
    message = str(pytest.raises(ConfigError, config_from_dict, data).value)
    assert "optimizer.lrr" in message
    assert "batch.micro_batch_size" in message
    assert "stages[1].steps" in message


def test_non_finite_numbers_are_refused() -> None:
    data = example_dict()
    data["optimizer"]["lr"] = float("nan")
    assert problems_of(data) == ["optimizer.lr: must be a finite number, got nan"]


@pytest.mark.parametrize("version", [0, 2, "1", True])
def test_other_schema_versions_are_refused_before_anything_else(version: Any) -> None:
    data = example_dict()
    data["schema_version"] = version
    data["optimizer"]["lrr"] = 1
    assert problems_of(data) == [
        f"schema_version {version!r} is not supported: this trainer reads version 1"
    ]


def test_a_config_without_schema_version_is_read_as_version_1() -> None:
    data = example_dict()
    del data["schema_version"]
    assert config_from_dict(data) == example_config()


def test_the_config_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object, got array"):
        config_from_dict([])  # type: ignore[arg-type]


# ---------------------------------------------------------------- files and overrides


def test_load_config_reads_a_json_file_and_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(example_dict()))
    assert load_config(path) == example_config()
    config = load_config(path, overrides=["optimizer.lr=0.01", "job.id=job-7"])
    assert config.optimizer.lr == 0.01 and config.job.id == "job-7"


def test_load_config_names_the_line_of_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "job": {\n    "id": "x",\n  }\n}')
    with pytest.raises(ConfigError, match=r"config\.json: invalid JSON at line 4"):
        load_config(path)


def test_load_config_refuses_bare_nan(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(example_dict()).replace('"lr_scale": 1.0', '"lr_scale": NaN'))
    with pytest.raises(ConfigError, match="NaN is not valid JSON"):
        load_config(path)


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config .*absent.json"):
        load_config(tmp_path / "absent.json")


def test_override_values_are_parsed_as_json() -> None:
    data = apply_overrides(
        example_dict(),
        [
            "optimizer.lr=0.01",
            "parallel.tensor=2",  # sequence parallelism needs tensor parallelism
            "parallel.sequence_parallel=true",
            "data.skip_ranges=[[10, 20]]",
            "metrics.url=http://api:8000",
        ],
    )
    config = config_from_dict(data)
    assert config.optimizer.lr == 0.01
    assert config.parallel.sequence_parallel is True
    assert config.data.skip_ranges == [[10, 20]]
    assert config.metrics.url == "http://api:8000"


def test_override_of_a_string_field_keeps_the_text() -> None:
    data = apply_overrides(example_dict(), ["job.name=2024", "job.id=true", "data.tokenizer=null"])
    assert data["job"] == {"id": "true", "attempt": 0, "name": "2024", "result_path": "/dev/termination-log"}
    assert data["data"]["tokenizer"] == "null"


def test_override_null_clears_a_nullable_field() -> None:
    data = apply_overrides(example_dict(), ["metrics.url=http://a:1", "metrics.url=null"])
    assert data["metrics"]["url"] is None


def test_override_indexes_lists_with_brackets_or_dots() -> None:
    data = apply_overrides(
        example_dict(), ["stages[1].steps=5", "stages.0.lr_scale=0.5", "stages[0].data[2].weight=3"]
    )
    config = config_from_dict(data)
    assert config.stages[1].steps == 5
    assert config.stages[0].lr_scale == 0.5
    assert config.stages[0].data[2].weight == 3.0


def test_override_creates_a_section_the_file_left_out() -> None:
    data = apply_overrides(minimal_dict(), ["eval.interval_steps=7", "model.moe.top_k=2"])
    assert data["eval"] == {"interval_steps": 7}
    assert data["model"]["moe"] == {"top_k": 2}


def test_override_can_replace_a_whole_section() -> None:
    moe = {"num_experts": 4, "top_k": 1, "moe_ffn_hidden_size": 32}
    data = apply_overrides(example_dict(), [f"model.moe={json.dumps(moe)}"])
    assert config_from_dict(data).model.moe == MoEConfig(**moe)


def test_override_leaves_its_input_alone() -> None:
    original = example_dict()
    before = copy.deepcopy(original)
    apply_overrides(original, ["stages[0].data[0].weight=9", "optimizer.lr=1"])
    assert original == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lrr=1", r"^unknown key 'optimizer\.lrr'$"),
        ("optimizer.lr.value=1", r"^unknown key 'optimizer\.lr\.value'"),
        ("nope=1", r"^unknown key 'nope'$"),
        ("stages[0].data[0].wieght=1", r"^unknown key 'stages\[0\]\.data\[0\]\.wieght'$"),
        ("stages[5].steps=1", r"stages\[5\] is out of range \(2 items\)"),
        ("stages.name=x", r"^unknown key 'stages\.name': stages is a list"),
        ("optimizer.lr", "is not of the form dotted.key=value"),
        ("=3", "is not of the form dotted.key=value"),
        ("optimizer..lr=1", "is malformed"),
    ],
)
def test_bad_overrides_are_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(example_dict(), [override])


def test_override_checks_keys_against_the_schema_not_the_file() -> None:
    # `train` is absent from the file, yet its fields are known and its typos are not.
    assert apply_overrides(minimal_dict(), ["train.seed=7"])["train"] == {"seed": 7}
    with pytest.raises(ConfigError, match=r"unknown key 'train\.sede'"):
        apply_overrides(minimal_dict(), ["train.sede=7"])


# ---------------------------------------------------------------- cross-field checks


def _with(path: str, value: Any) -> TrainerConfig:
    return config_from_dict(apply_overrides(example_dict(), [f"{path}={json.dumps(value)}"]))


def _refusals(path: str, value: Any, world_size: int) -> list[str]:
    """Why the example with `path` set to `value` is refused, parsed or run on `world_size`."""
    with pytest.raises(ConfigError) as caught:
        validate(_with(path, value), world_size)
    return caught.value.problems


@pytest.mark.parametrize(
    ("path", "value", "world_size", "expected"),
    [
        ("batch.global_batch_size", 12, 2, "batch.global_batch_size: 12 is not divisible by "),
        ("batch.micro_batch_size", 3, 1, "micro_batch_size 3 × data-parallel size 1"),
        ("parallel.tensor", 2, 3, "parallel: world size 3 is not a multiple of tensor × pipeline"),
        ("parallel.tensor", 8, 8, "4 attention heads are not divisible by tensor size 8"),
        ("parallel.tensor", 4, 4, "parallel.tensor: 2 query groups are not divisible"),
        ("parallel.pipeline", 4, 4, "model.num_layers: 2 layers do not split"),
        ("parallel.virtual_pipeline", 2, 1, "parallel.virtual_pipeline: needs parallel.pipeline"),
        ("parallel.sequence_parallel", True, 1, "parallel.sequence_parallel: needs"),
        ("parallel.expert", 2, 2, "parallel.expert: expert parallelism needs model.moe"),
        ("model.num_query_groups", 3, 1, "4 attention heads are not divisible by 3 groups"),
        ("model.hidden_size", 66, 1, "model.hidden_size: 66 is not divisible by 4"),
        ("stages[0].steps", 0, 1, "stages[0].steps: must be at least 1, got 0"),
        ("stages[1].name", "pretrain", 1, "stages[1].name: 'pretrain' is used by an earlier"),
        ("stages[0].seq_length", 128, 1, "stages[0].seq_length: 128 exceeds model.max_position"),
        ("stages[0].lr_scale", 0, 1, "stages[0].lr_scale: must be positive"),
        ("stages[0].data[1].weight", 0, 1, "stages[0].data[1].weight: must be positive, got 0"),
        ("stages[0].data[1].weight", -1, 1, "stages[0].data[1].weight: must be positive"),
        ("stages[0].data[1].channel", "code", 1, "'code' appears twice in the stage"),
        ("stages[0].data", [], 1, "stages[0].data: at least one data source"),
        ("stages", [], 1, "stages: at least one stage is needed"),
        ("data.skip_ranges", [[5, 5]], 1, "data.skip_ranges[0]: needs 0 <= start < end"),
        ("data.skip_ranges", [[9, 3]], 1, "data.skip_ranges[0]: needs 0 <= start < end"),
        ("data.skip_ranges", [[-1, 3]], 1, "data.skip_ranges[0]: needs 0 <= start < end"),
        ("data.skip_ranges", [[1, 2, 3]], 1, "data.skip_ranges[0]: a range is [start, end]"),
        ("stages[0].data[0].corrupt", [[4, 2]], 1, "stages[0].data[0].corrupt[0]: needs"),
        ("schedule.decay_steps", 46, 1, "warmup 5 + decay 46 exceed the run's 50 steps"),
        ("schedule.warmup_steps", 51, 1, "schedule.warmup_steps: 51 exceed the run's 50"),
        ("optimizer.min_lr", 0.1, 1, "optimizer.min_lr: must be between 0 and lr"),
        ("optimizer.lr", 0, 1, "optimizer.lr: must be positive"),
        ("optimizer.adam_beta2", 1.0, 1, "optimizer.adam_beta2: must be in [0, 1)"),
        ("optimizer.embedding_grad_scale", 0, 1, "embedding_grad_scale: must be in (0, 1]"),
        ("precision.loss_scale.backoff_factor", 1.5, 1, "backoff_factor: must be in (0, 1)"),
        ("lr_scale", 0, 1, "lr_scale: must be positive, got 0"),
        ("checkpoint.keep_last", 0, 1, "checkpoint.keep_last: must be at least 1"),
        ("metrics.url", "api:8000", 1, "metrics.url: 'api:8000' is not an http"),
        ("metrics.max_buffer", 0, 1, "metrics.max_buffer: must be at least 1"),
        ("job.attempt", -1, 1, "job.attempt: must not be negative, got -1"),
        ("job.result_path", "", 1, "job.result_path: must not be empty"),
        ("train.skip_grad_norm_zscore", -1, 1, "train.skip_grad_norm_zscore: must not be negative"),
        ("train.skip_grad_norm_window", 1, 1, "train.skip_grad_norm_window: must be at least 2"),
        ("train.skip_grad_norm_min_history", 1, 1, "skip_grad_norm_min_history: must be between 2"),
        ("train.skip_grad_norm_min_history", 101, 1, "and skip_grad_norm_window 100, got 101"),
        ("train.max_consecutive_skips", 0, 1, "train.max_consecutive_skips: must be at least 1"),
        ("faults.lr_blowup_from_step", -1, 1, "faults.lr_blowup_from_step: must not be negative"),
        ("faults.lr_blowup_factor", 1, 1, "faults.lr_blowup_factor: must exceed 1, got 1"),
        ("faults.grad_spike_factor", 0.5, 1, "faults.grad_spike_factor: must exceed 1"),
        ("faults.nan_steps", [[3, 3]], 1, "faults.nan_steps[0]: needs 0 <= start < end"),
        ("faults.grad_spike_steps", [[1]], 1, "faults.grad_spike_steps[0]: a range is [start, end]"),
    ],
)
def test_a_config_breaking_a_rule_is_refused(
    path: str, value: Any, world_size: int, expected: str
) -> None:
    # Rules within the file refuse it as it is parsed; those about the world size in validate.
    problems = _refusals(path, value, world_size)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("stages[0].steps", 0),
        ("optimizer.adam_beta1", 1.5),
        ("model.num_query_groups", 3),
        ("stages[1].name", "pretrain"),
        ("schedule.warmup_steps", 51),
    ],
)
def test_rules_within_the_file_refuse_it_as_it_is_parsed(path: str, value: Any) -> None:
    with pytest.raises(ConfigError):
        _with(path, value)


def test_validate_rechecks_a_config_changed_after_parsing() -> None:
    config = example_config()
    config.stages[0].seq_length = 128
    with pytest.raises(ConfigError, match="stages\\[0\\].seq_length: 128 exceeds"):
        validate(config)


def test_the_guard_and_fault_sections_parse_with_their_defaults_and_refuse_unknown_keys() -> None:
    config = config_from_dict(minimal_dict())
    assert (config.train.skip_grad_norm_zscore, config.train.skip_grad_norm_window) == (6.0, 100)
    assert (config.train.skip_grad_norm_min_history, config.train.max_consecutive_skips) == (20, 5)
    assert config.faults.lr_blowup_from_step is None and config.faults.nan_steps == []
    assert config.job.result_path == "/dev/termination-log"
    assert config.stages[0].data[0].corrupt_kind == "random"
    data = minimal_dict()
    data["faults"] = {"nan_steps": [[3, 5]], "lr_blowup_from_step": 8, "lr_blowup_factor": 50}
    data["stages"][0]["data"][0]["corrupt_kind"] = "newlines"
    config = config_from_dict(data)
    validate(config)
    assert config.faults.nan_steps == [[3, 5]] and config.faults.lr_blowup_factor == 50.0
    assert config.stages[0].data[0].corrupt_kind == "newlines"
    assert problems_of({**minimal_dict(), "faults": {"nan_step": [[1, 2]]}}) == [
        "unknown key 'faults.nan_step' (did you mean 'nan_steps'?)"
    ]
    data["stages"][0]["data"][0]["corrupt_kind"] = "zeros"
    assert problems_of(data) == [
        "stages[0].data[0].corrupt_kind: expected one of 'random', 'newlines', got string 'zeros'"
    ]


def test_validate_checks_the_batch_against_the_world_size() -> None:
    config = example_config()  # global 8, micro 4
    validate(config, 2)
    with pytest.raises(ConfigError, match="divisible by micro_batch_size 4 × data-parallel size 4"):
        validate(config, 4)


def test_validate_accepts_moe_with_expert_parallelism() -> None:
    config = _with("model.moe", {"num_experts": 4, "top_k": 2, "moe_ffn_hidden_size": 32})
    config.parallel.expert = 2
    validate(config, 2)
    config.model.moe.top_k = 5
    with pytest.raises(ConfigError, match="top_k: 5 is more than the 4 experts"):
        validate(config, 2)


def test_validate_accepts_a_cosine_schedule_without_room_for_a_wsd_decay() -> None:
    # decay_steps belongs to wsd; another kind ignores it.
    config = _with("schedule", {"kind": "cosine", "warmup_steps": 5, "decay_steps": 100})
    validate(config)


def test_validate_reports_every_problem_at_once() -> None:
    config = example_config()
    config.stages[1].steps = 0
    config.data.skip_ranges = [[3, 1]]
    config.optimizer.adam_beta1 = 1.5
    with pytest.raises(ConfigError) as caught:
        validate(config)
    assert len(caught.value.problems) == 3


def test_data_parallel_size_is_what_model_parallelism_leaves() -> None:
    config = example_config()
    config.parallel.tensor = 2
    assert data_parallel_size(config, 8) == 4
    with pytest.raises(ConfigError, match="world size 5 is not a multiple of tensor"):
        data_parallel_size(config, 5)


# ---------------------------------------------------------------- JSON Schema


def _objects(schema: dict[str, Any]):
    if schema.get("type") == "object":
        yield schema
    for key in ("properties",):
        for child in schema.get(key, {}).values():
            yield from _objects(child)
    if "items" in schema:
        yield from _objects(schema["items"])
    for option in schema.get("anyOf", []):
        yield from _objects(option)


def test_json_schema_forbids_unknown_keys_in_every_object() -> None:
    objects = list(_objects(json_schema()))
    assert len(objects) >= 17  # TrainerConfig and each of its sections
    assert all(obj["additionalProperties"] is False for obj in objects)


def test_json_schema_mirrors_the_models() -> None:
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert list(schema["properties"]) == list(TrainerConfig.model_fields)
    assert schema["required"] == ["model", "batch", "stages", "checkpoint"]
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    model = schema["properties"]["model"]
    assert model["properties"]["moe"]["anyOf"][1] == {"type": "null"}
    assert model["properties"]["rope_base"] == {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "RoPE base frequency; a stage may override it.",
        "default": 10000.0,
    }
    assert model["properties"]["num_layers"]["minimum"] == 1
    dtype = schema["properties"]["precision"]["properties"]["dtype"]
    assert dtype["enum"] == ["fp32", "bf16", "fp16"]
    stage = schema["properties"]["stages"]["items"]
    assert stage["required"] == ["name", "steps", "seq_length", "data"]
    assert stage["properties"]["data"]["items"]["properties"]["corrupt"]["items"] == {
        "type": "array",
        "items": {"type": "integer"},
    }


def test_json_schema_describes_every_field() -> None:
    for obj in _objects(json_schema()):
        assert obj["description"]
        for name, prop in obj["properties"].items():
            assert prop.get("description"), name


def test_json_schema_is_plain_json() -> None:
    text = json.dumps(json_schema(), allow_nan=False)
    assert json.loads(text) == json_schema()


def test_json_schema_accepts_the_example_and_refuses_what_the_parser_refuses() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert validator.is_valid(example_dict())
    assert validator.is_valid(minimal_dict())
    unknown = example_dict()
    unknown["optimizer"]["lrr"] = 1
    wrong_type = example_dict()
    wrong_type["batch"]["micro_batch_size"] = "4"
    missing = example_dict()
    del missing["stages"][0]["data"][0]["path"]
    future = example_dict()
    future["schema_version"] = 2
    for bad in (unknown, wrong_type, missing, future):
        assert not validator.is_valid(bad)
        with pytest.raises(ConfigError):
            config_from_dict(bad)


# ---------------------------------------------------------------- layering


def test_the_trainer_imports_nothing_from_the_service() -> None:
    code = (
        "import sys, trainer.config, trainer.lr_schedule, trainer.report\n"
        "leaked = [m for m in sys.modules if m == 'service' or m.startswith('service.')]\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_imports_without_torch() -> None:
    # The service image ships the trainer package without torch, to render through the models.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now fails\n"
        "import trainer.config\n"
        "trainer.config.validate(trainer.config.example_config())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
