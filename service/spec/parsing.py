"""Request text to a mapping: JSON, or YAML read as YAML 1.2 reads numbers, bounded in size."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from service.spec.problems import body_problem, kind_of

# A few aliases nested a few deep ("billion laughs") would otherwise make validation crawl.
MAX_DOCUMENT_NODES = 100_000


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e6` and `3e-4` as numbers, as JSON and YAML 1.2 do.

    PyYAML follows YAML 1.1, where a float needs a dot, so `tokens: 2e12` would be a string.
    """


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_spec_text(text: str | bytes) -> dict:
    """The mapping in a JSON or YAML document; SpecInvalid at loc ["body"] if there is none."""
    try:
        return _parse_mapping(text)
    except RecursionError:
        raise body_problem("the job spec is nested too deeply", "syntax_error") from None


def _parse_mapping(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise body_problem(
                f"the job spec is not UTF-8 text (bad byte at offset {error.start})", "syntax_error"
            ) from None
    document = _load_json_or_yaml(text)
    if document is None:
        raise body_problem(
            "the job spec is empty; expected a mapping of fields such as name, model, stages"
        )
    if not isinstance(document, dict):
        raise body_problem(
            f"the job spec must be a mapping of fields at the top level, not {kind_of(document)}"
        )
    return document


def _load_json_or_yaml(text: str) -> Any:
    """JSON when the text is JSON; otherwise YAML, of which JSON is nearly a subset."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        # Text that opens like JSON was meant as JSON: its error is the one worth reporting.
        if text.lstrip().startswith(("{", "[")):
            raise body_problem(
                f"invalid JSON at line {json_error.lineno} column {json_error.colno}: {json_error.msg}",
                "syntax_error",
            ) from None
    try:
        # A SafeLoader subclass: plain data only, never arbitrary Python objects.
        document = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as yaml_error:
        raise body_problem(_describe_yaml_error(yaml_error), "syntax_error") from None
    if _expanded_size(document) > MAX_DOCUMENT_NODES:
        raise body_problem(
            f"the job spec expands to more than {MAX_DOCUMENT_NODES} values through YAML "
            "aliases; write it out without nested aliases"
        )
    return document


def _expanded_size(node: Any, sizes: dict[int, int] | None = None) -> int:
    """Values in a document once its YAML aliases are expanded, counted in linear time."""
    sizes = {} if sizes is None else sizes
    if id(node) not in sizes:
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"
