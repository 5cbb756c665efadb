"""Bounded validation: huge numbers, loose types and extreme values are refused naming the field,
and no rule or estimate does work that grows with the size of a number."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from service.admission import plan_spec
from service.spec import JobSpec, SpecInvalid, ValidatedSpec, parse_spec_text, validate_spec
from service.spec.context import Context
from service.spec.rules import RULES
from tests.conftest import EXAMPLES, auth
from tests.service.test_spec import base_spec, problem_at, problems_of, with_changes

# The finding: with the divisors of num_query_groups enumerated up to the number, this never returned.
HUGE_GROUPS = {"model.num_query_groups": 2**53 - 1, "parallelism.tensor": 2}
# Generous: a validation takes milliseconds; this only turns a hang into a failure.
JOIN_TIMEOUT_S = 30


def finishes(work: Callable[[], Any]) -> Any:
    """What `work` returned or raised, run in a thread; fails instead of hanging the suite."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as error:  # the caller inspects it
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive(), f"still running after {JOIN_TIMEOUT_S} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def refusal(raw: dict[str, Any]) -> list[Any]:
    with pytest.raises(SpecInvalid) as caught:
        finishes(lambda: validate_spec(raw))
    return caught.value.problems


# ---------------------------------------------------------------- the finding, reproduced


def test_a_huge_num_query_groups_is_refused_naming_the_field() -> None:
    problems = refusal(with_changes(base_spec(), **HUGE_GROUPS))

    assert [p.loc for p in problems] == [["model", "num_query_groups"]]
    assert "less than or equal to 1024" in problems[0].msg


def test_the_huge_spec_gets_a_422_from_plan_for_a_viewer(app_client, tokens) -> None:
    spec = with_changes(base_spec(), **HUGE_GROUPS)

    response = finishes(
        lambda: app_client.post("/v1/plan", json=spec, headers=auth(tokens["viewer"]))
    )

    assert response.status_code == 422, response.text
    assert [p["loc"] for p in response.json()["detail"]] == [["body", "model", "num_query_groups"]]


def test_rules_do_bounded_work_even_on_numbers_past_the_bounds() -> None:
    # The bounds keep such numbers out; the rules must not depend on that to finish.
    validated = validate_spec(base_spec(parallelism={"tensor": 2}))
    assert isinstance(validated, ValidatedSpec)
    huge = 2**53 - 1
    model = validated.model.model_copy(
        update={"num_query_groups": huge, "num_attention_heads": huge, "num_layers": huge}
    )
    context = Context(spec=validated.spec, resolved_model=model)

    problems = finishes(lambda: [p for rule in RULES for p in rule(context)])

    locs = [p.loc for p in problems]
    assert ["parallelism", "tensor"] in locs and ["parallelism", "pipeline"] not in locs
    assert any("use a tensor size that divides" in p.msg for p in problems)


def test_divisor_suggestions_keep_their_wording() -> None:
    spec = with_changes(base_spec(), **{"parallelism.tensor": 3})
    problem = problem_at(spec, ["parallelism", "tensor"])
    assert "use a tensor size that divides 4 (1, 2, 4)" in problem.msg
    groups = problem_at(
        with_changes(base_spec(), **{"model.num_query_groups": 3}), ["model", "num_query_groups"]
    )
    assert groups.msg.endswith("use one of 1, 2, 4")


# ---------------------------------------------------------------- upper bounds


@pytest.mark.parametrize(
    ("path", "bound"),
    [
        ("model.num_layers", 1024),
        ("model.num_attention_heads", 1024),
        ("model.num_query_groups", 1024),
        ("model.hidden_size", 2**20),
        ("model.ffn_hidden_size", 2**22),
        ("model.vocab_size", 2**24),
        ("model.max_position_embeddings", 2**24),
        ("resources.nodes", 100_000),
        ("resources.gpus_per_node", 1024),
        ("parallelism.tensor", 1024),
        ("parallelism.pipeline", 1024),
        ("parallelism.context", 1024),
        ("parallelism.expert", 16_384),
        ("parallelism.virtual_pipeline", 1024),
        ("batch.micro_batch_size", 65_536),
        ("batch.global_batch_size", 2**24),
        ("schedule.warmup_tokens", 10**16),
        ("stages.0.tokens", 10**16),
        ("stages.0.seq_length", 2**24),
        ("checkpoint.interval_steps", 10**9),
        ("watchdog.max_rollbacks", 10**9),
        ("recompute.recompute_layers", 1024),
    ],
)
def test_a_number_past_its_bound_is_refused_naming_the_field(path: str, bound: int) -> None:
    loc = [int(part) if part.isdigit() else part for part in path.split(".")]
    over = problem_at(with_changes(base_spec(), **{path: bound + 1}), loc)
    assert over.type == "less_than_equal" and f"{bound}" in over.msg

    # At the bound the field itself is fine (other rules may still object to the whole).
    try:
        validate_spec(with_changes(base_spec(), **{path: bound}))
    except SpecInvalid as error:
        assert all(p.type != "less_than_equal" for p in error.problems), error


def test_moe_sizes_are_bounded() -> None:
    spec = base_spec(model={"preset": "tiny-moe", "moe": {"num_experts": 16_385, "top_k": 16_385}})
    locs = [p.loc for p in problems_of(spec)]
    assert ["model", "moe", "num_experts"] in locs and ["model", "moe", "top_k"] in locs


def test_corrupt_steps_are_bounded_steps() -> None:
    spec = with_changes(base_spec(), **{"stages.0.data.0.corrupt_steps": [[0, 10**9 + 1]]})
    problem_at(spec, ["stages", 0, "data", 0, "corrupt_steps", 0, 1])


def test_a_run_of_more_steps_than_the_bound_is_refused_at_the_stage_that_passes_it() -> None:
    spec = with_changes(
        base_spec(
            batch={"micro_batch_size": 1, "global_batch_size": 8}, schedule={"warmup_tokens": 8}
        ),
        **{"stages.0.seq_length": 1, "stages.0.tokens": 10**16},
    )
    problem = problem_at(spec, ["stages", 0, "tokens"])
    assert "more than 1000000000" in problem.msg


def test_an_integer_too_long_to_print_is_refused_naming_the_field() -> None:
    # Python refuses to print an integer of more than 4,300 digits; quoting one was a 500.
    problem = problem_at(
        with_changes(base_spec(), **{"stages.0.tokens": 10**5000}), ["stages", 0, "tokens"]
    )
    assert "an integer of about 5001 digits" in problem.msg


def test_a_mapping_holding_an_integer_too_long_to_print_is_quoted_by_kind() -> None:
    problem = problem_at(with_changes(base_spec(), resources=[10**5000]), ["resources"])
    assert "holding an integer too long to print" in problem.msg


# ---------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("resources.nodes", True, "should be an integer, not a boolean"),
        ("resources.nodes", "2", "should be an integer, not a string"),
        ("stages.0.tokens", "20480", "should be an integer, not a string"),
        ("stages.0.data.0.corrupt_steps", [[True, 2]], "should be an integer, not a boolean"),
        ("optimizer.lr", "3e-4", "should be a number, not a string"),
        ("optimizer.lr", False, "should be a number, not a boolean"),
        ("mfu", "0.5", "should be a number, not a string"),
        ("parallelism.sequence_parallel", "true", "should be a valid boolean"),
        ("parallelism.distributed_optimizer", 1, "should be a valid boolean"),
        ("allow_over_memory", "yes", "should be a valid boolean"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_converted(
    path: str, value: Any, expected: str
) -> None:
    loc = [int(part) if part.isdigit() else part for part in path.split(".")]
    problems = problems_of(with_changes(base_spec(), **{path: value}))
    named = [p for p in problems if p.loc[: len(loc)] == loc]
    assert named and expected in named[0].msg, problems


def test_integers_stand_for_reals_and_integral_floats_for_counts() -> None:
    validated = validate_spec(
        with_changes(
            base_spec(),
            **{"optimizer.lr": 1, "stages.0.tokens": 20480.0, "resources.gpu_memory_gib": 80},
        )
    )
    assert isinstance(validated, ValidatedSpec)
    assert validated.spec.optimizer.lr == 1.0 and validated.spec.stages[0].tokens == 20480


def test_yaml_exponent_notation_still_reads_as_a_count() -> None:
    text = yaml.safe_dump(base_spec()).replace("tokens: 20480", "tokens: 2.048e4")
    assert validate_spec(parse_spec_text(text)).spec.stages[0].tokens == 20480


@pytest.mark.parametrize(
    ("document", "loc"),
    [
        ('"optimizer": {"lr": NaN}', ["optimizer", "lr"]),
        (
            '"resources": {"nodes": 1, "gpus_per_node": 8, "gpu_type": "H100", "gpu_memory_gib": Infinity}',
            ["resources", "gpu_memory_gib"],
        ),
        ('"mfu": -Infinity', ["mfu"]),
    ],
)
def test_nan_and_infinity_in_json_are_refused_naming_the_field(
    document: str, loc: list[str]
) -> None:
    spec = json.loads("{" + document + "}")
    merged = base_spec(**spec)
    problem_at(json.loads(json.dumps(merged)), loc)


def test_nan_in_yaml_is_refused_naming_the_field() -> None:
    text = yaml.safe_dump(base_spec()).replace("tokens: 20480", "tokens: .nan")
    problem_at(parse_spec_text(text), ["stages", 0, "tokens"])


# ---------------------------------------------------------------- the schema shows the bounds


def test_the_json_schema_publishes_each_bound() -> None:
    definitions = JobSpec.model_json_schema()["$defs"]
    layers = definitions["ModelSpec"]["properties"]["num_layers"]["anyOf"][0]
    nodes = definitions["ResourcesSpec"]["properties"]["nodes"]
    lr = definitions["OptimizerSpec"]["properties"]["lr"]

    assert (layers["type"], layers["exclusiveMinimum"], layers["maximum"]) == ("integer", 0, 1024)
    assert (nodes["exclusiveMinimum"], nodes["maximum"]) == (0, 100_000)
    assert (lr["type"], lr["exclusiveMinimum"], lr["maximum"]) == ("number", 0, 1e18)
    # No constraint is left in pydantic's own spelling, which JSON Schema readers ignore.
    assert '"le":' not in json.dumps(definitions) and '"gt":' not in json.dumps(definitions)


def test_every_example_still_validates() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        validate_spec(parse_spec_text(path.read_text()))


# ---------------------------------------------------------------- the planner at the extremes


def _numeric_fields() -> list[tuple[str, float]]:
    """(dotted path, value) for each numeric field of the schema at its minimum and its maximum."""
    schema = JobSpec.model_json_schema()
    found: list[tuple[str, float]] = []

    def walk(node: dict, path: list[str]) -> None:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        for option in node.get("anyOf", []):
            walk(option, path)
        if node.get("type") in ("integer", "number"):
            step = 1 if node["type"] == "integer" else 1e-9
            for key, nudge in (
                ("minimum", 0),
                ("exclusiveMinimum", step),
                ("maximum", 0),
                ("exclusiveMaximum", -step),
            ):
                if key in node:
                    found.append((".".join(path), node[key] + nudge))
        for name, child in node.get("properties", {}).items():
            walk(child, [*path, name])

    walk(schema, [])
    return found


def _plans_finitely(raw: dict[str, Any], **inverse: Any) -> None:
    """A 422, or a plan whose every figure is a finite number (JSON cannot carry the others)."""
    try:
        report = plan_spec(raw, **inverse)
    except SpecInvalid:
        return
    json.dumps(report.model_dump(mode="json"), allow_nan=False)


def _plan_base(name: str) -> dict[str, Any]:
    raw = (
        base_spec()
        if name == "tiny"
        else yaml.safe_load((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    )
    return with_changes(raw, precision={"dtype": "bf16"}, recompute={"mode": "none"})


@pytest.mark.parametrize("base", ["tiny", "qwen2-7b"])
def test_any_one_field_at_its_bound_plans_finitely_or_is_refused(base: str) -> None:
    fields = _numeric_fields()
    assert len(fields) > 80  # the walk found the schema's numbers
    for path, value in fields:
        changes: dict[str, Any] = {path: value}
        if path.startswith("model.moe."):
            moe = {
                "num_experts": 8,
                "top_k": 2,
                "moe_ffn_hidden_size": 64,
                path.rsplit(".", 1)[-1]: value,
            }
            changes = {"model.moe": moe}
        _plans_finitely(with_changes(_plan_base(base), **changes))


def test_the_largest_spec_within_every_bound_plans_finitely() -> None:
    largest = {
        "name": "largest",
        "model": {
            "num_layers": 1024,
            "hidden_size": 2**20,
            "num_attention_heads": 1024,
            "num_query_groups": 1024,
            "ffn_hidden_size": 2**22,
            "vocab_size": 2**24,
            "max_position_embeddings": 2**24,
            "moe": {
                "num_experts": 16_384,
                "top_k": 16_384,
                "moe_ffn_hidden_size": 2**22,
                "shared_expert_ffn_hidden_size": 2**22,
            },
        },
        "tokenizer": {
            "path": "embedded://en",
            "vocab_size": 2**24 - 2**20,
            "extra_vocab_size": 2**20,
        },
        "resources": {
            "nodes": 65_536,
            "gpus_per_node": 1024,
            "gpu_type": "cpu",
            "gpu_memory_gib": 0.01,
            "peak_tflops": 0.001,
        },
        "parallelism": {
            "tensor": 1024,
            "pipeline": 1024,
            "context": 64,
            "expert": 64,
            "sequence_parallel": True,
        },
        "precision": "fp16",
        "recompute": {"mode": "full", "recompute_layers": 1},
        "batch": {"micro_batch_size": 2**16, "global_batch_size": 2**24},
        "schedule": {"warmup_tokens": 10**15},
        "mfu": 0.001,
        "target_loss": 0.01,
        "stages": [
            {
                "name": "a",
                "tokens": 10**16,
                "seq_length": 2**24,
                "data": [{"channel": "en", "path": "embedded://en", "weight": 1.0}],
            }
        ],
    }
    report = plan_spec(largest, gpus=10_000_000, days=36_500)
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    _plans_finitely(largest, gpus=1, days=1e-300)


def test_a_deadline_no_job_could_meet_is_refused_naming_it() -> None:
    with pytest.raises(SpecInvalid) as caught:
        plan_spec(base_spec(), deadline_days=1e-300)
    assert [p.loc for p in caught.value.problems] == [["deadline_days"]]
    assert "more than the 102400000 a job can have" in caught.value.problems[0].msg


def test_a_deadline_of_5e_minus_324_days_from_the_api_is_a_422(app_client, tokens) -> None:
    response = app_client.post(
        "/v1/plan",
        params={"deadline_days": 5e-324},
        json=base_spec(),
        headers=auth(tokens["viewer"]),
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == "deadline_days"
