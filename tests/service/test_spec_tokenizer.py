"""Tokenizer job specs: `kind: tokenizer` picks their schema; each rule refused and accepted."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.spec import (
    Problem,
    SpecInvalid,
    ValidatedSpec,
    ValidatedTokenizerSpec,
    parse_spec_text,
    validate_spec,
)
from tests.conftest import EXAMPLES
from tests.service.test_spec import base_spec


def tokenizer_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "zh-tokenizer",
        "kind": "tokenizer",
        "mode": "train",
        "corpora": ["embedded:zh", "embedded:en", "corpora/web.jsonl"],
        "options": {"vocab_size": 32000, "spare": 1000},
    }
    spec.update(copy.deepcopy(changes))
    return spec


def problems_of(raw: dict[str, Any]) -> list[Problem]:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(raw)
    return caught.value.problems


def problem_at(raw: dict[str, Any], loc: list[str | int]) -> Problem:
    problems = problems_of(raw)
    matching = [p for p in problems if p.loc == loc]
    assert matching, f"no problem at {loc}; got {[str(p) for p in problems]}"
    return matching[0]


def test_a_tokenizer_spec_is_accepted_with_default_resources():
    validated = validate_spec(tokenizer_spec())
    assert isinstance(validated, ValidatedTokenizerSpec)
    spec = validated.spec
    assert (spec.kind, spec.mode) == ("tokenizer", "train")
    assert (spec.resources.cpu, spec.resources.memory_gib) == (8, 64.0)
    assert spec.options.vocab_size == 32000 and spec.options.model is None
    assert validated.warnings == []


def test_the_tokenizer_example_is_valid():
    validated = validate_spec(parse_spec_text((EXAMPLES / "tokenizer-zh.yaml").read_text()))
    assert isinstance(validated, ValidatedTokenizerSpec)


def test_pretrain_is_still_the_default_kind():
    assert "kind" not in base_spec()
    assert isinstance(validate_spec(base_spec()), ValidatedSpec)
    assert isinstance(validate_spec(base_spec(kind="pretrain")), ValidatedSpec)


def test_an_unknown_kind_is_refused_at_kind():
    problem = problem_at(tokenizer_spec(kind="detokenizer"), ["kind"])
    assert "pretrain" in problem.msg and "tokenizer" in problem.msg


def test_an_unknown_key_is_refused_with_its_path_and_a_suggestion():
    problem = problem_at(tokenizer_spec(corpus=["embedded:zh"]), ["corpus"])
    assert problem.type == "extra_forbidden" and "'corpora'" in problem.msg
    raw = tokenizer_spec(options={"vocab_sise": 1000})
    assert "'vocab_size'" in problem_at(raw, ["options", "vocab_sise"]).msg
    assert problem_at(tokenizer_spec(resources={"gpus": 1}), ["resources", "gpus"])


def test_a_pretrain_section_in_a_tokenizer_spec_is_an_unknown_key():
    assert problem_at(tokenizer_spec(stages=[]), ["stages"]).type == "extra_forbidden"


def test_a_bad_mode_is_refused_at_mode():
    problem = problem_at(tokenizer_spec(mode="grow"), ["mode"])
    assert "'train'" in problem.msg and "'expand'" in problem.msg


def test_expand_needs_a_base_and_a_count():
    raw = tokenizer_spec(mode="expand", options={})
    assert problem_at(raw, ["options", "base"]).type == "missing"
    assert problem_at(raw, ["options", "add"]).type == "missing"


def test_expand_with_a_base_and_a_count_is_accepted():
    raw = tokenizer_spec(mode="expand", options={"base": "zh-tokenizer-3/tokenizer", "add": 2000})
    assert validate_spec(raw).spec.options.add == 2000


def test_an_option_of_the_other_mode_is_refused():
    assert "mode expand" in problem_at(
        tokenizer_spec(options={"base": "/tok"}), ["options", "base"]
    ).msg
    raw = tokenizer_spec(mode="expand", options={"base": "/tok", "add": 10, "vocab_size": 100})
    assert "mode train" in problem_at(raw, ["options", "vocab_size"]).msg


def test_corpora_must_be_a_non_empty_list():
    assert problem_at(tokenizer_spec(corpora=[]), ["corpora"])
    assert problem_at(tokenizer_spec(corpora=[""]), ["corpora", 0])


def test_an_unknown_embedded_corpus_is_refused_at_its_index():
    problem = problem_at(tokenizer_spec(corpora=["embedded:zh", "embedded:fr"]), ["corpora", 1])
    assert "'fr'" in problem.msg and "embedded:zh" in problem.msg
    raw = tokenizer_spec(options={"report_corpora": {"fr": "embedded://fr"}})
    assert problem_at(raw, ["options", "report_corpora", "fr"])


def test_a_banned_pattern_that_is_not_a_regex_is_refused():
    raw = tokenizer_spec(options={"banned": ["http", "re:([a-z"]})
    assert "regular expression" in problem_at(raw, ["options", "banned", 1]).msg


def test_resources_must_be_positive():
    assert problem_at(tokenizer_spec(resources={"cpu": 0}), ["resources", "cpu"])
    assert problem_at(tokenizer_spec(resources={"memory_gib": -1}), ["resources", "memory_gib"])
