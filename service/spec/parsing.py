"""Request text to a mapping: JSON, or YAML read as YAML 1.2 reads numbers, bounded while it is read.

A body is refused as soon as it passes a limit, not after it was built: values (a YAML alias
counts as every value it repeats, so "billion laughs" stops early), depth, digits of an integer
(Python refuses to print one beyond 4,300 digits, so the limit must hold before one is made),
and the time the request may spend (`Budget`, checked at every YAML value).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.cyaml import CParser
from yaml.resolver import Resolver

from service.spec.problems import SpecInvalid, body_problem, kind_of

# A real spec has a few hundred values and a depth under ten; these leave room for big mixtures.
MAX_DOCUMENT_NODES = 20_000
MAX_DOCUMENT_DEPTH = 32
# No spec field needs more; the spec's own bounds (a few to 16 digits) are checked by validation.
MAX_INTEGER_DIGITS = 100

SpecFormat = Literal["json", "yaml"]


class Budget:
    """The time a request may spend parsing and validating.

    Its deadline is on `time.monotonic`, one clock for every process on Linux: a budget pickled
    to a spec worker process keeps the deadline the request set.
    """

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        self._deadline = None if seconds is None else time.monotonic() + seconds

    @property
    def remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def spent(self) -> SpecInvalid:
        if self.seconds is None:
            return body_problem("parsing the job spec was stopped", "budget_exceeded")
        return body_problem(
            f"parsing and validating the job spec took longer than this request's budget of "
            f"{self.seconds:g} s (PRETRAIN_SPEC_BUDGET_S); send a smaller or simpler spec",
            "budget_exceeded",
        )

    def check(self) -> None:
        """SpecInvalid once the budget is spent."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise self.spent()


@dataclass(frozen=True)
class ParseLimits:
    """How big a document may be once read; `budget` bounds the time it may take."""

    max_nodes: int = MAX_DOCUMENT_NODES
    max_depth: int = MAX_DOCUMENT_DEPTH
    budget: Budget = field(default_factory=Budget)


class _SpecLoader(Composer, CParser, SafeConstructor, Resolver):
    """A safe loader that counts values and depth as it composes them, and reads `1e6` as a number.

    libyaml scans and parses (ten times faster than PyYAML's Python parser); composition stays in
    Python, because that is where aliases are resolved and nesting recurses: the limits hold
    there, before a value beyond them is built. SafeConstructor: plain data only, never Python
    objects. PyYAML follows YAML 1.1, where a float needs a dot, so `tokens: 2e12` would be a
    string.
    """

    get_single_node = Composer.get_single_node  # not libyaml's, which composes in C

    def __init__(self, text: str, limits: ParseLimits) -> None:
        CParser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.limits = limits
        self.values = 0
        self.depth = 0
        self.aliases_seen = False
        self.expanded: dict[int, int] = {}  # id(node) → values it stands for, once composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.limits.budget.check()
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.expanded:
                raise body_problem("the job spec refers to itself through a YAML alias; write it out instead")
            self.aliases_seen = True
            self._count(self.expanded[id(node)])
            return node
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise _too_deep(self.limits.max_depth)
        before = self.values
        self._count(1)
        node = super().compose_node(parent, index)
        self.expanded[id(node)] = self.values - before
        self.depth -= 1
        return node

    def _count(self, values: int) -> None:
        self.values += values
        if self.values > self.limits.max_nodes:
            raise _too_many_values(self.limits.max_nodes, through_aliases=self.aliases_seen)

    def construct_yaml_int(self, node: Any) -> int:
        digits = len(node.value.replace("_", "").lstrip("+-"))
        if digits > MAX_INTEGER_DIGITS:
            raise _integer_too_long(digits, f"line {node.start_mark.line + 1} column {node.start_mark.column + 1}")
        return SafeConstructor.construct_yaml_int(self, node)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def parse_spec_text(
    text: str | bytes, *, spec_format: SpecFormat | None = None, limits: ParseLimits | None = None
) -> dict:
    """The mapping in a JSON or YAML document; SpecInvalid at loc ["body"] if there is none.

    `spec_format` is what the request's content type declared; None (files, the CLI) means
    JSON when the text is JSON, else YAML.
    """
    limits = limits or ParseLimits()
    try:
        return _parse_mapping(text, spec_format, limits)
    except RecursionError:
        raise _too_deep(limits.max_depth) from None


def _parse_mapping(text: str | bytes, spec_format: SpecFormat | None, limits: ParseLimits) -> dict:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise body_problem(
                f"the job spec is not UTF-8 text (bad byte at offset {error.start})", "syntax_error"
            ) from None
    document = _load(text, spec_format, limits)
    if document is None:
        raise body_problem(
            "the job spec is empty; expected a mapping of fields such as name, model, stages"
        )
    if not isinstance(document, dict):
        raise body_problem(
            f"the job spec must be a mapping of fields at the top level, not {kind_of(document)}"
        )
    return document


def _load(text: str, spec_format: SpecFormat | None, limits: ParseLimits) -> Any:
    """JSON when declared or when the text is JSON; otherwise YAML, of which JSON is nearly a subset."""
    if spec_format == "json" or (spec_format is None and text.lstrip().startswith(("{", "["))):
        return _load_json(text, limits)
    if spec_format is None:
        try:
            return _load_json(text, limits)
        except SpecInvalid:
            pass  # not JSON: read it as YAML, whose error is the one worth reporting
    return _load_yaml(text, limits)


class _LongInteger(Exception):
    def __init__(self, digits: str) -> None:
        self.digits = digits


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _LongInteger(digits)
    return int(digits)


def _load_json(text: str, limits: ParseLimits) -> Any:
    """The JSON document, refused when it holds too long an integer, too many values or depth.

    The C decoder reads a capped body in milliseconds, so its size is checked right after.
    """
    try:
        document = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as error:
        raise body_problem(
            f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}", "syntax_error"
        ) from None
    except _LongInteger as long:
        raise _integer_too_long(len(long.digits.lstrip("-")), _position(text, long.digits)) from None
    _check_shape(document, limits)
    return document


def _check_shape(document: Any, limits: ParseLimits) -> None:
    """Count values and depth of a decoded document, stopping at the first limit passed."""
    values = 0
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        values += 1
        if values > limits.max_nodes:
            raise _too_many_values(limits.max_nodes, through_aliases=False)
        if depth > limits.max_depth:
            raise _too_deep(limits.max_depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _load_yaml(text: str, limits: ParseLimits) -> Any:
    loader = _SpecLoader(text, limits)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as yaml_error:
        raise body_problem(_describe_yaml_error(yaml_error), "syntax_error") from None
    finally:
        loader.dispose()


def _position(text: str, fragment: str) -> str:
    offset = text.find(fragment)
    line = text.count("\n", 0, offset) + 1
    return f"line {line} column {offset - text.rfind(chr(10), 0, offset)}"


def _integer_too_long(digits: int, where: str) -> SpecInvalid:
    return body_problem(
        f"the integer at {where} has {digits} digits; a job spec accepts at most {MAX_INTEGER_DIGITS}"
    )


def _too_many_values(limit: int, *, through_aliases: bool) -> SpecInvalid:
    why = " once its YAML aliases are expanded; write it out without nested aliases" if through_aliases else ""
    return body_problem(f"the job spec holds more than {limit} values{why}", "too_large")


def _too_deep(limit: int) -> SpecInvalid:
    return body_problem(f"the job spec is nested more than {limit} levels deep", "too_deep")


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"
