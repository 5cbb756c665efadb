"""Spec paths stay where the install allows: each path that got through before is refused with
a 422 naming its field, and every legitimate spelling (roots, relative paths, schemes) passes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from service.admission import path_policy
from service.settings import Settings
from service.spec import MAX_PATH_LENGTH, PathPolicy, Problem, SpecInvalid, validate_spec
from tests.conftest import EXAMPLES
from tests.service.test_spec import base_spec
from tests.service.test_spec_tokenizer import tokenizer_spec

DATA = ["stages", 0, "data", 0, "path"]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    return state


@pytest.fixture
def policy(state_dir: Path) -> PathPolicy:
    """The defaults: the state directory, the data volume and the checkpoint volume."""
    return path_policy(Settings(state_dir=state_dir, data_root="/data", checkpoint_root="/checkpoints"))


def with_data_path(path: str) -> dict[str, Any]:
    spec = base_spec()
    spec["stages"][0]["data"][0]["path"] = path
    return spec


def problem_at(raw: dict[str, Any], loc: list[str | int], policy: PathPolicy) -> Problem:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(raw, policy)
    matching = [p for p in caught.value.problems if p.loc == loc]
    assert matching, f"no problem at {loc}; got {[str(p) for p in caught.value.problems]}"
    return matching[0]


def set_at(raw: dict[str, Any], loc: list[str | int], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    target: Any = raw
    for segment in loc[:-1]:
        target = target.setdefault(segment, {}) if isinstance(segment, str) else target[segment]
    target[loc[-1]] = value
    return raw


# Each path the issue found accepted with 201, at the field it was given in.
FINDINGS = [
    (base_spec(), DATA, "../../etc/passwd", "'..'"),
    (base_spec(), DATA, "/etc/passwd", "outside the allowed roots"),
    (base_spec(), DATA, "file:///etc/passwd", "file://"),
    (base_spec(), DATA, "/proc/self/environ", "outside the allowed roots"),
    (base_spec(), DATA, "/data/../etc/passwd", "'..'"),
    (base_spec(), DATA, "ftp://example.com/corpus", "unsupported scheme"),
    (base_spec(), ["tokenizer", "path"], "/etc", "outside the allowed roots"),
    (base_spec(), ["checkpoint", "storage"], "/etc", "outside the allowed roots"),
    (base_spec(), ["checkpoint", "storage"], "file:///etc", "file://"),
    (tokenizer_spec(), ["corpora", 0], "/etc/passwd", "outside the allowed roots"),
    (tokenizer_spec(), ["options", "report_corpora", "x"], "/etc/shadow", "outside the allowed roots"),
    (
        tokenizer_spec(mode="expand", options={"add": 10}),
        ["options", "base"],
        "../../../../etc",
        "'..'",
    ),
]


@pytest.mark.parametrize(("raw", "loc", "path", "why"), FINDINGS)
def test_a_path_the_schema_accepts_is_refused_outside_the_roots_naming_its_field(
    raw, loc, path, why, policy
):
    raw = set_at(raw, loc, path)
    validate_spec(raw)  # the finding: without the install's roots nothing refused it
    problem = problem_at(raw, loc, policy)
    assert why in problem.msg and repr(path) in problem.msg
    assert "/data" in problem.msg or "unsupported" in problem.msg  # says where to point instead


@pytest.mark.parametrize(
    "loc", [DATA, ["tokenizer", "path"], ["checkpoint", "storage"]], ids=lambda loc: loc[-2]
)
def test_an_over_long_or_nul_path_is_refused_by_the_schema_naming_its_field(loc, policy):
    long = set_at(base_spec(), loc, "/data/" + "a" * (1 << 20))
    problem = problem_at(long, loc, policy)
    assert problem.type == "string_too_long" and str(MAX_PATH_LENGTH) in problem.msg
    assert problem_at(set_at(base_spec(), loc, "/data/a\x00b"), loc, policy).msg


def test_a_symlink_out_of_a_root_is_refused_and_one_inside_is_not(state_dir, policy):
    (state_dir / "etc").symlink_to("/etc")
    (state_dir / "corpora").mkdir()
    (state_dir / "latest").symlink_to(state_dir / "corpora")
    escaped = problem_at(with_data_path(str(state_dir / "etc" / "passwd")), DATA, policy)
    assert "through a symlink" in escaped.msg and "'/etc/passwd'" in escaped.msg
    validate_spec(with_data_path(str(state_dir / "latest" / "en")), policy)


@pytest.mark.parametrize(
    "path",
    [
        "corpus/en",  # relative: under the data root
        "./corpus//en",
        "/data/corpus/en",
        "/checkpoints/tok-1/tokenizer",
        "s3://corpus/v3/web-en",
        "embedded://code",
    ],
)
def test_paths_under_the_roots_and_supported_schemes_are_accepted(path, policy):
    validate_spec(with_data_path(path), policy)
    validate_spec(set_at(base_spec(), ["tokenizer", "path"], path), policy)


def test_the_state_directory_is_a_root(state_dir, policy):
    validate_spec(with_data_path(str(state_dir / "corpora" / "en.jsonl")), policy)
    validate_spec(tokenizer_spec(corpora=[str(state_dir / "web.jsonl")]), policy)


def test_relative_checkpoint_paths_lie_under_the_checkpoint_root(policy):
    expand = tokenizer_spec(mode="expand", options={"base": "zh-tokenizer-3/tokenizer", "add": 10})
    validate_spec(expand, policy)
    validate_spec(set_at(base_spec(), ["checkpoint", "storage"], "runs/qwen"), policy)


def test_a_tokenizer_spec_with_embedded_and_data_corpora_is_accepted(policy):
    raw = tokenizer_spec(options={"report_corpora": {"zh": "eval/zh.jsonl", "code": "embedded:code"}})
    validate_spec(raw, policy)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_the_default_roots(example):
    validate_spec(yaml.safe_load(example.read_text()), path_policy(Settings()))


def test_data_roots_replace_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("PRETRAIN_DATA_ROOTS", '["/mnt/corpora"]')
    policy = path_policy(Settings(state_dir=tmp_path))
    assert policy.roots == ("/mnt/corpora",)
    validate_spec(with_data_path("/mnt/corpora/en"), policy)
    assert problem_at(with_data_path("/data/en"), DATA, policy)
    assert problem_at(with_data_path(str(tmp_path / "en")), DATA, policy)


def test_the_default_roots_are_the_state_data_and_checkpoint_directories(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", data_root="/datasets")
    assert settings.allowed_path_roots == [
        str((tmp_path / "state").resolve()),
        "/datasets",
        str((tmp_path / "state" / "checkpoints").resolve()),
    ]


@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("data_roots", ["relative/dir"], "absolute"),
        ("path_schemes", ["file://"], "file://"),
        ("path_schemes", ["s3"], "s3://"),
    ],
)
def test_settings_refuse_roots_and_schemes_that_would_open_the_filesystem(setting, value, why):
    with pytest.raises(pydantic.ValidationError, match=why):
        Settings(**{setting: value})


def test_schemes_come_from_the_settings(state_dir):
    gs = path_policy(Settings(state_dir=state_dir, path_schemes=["gs://", "embedded://"]))
    validate_spec(with_data_path("gs://bucket/en"), gs)
    assert "allowed: gs://, embedded://" in problem_at(with_data_path("s3://bucket/en"), DATA, gs).msg
