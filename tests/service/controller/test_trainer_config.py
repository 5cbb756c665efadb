"""The service renders trainer configs the trainer accepts: schema v1, strict, round-trippable."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.controller import trainer_config
from service.controller.trainer_config import render_trainer_config
from service.controller.workload import unsaved_job
from service.db.models import Attempt
from service.planner import plan_job
from service.settings import Settings
from service.spec import PRETRAIN_KIND, parse_spec_text, validate_spec
from trainer.config import (
    ConfigError,
    TrainerConfig,
    config_from_dict,
    config_to_dict,
    json_schema,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TINY = "tiny-cpu.yaml"
QWEN = "qwen2-7b-pretrain.yaml"
TOKEN = "ingest-token-for-tests"


def load_example(name: str) -> dict[str, Any]:
    """An example spec as the raw mapping a user submits."""
    return parse_spec_text((EXAMPLES / name).read_text())


def stored_job(raw: dict[str, Any]) -> dict[str, Any]:
    """spec, derived and plan as service/jobs.py stores them, plus the resources."""
    validated = validate_spec(raw)
    return {
        "spec": validated.spec.model_dump(mode="json"),
        "derived": {
            "model": validated.model.model_dump(mode="json"),
            **validated.derived.model_dump(mode="json"),
        },
        "plan": plan_job(validated).model_dump(mode="json"),
    }


def make_settings(**overrides: Any) -> Settings:
    values = {
        "checkpoint_root": "/checkpoints",
        "data_root": "/data",
        "ingest_url": "http://pretrain-api:8000",
    }
    return Settings(**(values | overrides))


def render(
    raw: dict[str, Any],
    *,
    job_id: int = 42,
    attempt: int = 0,
    resume_from: str | None = None,
    skip_ranges: list[list[int]] | None = None,
    lr_scale: float = 1.0,
    token: str | None = TOKEN,
    settings: Settings | None = None,
    with_plan: bool = True,
) -> dict[str, Any]:
    job = stored_job(raw)
    if not with_plan:
        job["plan"] = None
    return render_stored(
        job,
        job_id=job_id,
        attempt=attempt,
        resume_from=resume_from,
        skip_ranges=skip_ranges or [],
        lr_scale=lr_scale,
        token=token,
        settings=settings,
    )


def render_stored(
    job: dict[str, Any],
    *,
    job_id: int = 1,
    attempt: int = 0,
    resume_from: str | None = None,
    skip_ranges: list[list[int]] | None = None,
    lr_scale: float = 1.0,
    token: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The config of one attempt of a job row holding these documents (never stored)."""
    row = unsaved_job(name=job["spec"]["name"], kind="pretrain", job_id=job_id, **job)
    number = Attempt(number=attempt, skip_ranges=skip_ranges or [], lr_scale=lr_scale)
    return render_trainer_config(
        row, number, settings or make_settings(), resume_from=resume_from, ingest_token=token
    )


def world_size(raw: dict[str, Any]) -> int:
    return raw["resources"]["nodes"] * raw["resources"]["gpus_per_node"]


PRETRAIN_EXAMPLES = sorted(
    path.name
    for path in EXAMPLES.glob("*.yaml")
    if load_example(path.name).get("kind", PRETRAIN_KIND) == PRETRAIN_KIND
)


def test_the_examples_include_pretrain_jobs():
    assert {TINY, QWEN} <= set(PRETRAIN_EXAMPLES)


@pytest.mark.parametrize("example", PRETRAIN_EXAMPLES)
def test_every_pretrain_example_renders_a_config_the_trainer_models_accept(example):
    raw = load_example(example)
    config = TrainerConfig.model_validate(render(raw))
    validate(config, world_size=world_size(raw))


def test_a_rendered_key_the_trainer_does_not_know_is_refused():
    rendered = render(load_example(TINY))
    rendered["train"]["sede"] = 7
    with pytest.raises(ConfigError, match=r"unknown key 'train\.sede' \(did you mean 'seed'\?\)"):
        config_from_dict(rendered)


def test_the_service_does_not_hand_out_a_config_the_trainer_would_refuse(monkeypatch):
    # As if the service grew a field the trainer has not: rendering fails here, not in a pod.
    monkeypatch.setattr(trainer_config, "_NO_FAULTS", {**trainer_config._NO_FAULTS, "nan_step": []})
    with pytest.raises(ValueError, match=r"the trainer would refuse this config: unknown key 'faults\.nan_step'"):
        render(load_example(TINY))


@pytest.mark.parametrize("example", [TINY, QWEN])
def test_rendered_example_is_a_valid_trainer_config(example):
    raw = load_example(example)
    rendered = render(raw)
    validate(config_from_dict(rendered), world_size=world_size(raw))
    jsonschema.validate(rendered, json_schema())


@pytest.mark.parametrize("example", [TINY, QWEN])
def test_rendered_config_round_trips_through_the_trainer_unchanged(example):
    rendered = render(load_example(example), resume_from="/checkpoints/x/step-00000040")
    round_tripped = config_to_dict(config_from_dict(rendered))
    assert round_tripped == rendered
    # Same JSON text too: every float is already a float, every section complete.
    assert json.dumps(round_tripped) == json.dumps(rendered)


def test_tiny_cpu_example_trains_in_fp32_with_the_derived_steps():
    raw = load_example(TINY)
    job = stored_job(raw)
    rendered = render(raw)
    assert raw["precision"] == "bf16"
    assert rendered["precision"]["dtype"] == "fp32"
    assert [s["steps"] for s in rendered["stages"]] == [
        s["train_iters"] for s in job["derived"]["stages"]
    ]
    assert [s["steps"] for s in rendered["stages"]] == [128, 32]
    assert rendered["schedule"] == {
        "kind": "wsd",
        "warmup_steps": 8,
        "decay_steps": 32,
        "decay_shape": "linear",
    }
    assert rendered["train"]["peak_tflops"] is None
    assert rendered["data"]["tokenizer"] == "byte"
    assert rendered["stages"][0]["data"][0]["path"] == "embedded://code"
    assert rendered["stages"][0]["rope_base"] is None


def test_qwen2_7b_example_keeps_bf16_and_its_wsd_decay():
    raw = load_example(QWEN)
    job = stored_job(raw)
    rendered = render(raw)
    assert rendered["precision"]["dtype"] == "bf16"
    total = job["derived"]["total_train_iters"]
    assert total == 1_670_896
    assert rendered["schedule"]["decay_steps"] == round(0.0028 * total) == 4679
    assert rendered["schedule"]["warmup_steps"] == 2000
    assert rendered["schedule"]["decay_shape"] == "1-sqrt"
    assert rendered["parallel"] == {
        "tensor": 4,
        "pipeline": 2,
        "context": 1,
        "expert": 1,
        "virtual_pipeline": None,
        "sequence_parallel": True,
        "distributed_optimizer": True,
    }
    assert rendered["train"]["peak_tflops"] == 989.0
    # Relative paths land under the data root, where the trainer pods mount the data volume.
    assert rendered["data"]["tokenizer"] == "/data/tokenizers/qwen2"
    assert rendered["stages"][0]["data"][0]["path"] == "/data/corpus/v3/web-en"
    assert [s["rope_base"] for s in rendered["stages"]] == [10000.0, 1e6, 1e6]
    assert rendered["model"]["vocab_size"] == job["plan"]["vocab"]["allocated"] == 152064
    assert rendered["optimizer"]["z_loss"] == 1e-4
    assert rendered["checkpoint"]["interval_steps"] == 1000
    assert rendered["checkpoint"]["keep_last"] == 5


def test_rollback_attempt_carries_skip_ranges_lr_scale_resume_point_and_token():
    resume = "/checkpoints/tiny-cpu-42/step-00000080"
    rendered = render(
        load_example(TINY),
        attempt=2,
        resume_from=resume,
        skip_ranges=[[80, 96], [120, 128]],
        lr_scale=0.5,
    )
    assert rendered["job"] == {"id": "42", "attempt": 2, "name": "tiny-cpu", "result_path": "/dev/termination-log"}
    assert rendered["data"]["skip_ranges"] == [[80, 96], [120, 128]]
    assert rendered["lr_scale"] == 0.5
    assert rendered["checkpoint"]["resume_from"] == resume
    assert rendered["checkpoint"]["pinned"] == [resume]
    assert rendered["checkpoint"]["directory"] == "/checkpoints/tiny-cpu-42"
    assert rendered["metrics"]["token"] == TOKEN
    assert rendered["metrics"]["url"] == "http://pretrain-api:8000"
    config = config_from_dict(rendered)
    validate(config, world_size=2)
    assert config.data.skip_ranges == [[80, 96], [120, 128]]


def test_metrics_are_also_kept_beside_the_checkpoints_one_file_per_attempt():
    rendered = render(
        load_example(TINY), attempt=3, settings=make_settings(checkpoint_root="/ckpt/")
    )
    assert rendered["checkpoint"]["directory"] == "/ckpt/tiny-cpu-42"
    assert rendered["metrics"]["jsonl_path"] == "/ckpt/tiny-cpu-42/metrics/attempt-3.jsonl"


def test_a_fresh_attempt_pins_nothing_and_resumes_from_nothing():
    rendered = render(load_example(TINY))
    assert rendered["checkpoint"]["resume_from"] is None
    assert rendered["checkpoint"]["pinned"] == []
    assert rendered["data"]["skip_ranges"] == []
    assert rendered["lr_scale"] == 1.0


def test_fp8_renders_as_bf16_and_fp16_keeps_its_loss_scale():
    raw = load_example(QWEN)
    raw["precision"] = "fp8"
    assert render(raw)["precision"]["dtype"] == "bf16"
    raw["precision"] = {"dtype": "fp16", "loss_scale": {"initial_scale": 1024, "hysteresis": 4}}
    raw["resources"]["gpu_type"] = "A100"
    precision = render(raw)["precision"]
    assert precision["dtype"] == "fp16"
    assert precision["loss_scale"]["initial_scale"] == 1024.0
    assert precision["loss_scale"]["hysteresis"] == 4


def test_data_paths_relative_to_the_data_root_absolute_and_uris_pass_through():
    raw = load_example(TINY)
    raw["stages"][0]["data"] = [
        {"channel": "code", "path": "corpus/code", "weight": 0.4},
        {"channel": "en", "path": "/mnt/en", "weight": 0.4},
        {"channel": "zh", "path": "s3://bucket/zh", "weight": 0.2},
    ]
    rendered = render(raw, settings=make_settings(data_root="/datasets/"))
    paths = [source["path"] for source in rendered["stages"][0]["data"]]
    assert paths == ["/datasets/corpus/code", "/mnt/en", "s3://bucket/zh"]


def test_vocab_is_the_allocated_embedding_when_planned_else_the_models():
    raw = load_example(TINY)
    raw["model"] = {"preset": "tiny", "vocab_size": 8200}  # Megatron pads it to 8320
    assert render(raw)["model"]["vocab_size"] == 8320
    assert render(raw, with_plan=False)["model"]["vocab_size"] == 8200


def test_moe_model_renders_its_experts():
    raw = load_example(TINY)
    raw["model"] = {"preset": "tiny-moe"}
    raw["parallelism"]["expert"] = 2
    rendered = render(raw)
    assert rendered["model"]["moe"] == {
        "num_experts": 8,
        "top_k": 2,
        "moe_ffn_hidden_size": 64,
        "shared_expert_ffn_hidden_size": 128,
    }
    validate(config_from_dict(rendered), world_size=2)


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_only_wsd_has_decay_steps(kind):
    raw = load_example(TINY)
    raw["schedule"] = {"kind": kind, "warmup_tokens": 16_384}
    assert render(raw)["schedule"]["decay_steps"] == 0


def test_a_tokenizer_path_is_passed_to_the_trainer():
    raw = load_example(TINY)
    raw["tokenizer"] = {"path": "/tokenizers/qwen2", "vocab_size": 8000}
    assert render(raw)["data"]["tokenizer"] == "/tokenizers/qwen2"


@pytest.mark.parametrize("lr_scale", [0.0, -1.0, math.nan, math.inf])
def test_a_non_positive_or_non_finite_lr_scale_is_refused(lr_scale):
    with pytest.raises(ValueError, match="lr_scale"):
        render(load_example(TINY), lr_scale=lr_scale)


@pytest.mark.parametrize("bounds", [[5, 5], [-1, 3], [1, 2, 3], [1.5, 3]])
def test_a_malformed_skip_range_is_refused(bounds):
    with pytest.raises(ValueError, match="skip range"):
        render(load_example(TINY), skip_ranges=[bounds])


def test_sequence_parallel_on_cpu_is_refused():
    raw = load_example(TINY)
    raw["parallelism"] = {"tensor": 2, "sequence_parallel": True}
    raw["batch"]["global_batch_size"] = 8
    with pytest.raises(ValueError, match="sequence_parallel"):
        render(raw)


def test_stages_that_disagree_with_the_derived_plan_are_refused():
    job = stored_job(load_example(TINY))
    derived = copy.deepcopy(job["derived"])
    derived["stages"].pop()
    with pytest.raises(ValueError, match="derived stages"):
        render_stored(job | {"derived": derived})


def test_a_stored_job_missing_a_required_section_is_a_value_error():
    job = stored_job(load_example(TINY))
    del job["spec"]["batch"]
    with pytest.raises(ValueError, match="batch"):
        render_stored(job)


def test_a_stored_job_missing_a_section_with_defaults_renders_the_models_defaults():
    job = stored_job(load_example(TINY))
    del job["spec"]["eval"]  # stored before the section existed
    assert render_stored(job)["eval"] == {"interval_steps": 1000, "samples_per_channel": 200}


def test_fault_injection_reaches_the_trainer_as_corrupt_batch_ranges():
    rendered = render(load_example("demo.yaml"))
    corrupt = {d["channel"]: d["corrupt"] for d in rendered["stages"][0]["data"]}
    assert corrupt == {"code": [], "en": [[60, 76]], "zh": []}
    assert all(d["corrupt"] == [] for d in rendered["stages"][1]["data"])
    validate(config_from_dict(rendered), world_size=2)


def test_the_specs_skip_step_guard_reaches_the_trainer_and_an_older_stored_spec_gets_its_defaults():
    raw = load_example(TINY)
    raw["watchdog"].update(skip_grad_norm_zscore=4.5, max_nonfinite_steps=2)
    train = render(raw)["train"]
    assert (train["skip_grad_norm_zscore"], train["max_nonfinite_steps"]) == (4.5, 2)

    job = stored_job(load_example(TINY))
    for field in ("skip_grad_norm_zscore", "max_nonfinite_steps"):
        del job["spec"]["watchdog"][field]  # stored before the fields existed
    older = render_stored(job, token=TOKEN)["train"]
    assert (older["skip_grad_norm_zscore"], older["max_nonfinite_steps"]) == (6.0, 3)
