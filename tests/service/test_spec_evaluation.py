"""The `evaluation` section: benchmarks, which checkpoints, resources; each refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from service.admission import path_policy
from service.settings import Settings
from service.spec import SpecInvalid, validate_spec
from tests.service.test_spec import base_spec

BENCHMARK = {
    "task": "continuation-en",
    "path": "benchmarks/en.jsonl",
    "num_fewshot": 2,
    "limit": 50,
}


@pytest.fixture
def policy(tmp_path):
    return path_policy(
        Settings(state_dir=tmp_path, data_root="/data", checkpoint_root="/checkpoints")
    )


def with_evaluation(**evaluation: Any) -> dict[str, Any]:
    return base_spec(evaluation={"benchmarks": [BENCHMARK], **evaluation})


def test_a_mounted_path_that_does_not_exist_here_and_an_s3_uri_are_accepted_with_defaults(policy):
    raw = with_evaluation()
    raw["evaluation"]["benchmarks"].append({"task": "arc", "path": "s3://bench/arc.jsonl"})
    evaluation = validate_spec(raw, policy).spec.evaluation
    assert [b.task for b in evaluation.benchmarks] == ["continuation-en", "arc"]
    assert evaluation.benchmarks[1].num_fewshot == 0 and evaluation.benchmarks[1].limit is None
    assert (evaluation.checkpoints.every, evaluation.checkpoints.stage_ends) == (None, False)
    assert evaluation.checkpoints.final is True
    assert (evaluation.resources.cpu, evaluation.resources.gpus) == (4, 0)


def test_no_section_evaluates_nothing():
    assert validate_spec(base_spec()).spec.evaluation.benchmarks == []


@pytest.mark.parametrize(
    ("evaluation", "loc", "says"),
    [
        ({"checkpoints": {"every": -2}}, ["evaluation", "checkpoints", "every"], "greater than 0"),
        (
            {"checkpoints": {"final": False}},
            ["evaluation", "checkpoints"],
            "no checkpoint is chosen",
        ),
        (
            {"benchmarks": [BENCHMARK, {"task": "continuation-en", "path": "b.jsonl"}]},
            ["evaluation", "benchmarks", 1, "task"],
            "already evaluation.benchmarks[0]",
        ),
        (
            {"benchmarks": [{**BENCHMARK, "limit": 0}]},
            ["evaluation", "benchmarks", 0, "limit"],
            "greater than or equal to 1",
        ),
        (
            {"benchmarks": [{**BENCHMARK, "path": "/etc/passwd"}]},
            ["evaluation", "benchmarks", 0, "path"],
            "outside the allowed roots",
        ),
        (
            {"resources": {"gpus": -1}},
            ["evaluation", "resources", "gpus"],
            "greater than or equal to 0",
        ),
        ({"every": 2}, ["evaluation", "every"], "unknown field 'every'"),
    ],
)
def test_a_bad_evaluation_is_refused_naming_the_field(evaluation, loc, says, policy):
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(with_evaluation(**evaluation), policy)
    problems = {tuple(p.loc): p.msg for p in caught.value.problems}
    assert tuple(loc) in problems, problems
    assert says in problems[tuple(loc)]
