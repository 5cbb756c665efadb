"""Admission: submit, the plan route and the review give the same verdict for the same reasons."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from service.admission import OverMemory, admit
from service.controller.manifests import render_for_review
from service.spec import SpecInvalid
from tests.conftest import EXAMPLES, auth
from tests.service.api.test_plan import qwen2_7b_on_one_node
from tests.service.api.test_tokenizer_jobs import tokenizer_spec


def tiny() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())


def does_not_fit() -> dict[str, Any]:
    return qwen2_7b_on_one_node(distributed_optimizer=False, tensor=1)


def over_memory_allowed() -> dict[str, Any]:
    return does_not_fit() | {"allow_over_memory": True}


def heads_not_divisible_by_tensor() -> dict[str, Any]:
    spec = tiny()
    spec["parallelism"]["tensor"] = 3
    return spec


def without_body(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """API problems as the spec module words them: the API puts every path under `body`."""
    return [{**problem, "loc": problem["loc"][1:]} for problem in problems]


def submitted(client, tokens, spec) -> tuple[str, list[dict[str, Any]]]:
    response = client.post("/v1/jobs", json=spec, headers=auth(tokens["alice"]))
    if response.status_code == 201:
        return "accepted", []
    assert response.status_code == 422, response.text
    return "refused", without_body(response.json()["detail"])


def planned(client, tokens, spec) -> tuple[str, list[dict[str, Any]]]:
    response = client.post("/v1/plan", json=spec, headers=auth(tokens["viewer"]))
    if response.status_code == 200:
        return "planned", response.json()["problems"]
    assert response.status_code == 422, response.text
    return "refused", without_body(response.json()["detail"])


def reviewed(spec, settings) -> tuple[str, list[dict[str, Any]]]:
    try:
        render_for_review(json.dumps(spec), settings=settings)
    except SpecInvalid as refusal:
        return "refused", [problem.model_dump() for problem in refusal.problems]
    return "accepted", []


def test_a_spec_that_does_not_fit_is_refused_by_submit_and_review_and_reported_by_plan(
    app_client, tokens, settings
):
    submit = submitted(app_client, tokens, does_not_fit())
    plan = planned(app_client, tokens, does_not_fit())
    review = reviewed(does_not_fit(), settings)

    assert submit[0] == "refused" and review[0] == "refused" and plan[0] == "planned"
    (problem,) = submit[1]
    assert problem["loc"] == ["resources", "gpu_memory_gib"] and problem["type"] == "memory"
    assert plan[1] == submit[1] == review[1]


@pytest.mark.parametrize(
    "make_spec", [heads_not_divisible_by_tensor, lambda: tiny() | {"name": "Not A Label"}]
)
def test_an_invalid_spec_is_refused_by_all_three_with_the_same_problems(
    app_client, tokens, settings, make_spec
):
    submit = submitted(app_client, tokens, make_spec())
    plan = planned(app_client, tokens, make_spec())
    review = reviewed(make_spec(), settings)

    assert submit[0] == plan[0] == review[0] == "refused"
    assert submit[1] and submit[1] == plan[1] == review[1]


@pytest.mark.parametrize("make_spec", [tiny, over_memory_allowed])
def test_a_spec_that_runs_is_accepted_by_all_three(app_client, tokens, settings, make_spec):
    assert submitted(app_client, tokens, make_spec()) == ("accepted", [])
    assert planned(app_client, tokens, make_spec()) == ("planned", [])
    assert reviewed(make_spec(), settings) == ("accepted", [])


def test_a_tokenizer_spec_is_accepted_for_launch_but_has_no_plan(app_client, tokens, settings):
    assert submitted(app_client, tokens, tokenizer_spec()) == ("accepted", [])
    assert reviewed(tokenizer_spec(), settings) == ("accepted", [])
    verdict, problems = planned(app_client, tokens, tokenizer_spec())
    assert verdict == "refused" and [p["loc"] for p in problems] == [["kind"]]


# ---------------------------------------------------------------- the options, without the API


def test_over_memory_refuse_raises_the_memory_problem():
    with pytest.raises(SpecInvalid) as refusal:
        admit(does_not_fit(), over_memory=OverMemory.REFUSE)
    assert [p.type for p in refusal.value.problems] == ["memory"]


def test_over_memory_report_returns_the_same_problem_with_the_plan():
    admission = admit(does_not_fit(), over_memory=OverMemory.REPORT)
    assert admission.plan is not None and not admission.plan.memory.fits
    with pytest.raises(SpecInvalid) as refusal:
        admit(does_not_fit(), over_memory=OverMemory.REFUSE)
    assert admission.problems == refusal.value.problems


def test_a_tokenizer_job_is_admitted_without_a_plan_unless_one_is_required():
    admission = admit(tokenizer_spec(), over_memory=OverMemory.REFUSE)
    assert admission.plan is None and admission.plan_document is None
    assert admission.derived_document == {}
    with pytest.raises(SpecInvalid, match="no memory or compute plan"):
        admit(tokenizer_spec(), over_memory=OverMemory.REPORT, require_plan=True)


def test_the_plans_warnings_follow_the_specs_under_loc_plan():
    admission = admit(over_memory_allowed(), over_memory=OverMemory.REFUSE)
    assert admission.problems == []
    plan_warnings = [w for w in admission.warnings if w.loc == ["plan"]]
    assert [w.msg for w in plan_warnings] == admission.plan.warnings
    assert any("allow_over_memory" in w.msg for w in plan_warnings)
    assert admission.warnings[: len(admission.validated.warnings)] == admission.validated.warnings


def test_the_derived_document_holds_the_resolved_model_and_the_step_counts():
    admission = admit(copy.deepcopy(tiny()), over_memory=OverMemory.REFUSE)
    document = admission.derived_document
    assert document["model"] == admission.validated.model.model_dump(mode="json")
    assert document["total_train_iters"] == admission.validated.derived.total_train_iters
    assert admission.plan_document == admission.plan.model_dump(mode="json")
