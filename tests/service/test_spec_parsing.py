"""Parsing a spec within its limits: values, depth, integer digits and time, checked while reading."""

from __future__ import annotations

import pytest

from service.spec import Budget, ParseLimits, SpecInvalid, parse_spec_text


def refusal(text: str, **limits) -> str:
    with pytest.raises(SpecInvalid) as caught:
        parse_spec_text(text, spec_format="yaml", limits=ParseLimits(**limits))
    [problem] = caught.value.problems
    assert problem.loc == ["body"]
    return problem.msg


def test_values_are_counted_with_what_aliases_repeat():
    text = "a: &a [1, 2, 3, 4]\nb: [*a, *a, *a]\n"
    # 1 mapping + 2 keys + 5 for `a` + 1 list holding 3 × 5: 24 values.
    assert parse_spec_text(text, spec_format="yaml", limits=ParseLimits(max_nodes=24))["b"][2] == [1, 2, 3, 4]
    assert "more than 23 values once its YAML aliases are expanded" in refusal(text, max_nodes=23)


def test_depth_is_counted_from_the_top_mapping():
    assert parse_spec_text("a: [[1]]", spec_format="yaml", limits=ParseLimits(max_depth=4)) == {"a": [[1]]}
    assert refusal("a: [[1]]", max_depth=3) == "the job spec is nested more than 3 levels deep"


def test_an_alias_to_itself_is_refused():
    assert "refers to itself" in refusal("a: &a [1, *a]")


@pytest.mark.parametrize("digits", ["9" * 101, "0x" + "f" * 99, "-" + "1" * 101])
def test_integers_of_any_base_are_capped_before_they_are_made(digits):
    assert "digits; a job spec accepts at most 100" in refusal(f"name: x\nn: {digits}\n")


def test_a_json_integer_is_capped_and_located():
    with pytest.raises(SpecInvalid) as caught:
        parse_spec_text('{"a": 1,\n "b": ' + "7" * 101 + "}", spec_format="json")
    assert caught.value.problems[0].msg == "the integer at line 2 column 7 has 101 digits; a job spec accepts at most 100"


def test_a_budget_spent_mid_document_ends_parsing():
    assert "budget" in refusal("a: [" + "1, " * 5000 + "1]", budget=Budget(1e-9))
